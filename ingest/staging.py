"""Per-image staging of an ingest job: one tar per work unit holding its final shard members and
a sidecar, so a killed run resumes without recomputing finished images."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shards import schema
from shards.writer import atomic_write_bytes

if TYPE_CHECKING:
    from ingest.pipeline import UnitOutput


SIDECAR = "unit.json"  # the staged tar's last member: what the samples are, rejects, notes


def stage_path(staging: Path, unit_id: str) -> Path:
    return staging / f"{unit_id}.tar"


def stage_unit(staging: Path, unit_id: str, output: UnitOutput) -> bytes:
    """One tar per unit holding its final shard members (json included) and a sidecar, written
    atomically: the file's existence marks the unit done. Returns the bytes, so the parent process
    need not read them back."""
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
        "rejects": [asdict(r) for r in output.rejects],
        "notes": dict(output.notes),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in output.samples:
            members = {**sample.members, schema.META_JSON: sample.meta.to_json_bytes()}
            for ext, data in sorted(members.items()):
                _add_member(tar, f"{sample.meta.key}.{ext}", data)
        _add_member(tar, SIDECAR, json.dumps(sidecar, sort_keys=True).encode())
    data = buf.getvalue()
    # Not fsynced: staging must survive a killed run, which the page cache does; a staged tar cut
    # short by a power loss fails to parse on resume and its unit is recomputed.
    atomic_write_bytes(stage_path(staging, unit_id), data, durable=False)
    return data


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def parse_staged(data: bytes) -> tuple[dict[str, Any], dict[str, dict[str, bytes]]]:
    """Staged tar bytes -> (sidecar, key -> {extension: bytes}). Raises on a damaged tar."""
    members: dict[str, dict[str, bytes]] = {}
    sidecar = None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for info in tar:
            payload = tar.extractfile(info).read()
            if info.name == SIDECAR:
                sidecar = json.loads(payload)
            else:
                key, ext = schema.split_member_name(info.name)
                members.setdefault(key, {})[ext] = payload
    if sidecar is None:
        raise ValueError("staged unit has no sidecar")
    return sidecar, members


def staged_units(staging: Path, unit_ids: list[str]) -> set[str]:
    """Ids of units whose staged tar is complete and parses (the rest are recomputed)."""
    done = set()
    for unit_id in unit_ids:
        path = stage_path(staging, unit_id)
        if not path.exists():
            continue
        try:
            parse_staged(path.read_bytes())
            done.add(unit_id)
        except (OSError, ValueError, KeyError, tarfile.TarError, schema.SchemaError):
            path.unlink()
    return done
