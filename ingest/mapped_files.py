"""Source files mapped into memory instead of copied out of the page cache.

A mammogram is 20-60 MB and its ROI mask another 10-30 MB, of which ingest reads a lesion's box
and one pass for the fingerprint. `Path.read_bytes` copies every byte into a fresh buffer first:
a memory-bound pass that was a fifth of ingest time and did not scale with worker processes
(on a 2-vCPU VM, two processes copying got 1.3x one). A read-only shared mapping costs only its
page-table entries (MAP_POPULATE fills them in one call, not one fault per page).

A mapping reflects the file: if another program truncates a file while it is mapped, or the disk
fails to read a page of it, reading that page kills the process (SIGBUS). Files are mapped one
unit at a time, for the unit's duration, in a worker process (ingest.pipeline): such a death costs
the unit, as a reject, and not the job.
"""

from __future__ import annotations

import io
import mmap
import os
from pathlib import Path

from shards import storage

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux; elsewhere pages fault in on first touch
# Below this a plain read is as cheap as setting up and tearing down a mapping (PNG/JPEG radiographs).
MAP_AT_LEAST = 1 << 20


def read_source(path: str | Path) -> bytes | memoryview:
    """The file's bytes, read-only: a memoryview of a shared mapping for files of MAP_AT_LEAST bytes
    or more, else bytes; an object named by a URI (s3://...) is downloaded whole. Raises OSError
    like open() for a missing or unreadable file. A mapping lives as long as the view or anything
    made from it (numpy arrays viewing it included)."""
    if storage.is_uri(path):
        return storage.read_bytes(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < MAP_AT_LEAST:
            return fh.read()
        return map_read_only(fh.fileno(), size)


def map_read_only(fd: int, size: int) -> memoryview:
    """The first `size` bytes of an open file (or memory file) as a read-only shared mapping, its
    page tables filled in one call (MAP_POPULATE); the descriptor may be closed afterwards."""
    return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ))


class BufferReader(io.RawIOBase):
    """A seekable read-only file over a bytes-like object, without copying it (io.BytesIO copies
    anything but bytes). For parsers that want a file: pydicom reads headers through it."""

    name = None  # no file behind it (pydicom records a file object's name)

    def __init__(self, buffer):
        super().__init__()
        self._view = memoryview(buffer).cast("B")
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, into) -> int:
        count = max(0, min(len(into), len(self._view) - self._at))
        into[:count] = self._view[self._at : self._at + count]
        self._at += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._at = base + offset
        return self._at

    def tell(self) -> int:
        return self._at
