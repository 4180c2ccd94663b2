"""An ingest job's progress log, so that a killed run resumes where it stopped.

The job writes its units into the shards strictly in unit order (ingest.pipeline), and after each
unit the main process appends one record to `progress.log` in the output's staging folder: the
unit id, the unit's sidecar (its manifest rows, pixel sums, rejects and notes) and every split's
ShardWriter checkpoint (shards finished since the previous record, and the length of the shard
in progress: a record's size does not grow with the job). A resumed run
replays the sidecars, cuts each shard in progress back to its checkpoint and goes on with the
next unit, so the shards end byte-identical to an uninterrupted run and no pixel is ever written
twice. (Until this log, every unit's members were staged in a journal first and then copied into
the shards: a second write of every output byte, 40 MB for one 1024 px immunofluorescence image.)

A record is `RECORD_MAGIC`, the payload's length, the payload (JSON) and its XXH3-64. A record is
complete when its checksum matches: a run killed in the middle of a write leaves a tail that
resume cuts off (that unit is done again). The log is not fsynced: it must survive a killed
process, which the page cache does; a power loss that cuts it short only costs recomputation.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

if TYPE_CHECKING:
    from ingest.pipeline import UnitOutput
    from shards.writer import Placement

LOG_FILE = "progress.log"
RECORD_MAGIC = b"MSPROG01"
_RECORD_HEAD = struct.Struct("<8sQ")  # magic, payload length
_DIGEST = 8


@dataclass(frozen=True)
class UnitRecord:
    """One finished unit, as the log holds it."""

    unit_id: str
    sidecar: dict[str, Any]  # see unit_sidecar
    writers: dict[str, dict[str, Any]]  # split -> ShardWriter.checkpoint() after this unit (a delta)


def unit_sidecar(output: UnitOutput, placements: list[Placement]) -> dict[str, Any]:
    """What a unit adds to the job besides its shard members: a manifest row per sample (with the
    shard it went into and its members' spans there, `placements[i]` for sample i), the pixel
    sums for the card's statistics, the unit's rejects and notes. JSON-able; the pixel sums are
    exact integers below 2**53."""
    return {
        "samples": [
            {
                "row": s.meta.manifest_row(placement.shard, placement.spans),
                "channels": s.meta.channels,
                "dtype": s.meta.dtype,
                "channel_names": s.meta.channel_names,
                "sums": s.channel_sums,
                "sq_sums": s.channel_sq_sums,
                "pixels": s.pixels,
            }
            for s, placement in zip(output.samples, placements, strict=True)
        ],
        "rejects": [{"source_path": r.source_path, "reason": r.reason} for r in output.rejects],
        "notes": dict(output.notes),
    }


def read_progress(staging: Path) -> tuple[list[UnitRecord], int]:
    """The log's complete records, in order, and the length of the log they fill (what follows
    is a tail cut short by a killed run, or damage: resume drops it). No log: ([], 0)."""
    records, good = [], 0
    for record, good in progress_records(staging):
        records.append(record)
    return records, good


def progress_records(staging: Path) -> Iterator[tuple[UnitRecord, int]]:
    """read_progress's records one at a time, each with the log's good length once it is read:
    a resumed job of a million units reads its log without holding every unit's record."""
    path = staging / LOG_FILE
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        while len(head := fh.read(_RECORD_HEAD.size)) == _RECORD_HEAD.size:
            magic, length = _RECORD_HEAD.unpack(head)
            if magic != RECORD_MAGIC:
                break
            payload, digest = fh.read(length), fh.read(_DIGEST)
            if len(payload) != length or digest != xxhash.xxh3_64_digest(payload):
                break
            try:
                fields = json.loads(payload)
                record = UnitRecord(fields["unit"], fields["sidecar"], fields["writers"])
            except (ValueError, KeyError, TypeError):
                break
            yield record, fh.tell()


class ProgressLog:
    """The log, opened to append after its first `keep` bytes (read_progress's good length)."""

    def __init__(self, staging: Path, keep: int = 0):
        self.path = staging / LOG_FILE
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, keep)
        os.lseek(self.fd, keep, os.SEEK_SET)

    def append(self, record: UnitRecord) -> None:
        payload = json.dumps({"unit": record.unit_id, "sidecar": record.sidecar, "writers": record.writers}).encode()
        data = memoryview(_RECORD_HEAD.pack(RECORD_MAGIC, len(payload)) + payload + xxhash.xxh3_64_digest(payload))
        while data:  # write may write less than asked (a signal, a large record)
            data = data[os.write(self.fd, data):]

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
