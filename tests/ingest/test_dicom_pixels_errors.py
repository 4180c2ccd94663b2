"""ingest.dicom_pixels on files that cannot become pixels: each gives a DicomDecodeError naming
the file and the reason, and no header value (the files carry fake PHI)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.pixels.decoders import pylibjpeg as pylibjpeg_plugin
from pydicom.uid import JPEGLosslessSV1, MPEG2MPML, RLELossless

from ingest.dicom_pixels import DicomDecodeError, decode_dicom, read_header


def test_non_dicom_file_raises_naming_the_file(tmp_path, assert_decode_error):
    path = tmp_path / "notes.dcm"
    path.write_bytes(b"this is not a DICOM file\n" * 20)
    for read in (read_header, decode_dicom):
        with pytest.raises(DicomDecodeError) as info:
            read(path)
        assert_decode_error(info.value, path, "^not a DICOM file")


def test_missing_file_raises_naming_the_file(tmp_path, assert_decode_error):
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(tmp_path / "absent.dcm")
    assert_decode_error(info.value, tmp_path / "absent.dcm", "cannot be read")


def test_truncated_pixel_data_raises(tmp_path, dicom_dataset, write_dicom, assert_decode_error):
    path = write_dicom(dicom_dataset(np.arange(64, dtype=np.uint16).reshape(8, 8)), tmp_path / "x.dcm")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(path)
    assert_decode_error(info.value, path, "pixel data has 118 bytes but the header describes 128")


def test_pixel_data_longer_than_the_header_says_raises(tmp_path, dicom_dataset, write_dicom, assert_decode_error):
    path = write_dicom(dicom_dataset(np.zeros((8, 8), np.uint16), Rows=4), tmp_path / "x.dcm")
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(path)
    assert_decode_error(info.value, path, "pixel data has 128 bytes but the header describes 64")


@pytest.fixture
def rle_dataset(dicom_dataset) -> Dataset:
    ds = dicom_dataset(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    ds.compress(RLELossless)
    return ds


def test_truncated_compressed_file_raises(tmp_path, rle_dataset, write_dicom, assert_decode_error):
    path = write_dicom(rle_dataset, tmp_path / "x.dcm")
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    read_header(path)
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(path)
    assert_decode_error(info.value, path, "truncated")


def test_corrupt_rle_data_raises_instead_of_panicking(tmp_path, rle_dataset, write_dicom, assert_decode_error):
    ds = rle_dataset
    fragment = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    # After the 64-byte RLE header, nothing but "repeat the next byte 128 times": the segments
    # overrun the frame, which panics pylibjpeg-rle's Rust decoder (a BaseException).
    fragment[64:] = (b"\x81\x05" * len(fragment))[: len(fragment) - 64]
    ds.PixelData = encapsulate([bytes(fragment)])
    path = write_dicom(ds, tmp_path / "x.dcm")
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(path)
    assert_decode_error(info.value, path, "RLE Lossless pixel data is corrupt")


@pytest.fixture
def encapsulated_file(tmp_path, dicom_dataset, write_dicom):
    """syntax -> a file whose pixel data is one bogus fragment in that (encapsulated) syntax."""
    def make(syntax: str) -> Path:
        ds = dicom_dataset(np.zeros((4, 4), np.uint8))
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([b"\xff\xd8" + bytes(14)])
        ds["PixelData"].VR = "OB"
        return write_dicom(ds, tmp_path / "x.dcm")
    return make


def test_transfer_syntax_without_any_decoder_is_named(encapsulated_file, assert_decode_error):
    path = encapsulated_file(MPEG2MPML)
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(path)
    assert_decode_error(info.value, path, r"MPEG2 Main Profile / Main Level \(1\.2\.840\.10008\.1\.2\.4\.100\) is not supported")


def test_missing_decoder_plugin_is_named(encapsulated_file, monkeypatch, assert_decode_error):
    # As pydicom registers it when pylibjpeg-libjpeg is not installed: the plugin moves to unavailable.
    decoder = get_decoder(JPEGLosslessSV1)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {**decoder._unavailable, "pylibjpeg": pylibjpeg_plugin.DECODER_DEPENDENCIES[JPEGLosslessSV1]})
    path = encapsulated_file(JPEGLosslessSV1)
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(path)
    assert_decode_error(info.value, path, r"no decoder installed for transfer syntax JPEG Lossless.*pylibjpeg-libjpeg")


def test_garbage_jpeg_data_raises(encapsulated_file, assert_decode_error):
    path = encapsulated_file(JPEGLosslessSV1)
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(path)
    assert_decode_error(info.value, path, "pixel data is corrupt")


def test_file_without_pixel_data_raises(tmp_path, dicom_dataset, write_dicom, assert_decode_error):
    ds = dicom_dataset(np.zeros((4, 4), np.uint16))
    del ds.PixelData
    path = write_dicom(ds, tmp_path / "x.dcm")
    read_header(path)
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(path)
    assert_decode_error(info.value, path, "^no pixel data$")


def test_error_keeps_path_and_reason_through_pickling():
    err = pickle.loads(pickle.dumps(DicomDecodeError("a/b.dcm", "no pixel data")))
    assert (err.path, err.reason, str(err)) == ("a/b.dcm", "no pixel data", "a/b.dcm: no pixel data")
    assert isinstance(err, ValueError)


def test_a_frame_past_the_last_raises(tmp_path, dicom_dataset, write_dicom, assert_decode_error):
    path = write_dicom(dicom_dataset(np.zeros((4, 4), np.uint16)), tmp_path / "x.dcm")
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(path, frame=1)
    assert_decode_error(info.value, path, r"^frame 1 asked of a file with 1 frame\(s\)$")
