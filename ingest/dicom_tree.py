"""Finding the DICOM files in a folder tree without trusting file names.

Archives name DICOM files `IM0001`, `1.2.840...`, `x.dcm`, `X.DCM` or nothing at all, and mix in
DICOMDIRs, reports, thumbnails and READMEs. A file is DICOM by content:
- Part 10: 'DICM' at byte 128 (after the preamble), the normal case;
- bare: no preamble, no 'DICM' (old ACR-NEMA-style exports): the first tag is in group 0x0002 or
  0x0008, pydicom reads it with force, and it holds a SOP Class UID or a Modality. Anything less
  is not trusted: force-reading arbitrary bytes "succeeds" with garbage tags.

The walk is iterative (os.scandir, a stack of folders, entries sorted by name) and yields one file
at a time; headers are read without pixel data and only the elements a plan needs are kept, so
planning a tree costs memory per file, never per pixel. The tree may also be a prefix in an
object store (s3://bucket/archive, see shards.storage): its objects are listed in one listing,
sniffed and read for their headers from one ranged request each (object_heads: many in flight;
parsing stays on the calling thread, where pydicom's warnings are silenced), and downloaded whole
only by the workers.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MediaStorageDirectoryStorage

from ingest.mapped_files import BufferReader
from shards import storage

PREAMBLE = 128
OBJECT_HEAD = 256 << 10  # bytes of an object-store file read for its header; nearly all fit
# A bare data set starts with its first tag: group 0x0002 (file meta) or 0x0008 (identification),
# little endian (02 00 / 08 00) or, rarely, big endian (00 08).
BARE_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x08")
PLAN_TAGS = ["SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "Modality", "PatientID",
             "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns", "NumberOfFrames", "BurnedInAnnotation",
             "RecognizableVisualFeatures"]


class DicomTreeError(ValueError):
    """A file that is DICOM but whose header cannot be read; str() is 'reason kind: detail'."""


@dataclass(frozen=True)
class DicomFile:
    """What a plan needs of one DICOM file; raw identifiers stay in memory, never in output."""

    rel: str  # path relative to the root, '/'-separated
    path: str
    bare_syntax: str | None  # None: Part 10; else the transfer syntax to declare ("" if it has file meta)
    kind: str  # "image", "dicomdir" or "non-image" (no Rows/Columns: SR, presentation state, ...)
    sop_instance: str
    modality: str | None
    patient_id: str
    study: str
    series: str
    frames: int
    burned_in: str = ""  # Burned In Annotation (0028,0301): "YES", "NO", or "" where the file does not say
    recognizable: str = ""  # Recognizable Visual Features (0028,0302): likewise


def walk_files(root: str, *, skip: str | None, counts: Counter, problems: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(relative path, path) of every regular file under root: a folder (walk_folder) or a URI's
    prefix in an object store (every object under it, sorted by key; OSError naming the root when
    it cannot be listed at all: there is then no archive to plan)."""
    if storage.is_uri(root):
        yield from storage.walk_objects(root)
    else:
        yield from walk_folder(root, skip=skip, counts=counts, problems=problems)


def walk_folder(root: str, *, skip: str | None, counts: Counter, problems: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """(relative path, path) of every regular file under root, depth first, names sorted. Folders
    are not followed through symlinks (no cycles); `skip` (a realpath, e.g. the output folder) is
    left out. Links to folders and special files are counted in `counts`; unreadable folders go to
    `problems` as (relative path, reason)."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        folder = os.path.join(root, rel_dir) if rel_dir else root
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            problems.append((rel_dir or ".", f"unreadable folder: {exc.strerror or type(exc).__name__}"))
            continue
        subfolders = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_dir(follow_symlinks=False):
                if skip is None or os.path.realpath(entry.path) != skip:
                    subfolders.append(rel)
            elif entry.is_file():
                yield rel, entry.path
            else:
                counts["links_and_special_files_skipped"] += 1
        stack.extend(reversed(subfolders))


def sniff(path: str, head: bytes | None = None) -> str | None:
    """'part10', 'bare' (worth a forced read) or None (not DICOM) from the first 132 bytes: of the
    file, or of `head`, an object's first bytes (object_heads)."""
    if head is None:
        with open(path, "rb") as fh:
            head = fh.read(PREAMBLE + 4)
    if head[PREAMBLE:PREAMBLE + 4] == b"DICM":
        return "part10"
    return "bare" if head[:2] in BARE_STARTS else None


def object_heads(files: Iterable[tuple[str, str]], *, requests: int = 32
                 ) -> Iterator[tuple[str, str, bytes | OSError]]:
    """(relative path, URI, its first OBJECT_HEAD bytes, or the OSError reading them) for objects
    in a store, in order, fetched `requests` at a time: one ranged request serves both sniff and
    read_plan_header, and a store's latency (tens of ms a request) is paid in parallel, not once
    per file in turn. At most 2 x `requests` heads are held at once."""
    def fetch(item: tuple[str, str]) -> tuple[str, str, bytes | OSError]:
        try:
            return (*item, storage.read_range(item[1], 0, OBJECT_HEAD))
        except OSError as exc:
            return (*item, exc)

    pending: deque = deque()
    with ThreadPoolExecutor(requests, thread_name_prefix="dicom-head") as pool:
        for item in files:
            pending.append(pool.submit(fetch, item))
            if len(pending) >= 2 * requests:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def read_plan_header(rel: str, path: str, how: str, head: bytes | None = None) -> DicomFile | None:
    """The plan's view of one sniffed file, or None when a bare candidate turns out not to be DICOM.
    Raises DicomTreeError for a Part-10 file whose header cannot be parsed. `head`: an object's
    first OBJECT_HEAD bytes, when the caller has them (object_heads)."""
    bare = how == "bare"
    try:
        ds = _header(path, bare, head)
    except Exception as exc:  # noqa: BLE001 -- pydicom raises anything from a damaged header
        if isinstance(exc, OSError) and head is not None:
            raise  # the store could not be read (the whole object): the plan rejects it as unreadable
        if bare:
            return None
        raise DicomTreeError(f"unreadable DICOM header: {type(exc).__name__} while parsing it") from exc
    if bare and "SOPClassUID" not in ds and "Modality" not in ds:
        return None
    if ds.file_meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
        kind = "dicomdir"
    else:
        kind = "image" if "Rows" in ds and "Columns" in ds else "non-image"
    try:
        frames = max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        frames = 1
    return DicomFile(
        rel=rel, path=path, bare_syntax=_declared_syntax(ds) if bare else None, kind=kind,
        sop_instance=_text(ds, "SOPInstanceUID"), modality=_text(ds, "Modality") or None,
        patient_id=_text(ds, "PatientID"), study=_text(ds, "StudyInstanceUID"),
        series=_text(ds, "SeriesInstanceUID"), frames=frames,
        burned_in=_text(ds, "BurnedInAnnotation").upper(), recognizable=_text(ds, "RecognizableVisualFeatures").upper(),
    )


def _read_quietly(source, bare: bool) -> pydicom.Dataset:
    # pydicom's read warnings can quote header values (PHI): never shown.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(source, stop_before_pixels=True, force=bare, specific_tags=PLAN_TAGS)


def _header(path: str, bare: bool, head: bytes | None = None) -> pydicom.Dataset:
    """The plan's tags of a file, from its header alone. An object in a store comes as `head`, its
    first OBJECT_HEAD bytes; only when its header runs past them (pydicom reads to their end, or
    fails there) is the whole object fetched."""
    if head is None:
        return _read_quietly(path, bare)
    if len(head) == OBJECT_HEAD:
        reader = BufferReader(head)
        try:
            ds = _read_quietly(reader, bare)
            if reader.tell() < OBJECT_HEAD:  # stopped before the pixel data, inside what was read
                return ds
        except Exception:  # noqa: BLE001 -- cut short, or damaged: the whole object decides
            pass
        head = storage.read_bytes(path)
    return _read_quietly(BufferReader(head), bare)


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip() if value is not None else ""


def _declared_syntax(ds: pydicom.Dataset) -> str:
    """A bare file's transfer syntax as pydicom detected it ("" when it carries its own file meta)."""
    if "TransferSyntaxUID" in ds.file_meta:
        return ""
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def part10_bytes(data: bytes, bare_syntax: str) -> bytes:
    """A bare file's bytes as Part 10 (preamble, 'DICM', file meta naming its transfer syntax), so
    the shared decoder reads it like any other file. The source bytes themselves are fingerprinted."""
    head = io.BytesIO()
    head.write(b"\0" * PREAMBLE + b"DICM")
    if bare_syntax:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = bare_syntax
        write_file_meta_info(head, meta, enforce_standard=False)
    return head.getvalue() + data
