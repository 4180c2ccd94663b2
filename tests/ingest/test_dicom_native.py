"""Uncompressed pixels read in place give exactly pydicom's stored values, and every case the
in-place path does not cover still decodes through pydicom (or fails as clearly as before)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ingest.dicom_native import native_stored_values
from ingest.dicom_pixels import DicomDecodeError, decode_dicom, decode_mask_values

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
def test_in_place_values_equal_pydicom_and_share_the_file_bytes(name, syntax, dicom_dataset, dicom_bytes):
    pixels = CASES[name]
    extra = {"NumberOfFrames": pixels.shape[0]} if pixels.ndim == 3 else {}
    data = dicom_bytes(dicom_dataset(pixels, **extra), syntax)
    view = in_place(data)
    reference = pydicom.dcmread(io.BytesIO(data)).pixel_array
    assert view is not None and view.dtype == reference.dtype and np.array_equal(view, reference)
    assert not view.flags.writeable and np.shares_memory(view, np.frombuffer(data, np.uint8))
    if pixels.ndim == 3:
        assert np.array_equal(in_place(data, frame=2), pixels[2])


@pytest.mark.parametrize("make", [
    pytest.param(lambda ds, to_bytes: to_bytes(ds(CASES["u16"]), ExplicitVRBigEndian), id="big-endian"),
    pytest.param(lambda ds, to_bytes: to_bytes(ds(CASES["u16"], HighBit=14)), id="high-bit-not-top"),
    pytest.param(lambda ds, to_bytes: to_bytes(ds(np.zeros((4, 4, 3), np.uint8), "RGB")), id="rgb"),
    pytest.param(lambda ds, to_bytes: to_bytes(ds(CASES["u16"]))[:-100], id="truncated"),
])
def test_what_the_in_place_path_does_not_cover_is_left_to_pydicom(make, dicom_dataset, dicom_bytes):
    assert in_place(make(dicom_dataset, dicom_bytes)) is None


@pytest.mark.parametrize(("dtype", "stored"), [(np.uint16, 12), (np.uint16, 14), (np.int16, 12), (np.int16, 15),
                                               (np.uint8, 6), (np.int8, 7)])
@pytest.mark.parametrize("frames", [1, 3])
def test_partial_bits_equal_pydicom_whatever_the_unused_bits_hold(dtype, stored, frames, dicom_dataset, dicom_bytes):
    """BitsStored < BitsAllocated, with random junk in the unused high bits (an overlay, a careless
    modality): unsigned values are masked and signed ones sign-extended exactly as pydicom does."""
    info = np.iinfo(dtype)
    shape = (frames, 7, 5) if frames > 1 else (7, 5)
    raw = rng.integers(0, 1 << (info.bits), shape, dtype=np.uint64).astype(f"u{info.bits // 8}")
    ds = dicom_dataset(np.zeros(shape, dtype), bits_stored=stored, **({"NumberOfFrames": frames} if frames > 1 else {}))
    ds.PixelData = raw.astype(raw.dtype.newbyteorder("<")).tobytes()
    data = dicom_bytes(ds)
    values = in_place(data)
    reference = pydicom.dcmread(io.BytesIO(data)).pixel_array
    assert values is not None and values.dtype == reference.dtype and np.array_equal(values, reference)
    assert values.min() >= -(1 << (stored - 1)) * (info.min < 0) and values.max() < 1 << (stored - (info.min < 0))
    if frames > 1:
        assert np.array_equal(in_place(data, frame=1), reference[1])


def test_truncated_file_still_fails_clearly(dicom_dataset, dicom_bytes):
    with pytest.raises(DicomDecodeError, match="truncated|pixel data has"):
        decode_dicom(dicom_bytes(dicom_dataset(CASES["u16"]))[:-100], name="cut.dcm")


def test_decoded_mammogram_pixels_are_the_file_bytes_for_plain_16_bit(dicom_dataset, dicom_bytes):
    data = dicom_bytes(dicom_dataset(CASES["u16"]))
    pixels = decode_dicom(data).pixels
    assert np.array_equal(pixels, CASES["u16"]) and np.shares_memory(pixels, np.frombuffer(data, np.uint8))
    inverted = decode_dicom(dicom_bytes(dicom_dataset(CASES["u16"], "MONOCHROME1"))).pixels
    assert np.array_equal(inverted, 65535 - CASES["u16"])


@pytest.mark.parametrize("photometric, elements", [("MONOCHROME2", {}), ("MONOCHROME1", {}),
                                                   ("MONOCHROME2", {"RescaleSlope": 2, "RescaleIntercept": 0}),
                                                   ("MONOCHROME2", {"WindowCenter": 128, "WindowWidth": 100})])
def test_mask_values_are_set_exactly_where_decoded_pixels_are(photometric, elements, dicom_dataset, dicom_bytes):
    mask = np.zeros((20, 30), np.uint8)
    mask[5:9, 10:20] = 255
    data = dicom_bytes(dicom_dataset(mask, photometric, **elements))
    values, decoded = decode_mask_values(data), decode_dicom(data).pixels
    assert np.array_equal(values != 0, decoded != 0)
    assert np.unique(values[values != 0]).size == np.unique(decoded[decoded != 0]).size


def test_every_real_uncompressed_file_reads_the_same_in_place(shared_data):
    folder = shared_data / "dicom"
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
