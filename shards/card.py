"""The dataset card (dataset.json): what was made, from what, how, and the sha256 of every shard.

Written last by an ingest job, so its presence marks a complete shard set. It holds no timestamps:
the same inputs and parameters give the same card.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

from shards import schema, storage
from shards.atomic_files import atomic_write_bytes
from shards.writer import ShardRecord


class RowCounts:
    """What the card counts of a job's manifest rows, gathered row by row (the rows themselves
    need not be kept): samples, distinct patients and crop kinds per split, and split -> label
    name -> value -> count, where list-valued (multi-label) labels count each element."""

    def __init__(self) -> None:
        self.samples: Counter = Counter()
        self.patients: dict[str, set[str]] = defaultdict(set)
        self.crop_kinds: dict[str, Counter] = defaultdict(Counter)
        self.labels: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))

    @classmethod
    def of(cls, rows: Iterable[dict[str, Any]]) -> RowCounts:
        counts = cls()
        for row in rows:
            counts.add(row)
        return counts

    def add(self, row: dict[str, Any]) -> None:
        split = row["split"]
        self.samples[split] += 1
        self.patients[split].add(row["patient"])
        self.crop_kinds[split][row["crop_kind"]] += 1
        for name, value in row["labels"].items():
            for v in value if isinstance(value, list) else [value]:
                if v is not None:
                    self.labels[split][name][str(v)] += 1

    def label_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        return {split: {name: dict(sorted(c.items())) for name, c in sorted(by.items())}
                for split, by in sorted(self.labels.items())}


def build_card(
    *,
    source: str,
    tool_version: str,
    parameters: dict[str, Any],
    counts: RowCounts,
    records: list[ShardRecord],
    pixel_stats: dict[str, Any] | None,
    rejects_by_reason: dict[str, int],
    notes: dict[str, Any],
) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for split in schema.SPLITS:
        shards = [vars(r) for r in records if r.path.startswith(split + "/")]
        if not counts.samples[split] and not shards:
            continue
        splits[split] = {
            "samples": counts.samples[split],
            "patients": len(counts.patients[split]),
            "crop_kinds": dict(sorted(counts.crop_kinds[split].items())),
            "shards": shards,
        }
    return {
        "format": schema.FORMAT_NAME,
        "schema_version": schema.SCHEMA_VERSION,
        "tool_version": tool_version,
        "source": source,
        "parameters": parameters,
        "splits": splits,
        "label_counts": counts.label_counts(),
        "pixel_stats": pixel_stats,
        "rejects": {"count": sum(rejects_by_reason.values()), "by_reason": dict(sorted(rejects_by_reason.items()))},
        "notes": notes,
    }


def write_card(root: Path, card: dict[str, Any]) -> None:
    data = json.dumps(card, indent=2, sort_keys=True).encode() + b"\n"
    atomic_write_bytes(Path(root) / schema.CARD_FILE, data)


def card_digest(card: dict[str, Any]) -> str:
    """A short digest of a card: it lists every shard's sha256, so a set made again differs."""
    return hashlib.sha256(json.dumps(card, sort_keys=True).encode()).hexdigest()[:16]


def read_card(root: str | Path) -> dict[str, Any]:
    """The card of the shard set at `root` (a folder or a URI, see shards.storage)."""
    path = storage.join(root, schema.CARD_FILE)
    try:
        data = storage.read_bytes(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise FileNotFoundError(f"{path}: no dataset card (not a shard set, or its ingest did not finish)") from None
    card = json.loads(data)
    if card.get("format") != schema.FORMAT_NAME:
        raise schema.SchemaError(f"{path}: format is {card.get('format')!r}, not {schema.FORMAT_NAME!r}")
    return card


def shard_records(card: dict[str, Any]) -> list[dict[str, Any]]:
    """Every shard of the card, all splits, in order."""
    return [shard for split in card["splits"].values() for shard in split["shards"]]
