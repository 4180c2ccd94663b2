"""Deterministic, atomic writing of one split's shards.

Same samples in the same order give byte-identical tars: webdataset's TarWriter sorts members and
we pin mtime, owner and mode. A shard is written to a temporary name, fsynced and renamed, so a
shard file exists complete or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from shards import schema

# A fixed timestamp (2020-01-01T00:00:00Z) so tars do not change with the time they were made.
_FIXED_MTIME = 1577836800
_OWNER = "medshards"


@dataclass(frozen=True)
class ShardRecord:
    path: str  # relative to the shard-set root, e.g. "train/shard-000000.tar"
    samples: int
    bytes: int
    sha256: str


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part.
    durable=False skips the fsync: still atomic against a killed process, not against power loss."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


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

    def __init__(self, root: Path, split: str, *, max_samples: int = 1000, max_bytes: int = 1 << 30):
        if split not in schema.SPLITS:
            raise schema.SchemaError(f"split {split!r} not in {schema.SPLITS}")
        self.root = Path(root)
        self.split = split
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.records: list[ShardRecord] = []
        self._dir = self.root / split
        self._dir.mkdir(parents=True, exist_ok=True)
        self._fh = None
        self._tar = None  # webdataset.TarWriter
        self._tmp: Path | None = None
        self._count = 0
        self._bytes = 0

    @property
    def current_shard(self) -> str:
        """Relative path of the shard the next sample goes to."""
        index = len(self.records)
        return f"{self.split}/{schema.SHARD_PATTERN.format(index=index)}"

    def write(self, sample: dict[str, bytes | str]) -> str:
        """Append one sample; returns the relative path of the shard it went into."""
        key = sample["__key__"]
        if not schema.KEY_RE.match(key):
            raise schema.SchemaError(f"sample key {key!r} must match {schema.KEY_RE.pattern}")
        for ext in sample:
            if ext != "__key__" and ext not in schema.ALL_MEMBERS:
                raise schema.SchemaError(f"sample {key}: unknown member extension {ext!r}")
        size = sum(len(v) for k, v in sample.items() if k != "__key__")
        if self._tar is not None and (self._count >= self.max_samples or self._bytes + size > self.max_bytes):
            self._finish_shard()
        if self._tar is None:
            self._open_shard()
        shard = self.current_shard
        self._tar.write(sample)
        self._count += 1
        self._bytes += size
        return shard

    def _open_shard(self) -> None:
        # Imported here: webdataset imports torch (seconds), which `shards ls` and friends never need.
        import webdataset as wds

        final = self.root / self.current_shard
        self._tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        self._fh = _HashingFile(open(self._tmp, "wb"))
        self._tar = wds.TarWriter(self._fh, user=_OWNER, group=_OWNER, mode=0o444, encoder=False,
                                  mtime=_FIXED_MTIME)
        self._count = 0
        self._bytes = 0

    def _finish_shard(self) -> None:
        final = self.root / self.current_shard
        self._tar.close()
        self._fh.flush_and_sync()
        self._fh.close()
        os.replace(self._tmp, final)
        self.records.append(ShardRecord(self.current_shard, self._count, self._fh.size, self._fh.hexdigest()))
        self._tar = self._fh = self._tmp = None

    def close(self) -> list[ShardRecord]:
        if self._tar is not None:
            self._finish_shard()
        return self.records

    def abort(self) -> None:
        """Drop the shard in progress (finished shards stay)."""
        if self._tar is not None:
            with contextlib.suppress(OSError, ValueError):
                self._tar.close()
            self._fh.close()
            self._tmp.unlink(missing_ok=True)
            self._tar = self._fh = self._tmp = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _HashingFile:
    """A write-only file wrapper that hashes and counts bytes as they are written (no re-read)."""

    def __init__(self, fh):
        self._fh = fh
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self._digest.update(data)
        self.size += len(data)
        return self._fh.write(data)

    def tell(self) -> int:
        return self.size

    def flush_and_sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()
