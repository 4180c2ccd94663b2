"""A work unit's source file read and decoded, or turned into a reject: the opening of every
source's per-image work, written once. The file's fingerprint runs on a thread meanwhile
(read_input); callers wait for the returned future last."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

from ingest.dicom_pixels import DicomDecodeError, DicomImage, decode_dicom
from ingest.image_files import GrayImage, ImageFileError, decode_gray
from ingest.mapped_files import read_source
from ingest.pipeline import Reject, UnitOutput
from shards import schema
from shards.process_thread import process_thread


def fingerprint_in_background(data: bytes) -> Future:
    """schema.fingerprint(data), computed on a thread while the caller decodes (xxhash releases the
    GIL for large inputs), so a worker's fingerprint of a 30 MB mammogram hides behind its decode.
    Inputs under INLINE_FINGERPRINT_BYTES are hashed at once: handing a 40 KB CheXpert JPEG to the
    thread and waiting for it cost more than hashing it (~5 us)."""
    if len(data) < INLINE_FINGERPRINT_BYTES:
        done: Future = Future()
        done.set_result(schema.fingerprint(data))
        return done
    return process_thread("fingerprint").submit(schema.fingerprint, data)


INLINE_FINGERPRINT_BYTES = 1 << 20


def read_input(path: str | Path, out: UnitOutput) -> tuple[bytes | memoryview, Future]:
    """A unit's source file: its bytes (counted in out.notes["input_bytes"]; a read-only mapping
    for large files, see ingest.mapped_files) and the future of their fingerprint, hashed on a
    thread while the caller decodes. Wait for the future last."""
    data = read_source(path)
    out.notes["input_bytes"] += len(data)
    return data, fingerprint_in_background(data)


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
