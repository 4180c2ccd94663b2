"""One ingest at a time per output folder: a second run into the same folder (a scheduler's retry
while the first still runs, a second terminal) would resume from the first one's progress log and
cut its shards back under it. The lock is the kernel's (flock), so a run that is killed, however
it dies, leaves no lock behind: at most the file, which the next run takes over. On a filesystem
that takes no locks (Lustre mounted without `flock`), the run warns that it is unguarded and goes on."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".ingest.lock"  # in the output folder, beside the staging folder; gone when the run ends


class FolderBusy(RuntimeError):
    """Another process holds the output folder's lock."""


class LocksUnsupported(UserWarning):
    """The output's filesystem takes no file locks (Lustre mounted without `flock`, some network
    filesystems): the run goes on unguarded, and says so."""


# flock's errors where the filesystem cannot lock at all (Lustre without -o flock: ENOSYS; an NFS
# server without a lock manager: ENOLCK), as against a lock another process holds
_NO_LOCKS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})


def _lock(fd: int, out: Path) -> None:
    """Take the lock, or warn where the filesystem has none; FolderBusy when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise FolderBusy(busy_message(out, _holder(fd))) from None
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise
        warnings.warn(LocksUnsupported(
            f"{out}'s filesystem takes no file locks ({exc.strerror}): nothing stops a second ingest from writing "
            "this folder at the same time, so run one at a time"), stacklevel=3)


@contextlib.contextmanager
def hold_out_lock(out: Path) -> Iterator[None]:
    """Hold `out`'s lock for the block, or raise FolderBusy naming the process that holds it."""
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd, out)
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
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                return None  # no telling: the run itself will warn
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def busy_message(out: Path, holder: str) -> str:
    return (f"{out}: another ingest (pid {holder}) is writing this folder; wait for it to end, "
            "or stop it and run again to resume")


def _holder(fd: int) -> str:
    return os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
