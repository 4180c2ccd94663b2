"""One ingest at a time per output folder: a second run into the same folder (a scheduler's retry
while the first still runs, a second terminal) would resume from the first one's progress log and
cut its shards back under it. The lock is the kernel's (flock), so a run that is killed, however
it dies, leaves no lock behind: at most the file, which the next run takes over."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".ingest.lock"  # in the output folder, beside the staging folder; gone when the run ends


class FolderBusy(RuntimeError):
    """Another process holds the output folder's lock."""


@contextlib.contextmanager
def hold_out_lock(out: Path) -> Iterator[None]:
    """Hold `out`'s lock for the block, or raise FolderBusy naming the process that holds it."""
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(busy_message(out, _holder(fd))) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still held: a run that starts now makes a new one
    finally:
        os.close(fd)


def writer_of(out: Path) -> str | None:
    """The pid of the ingest writing `out` now, or None; read only (ingest --dry-run)."""
    try:
        fd = os.open(out / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def busy_message(out: Path, holder: str) -> str:
    return (f"{out}: another ingest (pid {holder}) is writing this folder; wait for it to end, "
            "or stop it and run again to resume")


def _holder(fd: int) -> str:
    return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
