"""DICOM files written by the tests of ingest's decoders: small secondary captures with fake PHI in
the header, so every test that uses them can also check that no PHI value leaks."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

PHI = ("Doe", "Jane", "PHI-12345", "19700101")


def _running(pid: int) -> bool:
    """pid is a live process: not gone, and not a zombie left for a parent that does not reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def running():
    """running(pid): whether a process is still alive (Linux /proc), for tests that kill runs."""
    return _running


def _dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None, **elements) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.Modality = "Doe^Jane", "PHI-12345", "19700101", "OT"
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.itemsize * 8)
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _to_bytes(ds: Dataset, syntax=ExplicitVRLittleEndian) -> bytes:
    """The file's bytes in `syntax`: little or big endian, explicit or implicit VR."""
    if syntax == ExplicitVRBigEndian:  # set_pixel_data writes little endian only
        pixels = ds.pixel_array
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, little_endian=syntax != ExplicitVRBigEndian,
               implicit_vr=syntax == ImplicitVRLittleEndian)
    return buffer.getvalue()


def _assert_error(err, path: Path, reason: str) -> None:
    """The message is "<path>: <reason>", the reason says `reason`, and no PHI appears anywhere."""
    assert (err.path, str(err)) == (str(path), f"{path}: {err.reason}")
    assert re.search(reason, err.reason), err.reason
    assert not any(value in str(err) for value in PHI)


@pytest.fixture
def dicom_dataset():
    """(pixels, photometric="MONOCHROME2", bits_stored=None, **elements) -> an Explicit VR Little
    Endian secondary capture holding `pixels`, with fake PHI (PHI) in its header."""
    return _dataset


@pytest.fixture
def write_dicom():
    """(dataset, path) -> path, the dataset saved there as a Part 10 file."""
    return _write


@pytest.fixture
def dicom_bytes():
    """(dataset, syntax=ExplicitVRLittleEndian) -> the file's bytes in that transfer syntax."""
    return _to_bytes


@pytest.fixture
def assert_decode_error():
    """(DicomDecodeError, path, reason pattern): names the file, gives the reason, leaks no PHI."""
    return _assert_error
