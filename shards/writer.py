"""Deterministic, atomic writing of one split's shards.

Same samples in the same order give byte-identical tars: members go in sorted order with a pinned
mtime, owner and mode. A shard is written to a temporary name, fsynced and renamed, so a shard file
exists complete or not at all. The bytes are what webdataset's TarWriter (tarfile) writes for the
same sample; the headers come from shards.tar_members, which is 15x faster than tarfile and does
not import torch (webdataset does, which cost every `ingest` run two seconds).

Resumable: `checkpoint()` says how far the writer got since its previous checkpoint (shards it
finished, and the length of the shard in progress, whose bytes are then in the operating
system's hands); a writer made with `resume=` the checkpoints so far continues from there after
the process was killed, and the shards end byte-identical to an uninterrupted run. Every 1 MB
the kernel is also asked to start writing the new bytes to disk (Linux `sync_file_range`), and
every DATASYNC_BYTES a thread fdatasyncs the shard while the job goes on, so the fsync that
finishes a shard finds little left to wait for: on a VM's virtual disk the written-back pages
still wait for the host's flush, which only an fsync asks for (an `ingest if` job's 480 MB took
0.6 s in its last fsyncs with writeback alone, 13% of the job). The shard's sha256 is computed
on a thread as the bytes are written (_HashingFile).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import hashlib
import os
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from shards import schema
from shards.atomic_files import ATOMIC_TEMP
from shards.heap import libc
from shards.process_thread import process_thread
from shards.tar_members import END_OF_ARCHIVE, NAME_MAX, RECORD, padding, ustar_member

# A fixed timestamp (2020-01-01T00:00:00Z) so tars do not change with the time they were made.
_FIXED_MTIME = 1577836800
_OWNER = "medshards"
_MODE = 0o444
WRITEBACK_BYTES = 1 << 20  # at 8 MB a CBIS run's val and test shards never started early: close took 32 ms, now 21
DATASYNC_BYTES = 16 << 20  # a background fdatasync of the shard in progress after this much more
PARTIAL_SUFFIX = ".tmp-partial"  # the shard in progress: f".{shard name}{PARTIAL_SUFFIX}"


def is_temporary(name: str) -> bool:
    """A file name of a write not finished: a shard in progress, or atomic_write_bytes' temp."""
    return name.startswith(".") and ATOMIC_TEMP in name


class Placement(NamedTuple):
    """Where write() put a sample: its shard (relative path) and, per member extension, the
    (offset, size) of the member's data in that shard's bytes: the manifest's member spans
    (schema.MEMBER_SPAN_COLUMNS), which let a reader fetch a member without walking the tar."""

    shard: str
    spans: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class ShardRecord:
    path: str  # relative to the shard-set root, e.g. "train/shard-000000.tar"
    samples: int
    bytes: int
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Writes samples of one split into `root/split/shard-NNNNNN.tar`, rolling over at a size limit.

    Use as a context manager; `records` lists the finished shards. A sample is
    `{"__key__": key, "png": bytes, "json": bytes, ...}` with extensions from schema.ALL_MEMBERS.
    """

    def __init__(self, root: Path, split: str, *, max_samples: int = 1000, max_bytes: int = 1 << 30,
                 resume: list[dict[str, Any]] | None = None):
        if split not in schema.SPLITS:
            raise schema.SchemaError(f"split {split!r} not in {schema.SPLITS}")
        self.root = Path(root)
        self.split = split
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.records: list[ShardRecord] = []
        self._dir = self.root / split
        self._dir.mkdir(parents=True, exist_ok=True)
        self._fh: _HashingFile | None = None
        self._tmp: Path | None = None
        self._count = 0
        self._bytes = 0
        self._synced = 0  # bytes of the shard in progress already handed to writeback
        self._datasynced = 0  # bytes of it a background fdatasync was started for
        self._datasync: Future | None = None  # that fdatasync, until the shard is closed
        self._checkpointed = 0  # records already reported by checkpoint()
        if resume is not None:
            self._resume(resume)

    @property
    def current_shard(self) -> str:
        """Relative path of the shard the next sample goes to."""
        index = len(self.records)
        return f"{self.split}/{schema.SHARD_PATTERN.format(index=index)}"

    def write(self, sample: dict[str, bytes | str]) -> Placement:  # "__key__": str, members: bytes
        """Append one sample; returns the shard it went into and where its members' data lie."""
        key = sample["__key__"]
        if not schema.KEY_RE.match(key):
            raise schema.SchemaError(f"sample key {key!r} must match {schema.KEY_RE.pattern}")
        members = []
        for ext in sorted(sample):
            if ext == "__key__":
                continue
            if ext not in schema.ALL_MEMBERS:
                raise schema.SchemaError(f"sample {key}: unknown member extension {ext!r}")
            data = sample[ext]
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise schema.SchemaError(f"sample {key}: member {ext!r} is {type(data).__name__}, not bytes")
            name = f"{key}.{ext}"
            if len(name.encode()) > NAME_MAX:  # checked before anything of the sample is written
                raise schema.SchemaError(f"sample key {key!r} is too long: '{name}' passes {NAME_MAX} bytes")
            members.append((ext, name, data))
        size = sum(len(data) for _, _, data in members)
        if self._fh is not None and (self._count >= self.max_samples or self._bytes + size > self.max_bytes):
            self._finish_shard()
        if self._fh is None:
            self._open_shard()
        spans = {}
        for ext, name, data in members:
            self._fh.write(ustar_member(name, len(data), mtime=_FIXED_MTIME, mode=_MODE, owner=_OWNER))
            spans[ext] = (self._fh.size, len(data))
            self._fh.write(data)
            self._fh.write(padding(len(data)))
        self._count += 1
        self._bytes += size
        return Placement(self.current_shard, spans)

    def _open_shard(self) -> None:
        final = self.root / self.current_shard
        self._tmp = final.with_name(f".{final.name}{PARTIAL_SUFFIX}")
        self._fh = _HashingFile(open(self._tmp, "wb"))
        self._count = 0
        self._bytes = 0
        self._synced = self._datasynced = 0

    def _wait_datasync(self) -> None:
        """Wait for the background fdatasync, if one runs (before the file is synced or closed: its
        descriptor must not be closed, or reused, under it); its I/O error is raised here."""
        pending, self._datasync = self._datasync, None
        if pending is not None:
            pending.result()

    def _finish_shard(self) -> None:
        final = self.root / self.current_shard
        self._fh.write(END_OF_ARCHIVE)
        self._fh.write(bytes(-self._fh.size % RECORD))
        self._fh.hash_rest()  # hashed during the fsync
        self._wait_datasync()
        self._fh.flush_and_sync()
        self._fh.close()
        os.replace(self._tmp, final)
        self.records.append(ShardRecord(self.current_shard, self._count, self._fh.size, self._fh.hexdigest()))
        self._fh = self._tmp = None

    def close(self) -> list[ShardRecord]:
        if self._fh is not None:
            self._finish_shard()
        return self.records

    def checkpoint(self) -> dict[str, Any]:
        """How far this writer got since its previous checkpoint, as JSON-able values: the shards
        it finished since then, and the shard in progress. resume= the list of checkpoints, in
        order, continues from the last. The bytes written so far are flushed to the operating
        system (a killed process keeps them), and writeback is started every WRITEBACK_BYTES."""
        finished, self._checkpointed = self.records[self._checkpointed:], len(self.records)
        state = {"finished": [asdict(r) for r in finished], "open": None}
        if self._fh is not None:
            self._fh.flush()
            if self._fh.size - self._synced >= WRITEBACK_BYTES:
                _start_writeback(self._fh.fileno(), self._synced, self._fh.size - self._synced)
                self._synced = self._fh.size
            if self._fh.size - self._datasynced >= DATASYNC_BYTES and (self._datasync is None or self._datasync.done()):
                self._wait_datasync()  # done: raises its error, if it had one
                self._datasync = _background_datasync(self._fh.fileno())
                self._datasynced = self._fh.size
            state["open"] = {"samples": self._count, "member_bytes": self._bytes, "size": self._fh.size}
        return state

    def _resume(self, checkpoints: list[dict[str, Any]]) -> None:
        """Continue from the last of checkpoint()'s `checkpoints`: finished shards must be there;
        the shard in progress is cut back to its checkpointed length (a shard finished after the
        checkpoint is taken back); every other shard or partial file of the split is removed."""
        self.records = [ShardRecord(**r) for state in checkpoints for r in state["finished"]]
        self._checkpointed = len(self.records)
        for record in self.records:
            if not (self.root / record.path).is_file():
                raise FileNotFoundError(f"{self.root / record.path}: a finished shard of the interrupted run is missing")
        keep = {Path(r.path).name for r in self.records}
        opened = checkpoints[-1]["open"] if checkpoints else None
        final = self.root / self.current_shard
        partial = final.with_name(f".{final.name}{PARTIAL_SUFFIX}")
        if opened is not None:
            if not partial.is_file() and final.is_file():  # killed between its rename and the checkpoint
                os.replace(final, partial)
            if not partial.is_file() or partial.stat().st_size < opened["size"]:
                raise FileNotFoundError(f"{partial}: the interrupted run's shard in progress is missing or short")
            keep.add(partial.name)
        for path in self._dir.iterdir():
            if path.name not in keep and (path.match(schema.SHARD_GLOB) or is_temporary(path.name)):
                path.unlink()
        if opened is None:
            return
        raw = open(partial, "r+b")
        raw.truncate(opened["size"])
        self._fh = _HashingFile(raw)
        for block in iter(lambda: raw.read(1 << 20), b""):
            self._fh.count(block)
        self._tmp, self._count, self._bytes = partial, opened["samples"], opened["member_bytes"]
        self._synced = self._datasynced = self._fh.size

    def suspend(self) -> None:
        """Stop without finishing: the shard in progress stays, for a writer resumed from a
        checkpoint (an interrupted ingest)."""
        if self._fh is not None:
            with contextlib.suppress(OSError, ValueError):
                self._wait_datasync()
            with contextlib.suppress(OSError, ValueError):
                self._fh.close()
            self._fh = self._tmp = None

    def abort(self) -> None:
        """Drop the shard in progress (finished shards stay)."""
        partial = self._tmp
        self.suspend()
        if partial is not None:
            partial.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def fold_checkpoint(folded: dict[str, Any] | None, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """One checkpoint that resumes as the list of every checkpoint folded so far would
    (`resume=[folded]`): the shards they finished, in order, and the last one's shard in
    progress. A resumed job of a million units holds one, not a million. `folded` is extended in
    place (None: the first)."""
    if folded is None:
        return {"finished": list(checkpoint["finished"]), "open": checkpoint["open"]}
    folded["finished"].extend(checkpoint["finished"])
    folded["open"] = checkpoint["open"]
    return folded


class _HashingFile:
    """A write-only file wrapper that hashes and counts bytes as they are written (no re-read).

    The sha256 runs on this process's "shard-hash" thread, in the order the bytes were written
    (hashlib releases the GIL for the length of an update). One process writes every worker's
    samples, so its rate caps an ingest job however many workers decode; hashing on its own
    thread, at ~1.7 GB/s here, it managed 0.8 GB/s (an `ingest if` unit is 40 MB), beside it
    1.4 GB/s (benchmarks/shard_writer.py). Bytes are handed over in batches of
    HASH_BATCH_BYTES, so the hand-over costs one task a megabyte, and at most HASH_BACKLOG_BYTES
    wait for the thread (held by reference: writing more first waits for the oldest batch). So
    bytes and read-only buffers (a worker's members, mapped from its memory file) are kept as
    they are, and must not change; a writable buffer is copied.
    hexdigest() waits for every batch."""

    def __init__(self, fh):
        self._fh = fh
        self._digest = hashlib.sha256()
        self.size = 0
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._backlog: collections.deque[tuple[Future, int]] = collections.deque()
        self._backlog_bytes = 0

    def write(self, data) -> int:
        self.count(data)
        return self._fh.write(data)

    def count(self, data) -> None:
        """Hash and count bytes already in the file (a resumed shard's)."""
        if not isinstance(data, bytes) and not memoryview(data).readonly:
            data = bytes(data)  # a writable buffer may change after write() returns: hash what was written
        self._batch.append(data)
        self._batch_bytes += len(data)
        self.size += len(data)
        if self._batch_bytes >= HASH_BATCH_BYTES:
            self._hand_over()

    def _hand_over(self) -> None:
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        while self._backlog and self._backlog_bytes + size > HASH_BACKLOG_BYTES:
            self._wait_oldest()
        self._backlog.append((process_thread("shard-hash").submit(_hash_all, self._digest, batch), size))
        self._backlog_bytes += size

    def _wait_all(self) -> None:
        while self._backlog:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        future, size = self._backlog.popleft()
        self._backlog_bytes -= size
        future.result()

    def flush(self) -> None:
        self._fh.flush()

    def fileno(self) -> int:
        return self._fh.fileno()

    def tell(self) -> int:
        return self.size

    def flush_and_sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file; hashing still pending is waited for (never left running on its own)."""
        try:
            self._wait_all()
        finally:
            self._fh.close()

    def hash_rest(self) -> None:
        """Hand the bytes not yet handed over to the thread now, without waiting."""
        if self._batch:
            self._hand_over()

    def hexdigest(self) -> str:
        self.hash_rest()
        self._wait_all()
        return self._digest.hexdigest()


HASH_BATCH_BYTES = 1 << 20
HASH_BACKLOG_BYTES = 64 << 20


def _hash_all(digest, parts: list[bytes]) -> None:
    for part in parts:
        digest.update(part)


_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of the range's dirty pages, do not wait


@functools.cache
def _sync_file_range():
    """libc's sync_file_range, typed; None where there is none (not Linux, no glibc)."""
    function = getattr(libc(), "sync_file_range", None)
    if function is not None:
        function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return function


def _background_datasync(fd: int) -> Future:
    """os.fdatasync(fd) on this process's sync thread (the call releases the GIL); os.fsync where
    there is no fdatasync (macOS)."""
    return process_thread("shard-sync").submit(getattr(os, "fdatasync", os.fsync), fd)


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a file range to disk now, without waiting (Linux; elsewhere,
    and wherever the call fails, nothing: the fsync at the shard's end still makes it durable)."""
    function = _sync_file_range()
    if function is not None and length > 0:
        function(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
