"""`shards ls`: what a shard set holds, read from its card (and the manifest's row count); or, for
a folder of shard sets (shards are made once and kept side by side, /shards/cbis-lesion,
/shards/nih-whole, ...), one line per set and the sets whose ingest has not finished.

Nothing here opens a shard: the card already states counts, bytes and label tallies, so listing a
set of terabytes takes as long as reading one JSON file and one Parquet footer.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from shards import schema, storage
from shards.card import read_card

TOP_LABEL_VALUES = 5


def summarize(root: Path, card: dict[str, Any]) -> dict[str, Any]:
    """The card without its per-shard records (counts and bytes instead), plus the manifest's
    row count (None when the manifest is missing or unreadable)."""
    splits = {}
    by_split = card.get("splits", {})
    # train, val, test in that order (the card's JSON sorts them alphabetically)
    for split in sorted(by_split, key=lambda s: (schema.SPLITS.index(s) if s in schema.SPLITS else 99, s)):
        entry = by_split[split]
        shards = entry.get("shards", [])
        splits[split] = {
            "samples": entry.get("samples", 0),
            "patients": entry.get("patients", 0),
            "shards": len(shards),
            "bytes": sum(s.get("bytes", 0) for s in shards),
            "crop_kinds": entry.get("crop_kinds", {}),
        }
    try:
        manifest_rows, columns = storage.parquet_footer(storage.join(root, schema.MANIFEST_FILE))
        member_spans = schema.has_member_spans(columns)
    except (OSError, ValueError):
        manifest_rows = member_spans = None
    summary = {name: card.get(name) for name in
               ("format", "schema_version", "source", "tool_version", "parameters", "label_counts",
                "pixel_stats", "rejects", "notes")}
    return {**summary, "splits": splits, "manifest_rows": manifest_rows, "member_spans": member_spans}


def _human_bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    power = 0
    while n >= 1024 and power < len(units) - 1:
        n, power = n / 1024, power + 1
    return f"{n:.0f} B" if power == 0 else f"{n:.1f} {units[power]}"


def _flat(value: Any, prefix: str = "") -> list[str]:
    """Nested stats dict -> ['uint16.mean=2047.5', ...]: the card does not fix pixel_stats' shape,
    so show whatever it holds, one leaf per item."""
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _flat(v, f"{prefix}{k}.")]
    return [f"{prefix.rstrip('.')}={_number(value)}"]


def _number(value: Any) -> str:
    """Floats to 6 significant digits, per element for per-channel lists."""
    if isinstance(value, list):
        return "[" + ", ".join(_number(v) for v in value) + "]"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _counts(counter: dict[str, int], top: int) -> str:
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{name} {count}" for name, count in ranked[:top])
    return shown + (f", +{len(ranked) - top} more" if len(ranked) > top else "")


def _crop_kinds(splits: dict[str, dict[str, Any]]) -> Counter:
    """summarize()'s splits -> samples per crop kind over all of them."""
    kinds = Counter()
    for entry in splits.values():
        kinds.update(entry["crop_kinds"])
    return kinds


def render(root: Path, summary: dict[str, Any]) -> str:
    """The summary as a few readable lines: one table row per split, then labels and stats."""
    lines = [f"{root}: {summary['format']} schema {summary['schema_version']}, tool {summary['tool_version']}",
             f"source: {summary['source']}"]
    header = f"{'split':<6} {'samples':>9} {'patients':>9} {'shards':>7} {'bytes':>11}"
    lines += ["", header]
    total = Counter()
    for split, entry in summary["splits"].items():
        lines.append(f"{split:<6} {entry['samples']:>9} {entry['patients']:>9} {entry['shards']:>7} "
                     f"{_human_bytes(entry['bytes']):>11}")
        total.update({k: entry[k] for k in ("samples", "shards", "bytes")})
    crop_kinds = _crop_kinds(summary["splits"])
    lines.append(f"{'total':<6} {total['samples']:>9} {'':>9} {total['shards']:>7} {_human_bytes(total['bytes']):>11}")
    lines += ["", f"crop kinds: {_counts(crop_kinds, len(crop_kinds)) or 'none'}"]
    labels: dict[str, Counter] = {}
    for by_name in (summary.get("label_counts") or {}).values():
        for name, values in by_name.items():
            labels.setdefault(name, Counter()).update(values)
    lines.append(f"labels (top {TOP_LABEL_VALUES} values, all splits):" if labels else "labels: none")
    lines += [f"  {name}: {_counts(values, TOP_LABEL_VALUES)}" for name, values in sorted(labels.items())]
    stats = summary.get("pixel_stats")
    lines.append(f"pixel stats: {', '.join(_flat(stats)) if stats else 'none'}")
    rejects = summary.get("rejects") or {}
    by_reason = rejects.get("by_reason") or {}
    reasons = f" ({_counts(by_reason, len(by_reason))})" if by_reason else ""
    lines.append(f"rejects: {rejects.get('count', 0)}{reasons}")
    rows = summary.get("manifest_rows")
    if rows is None:
        lines.append(f"manifest: missing or unreadable ({schema.MANIFEST_FILE})")
    elif rows != total["samples"]:
        lines.append(f"manifest: {rows} rows, but the card counts {total['samples']} samples (run `shards verify`)")
    elif summary.get("member_spans") is False:
        lines.append("manifest: no member spans (an ingest before them): the stream reads the set through its tars; "
                     "`shards index ROOT` adds them")
    return "\n".join(lines)


def run(root: Path, card: dict[str, Any], *, as_json: bool = False, out=None) -> int:
    summary = summarize(root, card)
    print(json.dumps(summary, indent=2, sort_keys=True) if as_json else render(root, summary), file=out)
    return 0


def list_sets(root: str | Path) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """The shard sets directly in `root`: ([(name, summary)], [names of folders whose ingest has not
    finished]); folders that are neither are left out."""
    sets, unfinished = [], []
    for name in storage.list_subfolders(root):
        child = storage.join(root, name)
        try:
            sets.append((name, summarize(child, read_card(child))))
        except (OSError, ValueError):
            if schema.STAGING_DIR in storage.list_names(child):
                unfinished.append(name)
    return sets, unfinished


def render_sets(root: str | Path, sets: list[tuple[str, dict[str, Any]]], unfinished: list[str]) -> str:
    width = max([len(name) for name, _ in sets] + [3])
    lines = [f"{root}: {len(sets)} shard set{'s' * (len(sets) != 1)}", "",
             f"{'set':<{width}} {'source':<12} {'train':>8} {'val':>7} {'test':>7} {'bytes':>11}  crop kinds"]
    for name, summary in sets:
        splits = summary["splits"]
        kinds = _crop_kinds(splits)
        counts = [splits.get(split, {}).get("samples", 0) for split in schema.SPLITS]
        size = sum(entry["bytes"] for entry in splits.values())
        lines.append(f"{name:<{width}} {summary['source'] or '?':<12} {counts[0]:>8} {counts[1]:>7} {counts[2]:>7} "
                     f"{_human_bytes(size):>11}  {_counts(kinds, len(kinds)) or 'none'}")
    if unfinished:
        lines += ["", f"not finished (an ingest is writing it, or was interrupted: its command resumes it): "
                      f"{', '.join(unfinished)}"]
    return "\n".join(lines)


def run_sets(root: str | Path, sets: list[tuple[str, dict[str, Any]]], unfinished: list[str], *,
             as_json: bool = False, out=None) -> int:
    if as_json:
        text = json.dumps({"sets": dict(sets), "unfinished": unfinished}, indent=2, sort_keys=True)
    else:
        text = render_sets(root, sets, unfinished)
    print(text, file=out)
    return 0
