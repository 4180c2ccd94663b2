"""A work unit's source file read and decoded, or turned into a reject: the opening of every
source's per-image work, written once. The file's fingerprint runs on a thread meanwhile (see
pipeline.read_input); callers wait for the returned future last."""

from __future__ import annotations

from concurrent.futures import Future

from ingest.dicom_pixels import DicomDecodeError, DicomImage, decode_dicom
from ingest.image_files import GrayImage, ImageFileError, decode_gray
from ingest.pipeline import Reject, UnitOutput, read_input


def read_unit_image(image_file: str, source_path: str, out: UnitOutput) -> tuple[GrayImage, Future] | None:
    """A PNG/JPEG radiograph decoded to grey, with its fingerprint's future; or None with the reason
    in out.rejects. Colour-to-grey conversions are counted in out.notes."""
    data, fingerprint = read_input(image_file, out)
    try:
        gray = decode_gray(data, name=source_path)
    except ImageFileError as exc:
        out.rejects.append(Reject(source_path, str(exc)))
        return None
    if gray.converted_from:
        out.notes[f"converted_{gray.converted_from.lower()}_to_gray"] += 1
    return gray, fingerprint


def decode_unit_dicom(data: bytes, source_path: str, out: UnitOutput, **decode_options) -> DicomImage | None:
    """decode_dicom(data), or None with an "undecodable DICOM" reject in out.rejects."""
    try:
        return decode_dicom(data, name=source_path, **decode_options)
    except DicomDecodeError as exc:
        out.rejects.append(Reject(source_path, f"undecodable DICOM: {exc.reason}"))
        return None
