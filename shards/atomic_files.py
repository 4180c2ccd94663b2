"""Whole files written atomically: readers see the old file or the whole new one, never a part.

For the small files beside the shards (dataset card, manifest, rejects, job state, checkpoints
of a one-process run). Shards themselves are written by shards.writer, which streams and resumes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

ATOMIC_TEMP = ".tmp-"  # atomic_write_bytes(path) writes f".{path.name}.tmp-{pid}" first


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part.
    durable=False skips the fsync: still atomic against a killed process, not against power loss."""
    with atomic_writer(path, durable=durable) as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_writer(path: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A file to write `path`'s new content into, as it is made (a file too large to hold as
    bytes first); it replaces `path` when the block ends, and is removed if the block fails."""
    tmp = path.with_name(f".{path.name}{ATOMIC_TEMP}{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no half-written temp left beside the file
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        sync_folder(path.parent)  # the rename too


def remove_atomic_temps(path: Path) -> None:
    """Delete the temps of atomic_write_bytes(path) that killed processes left half-written (a
    write that fails removes its own). Only for a folder no other process is writing."""
    for stale in path.parent.glob(f".{path.name}{ATOMIC_TEMP}*"):
        stale.unlink(missing_ok=True)


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that renames in it survive a power loss (where folders can be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
