"""Per-unit staging of an ingest job: each work unit's final shard members and a sidecar, kept
until the shards are written, so a killed run resumes without recomputing finished units.

Each process appends its units to a journal file of its own in the staging folder, one record a
unit: `RECORD_MAGIC`, the lengths of the unit id and of the payload, the id, the payload, and the
XXH3-64 of id and payload. A record is complete when its checksum matches, so a run killed in the
middle of a write leaves a tail that resume ignores (that unit is recomputed); the next run
appends to new journals, never after a damaged tail. One file a unit, written to a temporary name
and renamed, cost 0.6 ms a unit in file-system metadata here: a third of ingesting a CheXpert JPEG.

A payload is a flat length-prefixed record, not a tar: `MAGIC`, then the sidecar JSON, then each
member as (name, bytes), every field preceded by its length. Packing and parsing are a few slices
(a tar through `tarfile` cost ~2 ms per unit). Journals are not fsynced: staging must survive a
killed run, which the page cache does; what a power loss cuts short fails its checksum.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from shards import schema

if TYPE_CHECKING:
    from ingest.pipeline import UnitOutput

MAGIC = b"medshards-staged-unit-v1\n"
RECORD_MAGIC = b"MSUNIT02"
JOURNAL_GLOB = "units-*.journal"
_LEN = struct.Struct("<Q")
_RECORD_HEAD = struct.Struct("<8sHQ")  # magic, unit id length, payload length
_DIGEST = 8


@dataclass(frozen=True)
class StagedRef:
    """Where a finished unit's payload lies in a journal."""

    journal: Path
    offset: int
    length: int


class _Journal:
    """This process's journal in one staging folder, opened on first use."""

    def __init__(self, staging: Path):
        self.staging = staging
        self.path = staging / f"units-{os.getpid()}-{uuid.uuid4().hex[:8]}.journal"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, unit_id: str, payload: bytes) -> None:
        name = unit_id.encode()
        digest = xxhash.xxh3_64()
        digest.update(name)
        digest.update(payload)
        parts = [_RECORD_HEAD.pack(RECORD_MAGIC, len(name), len(payload)) + name, payload, digest.digest()]
        views = [memoryview(p) for p in parts]
        while views:  # writev may write less than asked (a signal, a large payload)
            written = os.writev(self.fd, views)
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views:
                views[0] = views[0][written:]

    def close(self) -> None:
        os.close(self.fd)


_JOURNAL: tuple[int, _Journal] | None = None


def _journal(staging: Path) -> _Journal:
    global _JOURNAL
    if _JOURNAL is None or _JOURNAL[0] != os.getpid() or _JOURNAL[1].staging != staging:
        finish_staging()
        _JOURNAL = (os.getpid(), _Journal(staging))  # per process: a forked worker opens its own
    return _JOURNAL[1]


def finish_staging() -> None:
    """Close this process's journal, if it has one (before the staging folder is removed)."""
    global _JOURNAL
    if _JOURNAL is not None and _JOURNAL[0] == os.getpid():
        _JOURNAL[1].close()
    _JOURNAL = None


def _field(data: bytes) -> list[bytes]:
    return [_LEN.pack(len(data)), data]


def stage_unit(staging: Path, unit_id: str, output: UnitOutput) -> bytes:
    """Append the unit's final shard members (json included) and a sidecar to this process's
    journal: a complete record marks the unit done. Returns the payload, so the parent process
    need not read it back."""
    sidecar = {
        "samples": [
            {
                "key": s.meta.key,
                "row": s.meta.manifest_row(""),
                "channels": s.meta.channels,
                "dtype": s.meta.dtype,
                "channel_names": s.meta.channel_names,
                "sums": s.channel_sums,
                "sq_sums": s.channel_sq_sums,
                "pixels": s.pixels,
            }
            for s in output.samples
        ],
        "rejects": [{"source_path": r.source_path, "reason": r.reason} for r in output.rejects],
        "notes": dict(output.notes),
    }
    parts = [MAGIC, *_field(json.dumps(sidecar, sort_keys=True).encode())]
    for sample in output.samples:
        members = {**sample.members, schema.META_JSON: sample.meta.to_json_bytes()}
        for ext, data in sorted(members.items()):
            parts += _field(f"{sample.meta.key}.{ext}".encode()) + _field(data)
    data = b"".join(parts)
    _journal(staging).append(unit_id, data)
    return data


def _read_field(data: bytes, at: int) -> tuple[bytes, int]:
    if at + _LEN.size > len(data):
        raise ValueError("staged unit is cut short")
    (size,) = _LEN.unpack_from(data, at)
    at += _LEN.size
    if at + size > len(data):
        raise ValueError("staged unit is cut short")
    return data[at : at + size], at + size


def parse_staged(data: bytes) -> tuple[dict[str, Any], dict[str, dict[str, bytes]]]:
    """Staged bytes -> (sidecar, key -> {extension: bytes}). Raises ValueError on a damaged file."""
    if not data.startswith(MAGIC):
        raise ValueError("not a staged unit")
    blob, at = _read_field(data, len(MAGIC))
    sidecar = json.loads(blob)
    members: dict[str, dict[str, bytes]] = {}
    while at < len(data):
        name, at = _read_field(data, at)
        payload, at = _read_field(data, at)
        key, ext = schema.split_member_name(name.decode())
        members.setdefault(key, {})[ext] = payload
    if sorted(members) != sorted(s["key"] for s in sidecar["samples"]):
        raise ValueError("staged unit's members do not match its sidecar")
    return sidecar, members


def staged_units(staging: Path, unit_ids: list[str] | None = None) -> dict[str, StagedRef]:
    """The units (of `unit_ids`, or all) whose journal record is complete, and where each lies.
    Records are checked by their checksum; a journal is read up to its first damaged record."""
    wanted = None if unit_ids is None else set(unit_ids)
    found: dict[str, StagedRef] = {}
    for journal in sorted(staging.glob(JOURNAL_GLOB)):
        with open(journal, "rb") as fh:
            while head := fh.read(_RECORD_HEAD.size):
                if len(head) < _RECORD_HEAD.size:
                    break
                magic, name_length, length = _RECORD_HEAD.unpack(head)
                if magic != RECORD_MAGIC:
                    break
                name = fh.read(name_length)
                offset = fh.tell()
                payload, digest = fh.read(length), fh.read(_DIGEST)
                check = xxhash.xxh3_64()
                check.update(name)
                check.update(payload)
                if len(payload) != length or digest != check.digest():
                    break  # cut short by a killed run: the unit is recomputed
                unit_id = name.decode("utf-8", "replace")
                if wanted is None or unit_id in wanted:
                    found[unit_id] = StagedRef(journal, offset, length)
    return found


def read_staged(ref: StagedRef) -> bytes:
    with open(ref.journal, "rb") as fh:
        fh.seek(ref.offset)
        data = fh.read(ref.length)
    if len(data) != ref.length:
        raise ValueError(f"{ref.journal}: staged unit at {ref.offset} is cut short")
    return data
