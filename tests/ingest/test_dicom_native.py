"""Uncompressed pixels read in place give exactly pydicom's stored values, and every case the
in-place path does not cover still decodes through pydicom (or fails as clearly as before)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         SecondaryCaptureImageStorage, generate_uid)

from ingest.dicom_native import native_stored_values
from ingest.dicom_pixels import DicomDecodeError, decode_dicom, decode_mask_values

SHARED = Path(os.environ.get("MEDSHARDS_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def dataset_bytes(pixels: np.ndarray, *, syntax=ExplicitVRLittleEndian, bits_stored: int | None = None,
                  photometric: str = "MONOCHROME2", **elements) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.itemsize * 8)
    if syntax == ExplicitVRBigEndian:  # set_pixel_data writes little endian only
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
    ds.file_meta.TransferSyntaxUID = syntax
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, little_endian=syntax != ExplicitVRBigEndian,
               implicit_vr=syntax == ImplicitVRLittleEndian)
    return buffer.getvalue()


def in_place(data: bytes, frame: int | None = None) -> np.ndarray | None:
    fp = io.BytesIO(data)
    header = pydicom.dcmread(fp, stop_before_pixels=True)
    return native_stored_values(data, header, fp.tell(), frame)


rng = np.random.default_rng(0)
CASES = {
    "u16": rng.integers(0, 65536, (37, 23), dtype=np.uint16),
    "i16": rng.integers(-32768, 32768, (16, 9), dtype=np.int16),
    "u8-odd-length": rng.integers(0, 256, (5, 7), dtype=np.uint8),  # 35 bytes: padded to 36 in the file
    "u16-frames": rng.integers(0, 65536, (3, 8, 6), dtype=np.uint16),
}


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_in_place_values_equal_pydicom_and_share_the_file_bytes(name, syntax):
    pixels = CASES[name]
    extra = {"NumberOfFrames": pixels.shape[0]} if pixels.ndim == 3 else {}
    data = dataset_bytes(pixels, syntax=syntax, **extra)
    view = in_place(data)
    reference = pydicom.dcmread(io.BytesIO(data)).pixel_array
    assert view is not None and view.dtype == reference.dtype and np.array_equal(view, reference)
    assert not view.flags.writeable and np.shares_memory(view, np.frombuffer(data, np.uint8))
    if pixels.ndim == 3:
        assert np.array_equal(in_place(data, frame=2), pixels[2])


@pytest.mark.parametrize("make", [
    pytest.param(lambda: dataset_bytes(CASES["u16"], syntax=ExplicitVRBigEndian), id="big-endian"),
    pytest.param(lambda: dataset_bytes(CASES["u16"] >> 4, bits_stored=12), id="12-of-16-bits"),
    pytest.param(lambda: dataset_bytes(np.zeros((4, 4, 3), np.uint8), photometric="RGB"), id="rgb"),
    pytest.param(lambda: dataset_bytes(CASES["u16"])[:-100], id="truncated"),
])
def test_what_the_in_place_path_does_not_cover_is_left_to_pydicom(make):
    assert in_place(make()) is None


def test_truncated_file_still_fails_clearly():
    with pytest.raises(DicomDecodeError, match="truncated|pixel data has"):
        decode_dicom(dataset_bytes(CASES["u16"])[:-100], name="cut.dcm")


def test_decoded_mammogram_pixels_are_the_file_bytes_for_plain_16_bit():
    data = dataset_bytes(CASES["u16"])
    pixels = decode_dicom(data).pixels
    assert np.array_equal(pixels, CASES["u16"]) and np.shares_memory(pixels, np.frombuffer(data, np.uint8))
    inverted = decode_dicom(dataset_bytes(CASES["u16"], photometric="MONOCHROME1")).pixels
    assert np.array_equal(inverted, 65535 - CASES["u16"])


@pytest.mark.parametrize("photometric, elements", [("MONOCHROME2", {}), ("MONOCHROME1", {}),
                                                   ("MONOCHROME2", {"RescaleSlope": 2, "RescaleIntercept": 0}),
                                                   ("MONOCHROME2", {"WindowCenter": 128, "WindowWidth": 100})])
def test_mask_values_are_set_exactly_where_decoded_pixels_are(photometric, elements):
    mask = np.zeros((20, 30), np.uint8)
    mask[5:9, 10:20] = 255
    data = dataset_bytes(mask, photometric=photometric, **elements)
    values, decoded = decode_mask_values(data), decode_dicom(data).pixels
    assert np.array_equal(values != 0, decoded != 0)
    assert np.unique(values[values != 0]).size == np.unique(decoded[decoded != 0]).size


def test_every_real_uncompressed_file_reads_the_same_in_place():
    folder = SHARED / "dicom"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (real DICOM samples live beside the checkout)")
    checked = 0
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        try:
            view = in_place(data)
        except pydicom.errors.InvalidDicomError:
            continue
        if view is not None:
            assert np.array_equal(view, pydicom.dcmread(io.BytesIO(data)).pixel_array), path.name
            checked += 1
    assert checked >= 3  # CT_small, MR_small, vlut_04
