"""`shards index`: add the member spans (schema.MEMBER_SPAN_COLUMNS) to the manifest of a shard set
ingested before ingest wrote them, so the stream reads it by offset (shards.indexed_read) instead
of walking its tars. Shards are made once and reused: this takes a set up to the current format
without making it again.

Every shard the card lists is walked once with tarfile (headers only: member data is skipped, not
read), and every manifest row must find its pixel and json members in the shard the row names;
otherwise nothing is written and each missing member is named (the set needs `shards verify`).
The other columns are kept as they are, and the manifest is replaced atomically. Only a local
folder: this rewrites manifest.parquet.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards import schema
from shards.manifest import write_table
from shards.progress_bar import progress_bar


class SpanIndexError(ValueError):
    """A manifest whose rows the shards cannot place: names what is missing."""


def member_spans(root: Path, card: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int]]:
    """(shard, member name) -> (data offset, size) of every member of every shard the card lists."""
    records = [r for split in card.get("splits", {}).values() for r in split.get("shards", [])]
    spans = {}
    for record in progress_bar(records, unit="shard", desc="index"):
        try:
            with tarfile.open(root / record["path"], mode="r:") as tar:
                for info in tar:
                    spans[record["path"], info.name] = (info.offset_data, info.size)
        except (OSError, tarfile.TarError) as exc:
            raise SpanIndexError(f"{root / record['path']}: cannot be read as a tar ({exc})") from exc
    return spans


def with_spans(table: pa.Table, spans: dict[tuple[str, str], tuple[int, int]]) -> pa.Table:
    """The manifest table with its rows' MEMBER_SPAN_COLUMNS (replacing any it had)."""
    rows = table.select(["key", "shard", "channels", "dtype"]).to_pylist()
    columns: dict[str, list[int]] = {name: [] for name in schema.MEMBER_SPAN_COLUMNS}
    missing = []
    for row in rows:
        pixels = schema.pixel_member(row["channels"], row["dtype"])
        names = {ext: f"{row['key']}.{ext}" for ext in (pixels, schema.META_JSON)}
        found = {ext: spans[row["shard"], name] for ext, name in names.items() if (row["shard"], name) in spans}
        missing += [f"{row['shard']}: {name}" for ext, name in names.items() if ext not in found]
        if len(found) == len(names):
            for name, value in schema.member_span_columns(found, pixels).items():
                columns[name].append(value)
    if missing:
        shown = "; ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise SpanIndexError(f"{len(missing)} members the manifest names are not in their shards: {shown}; "
                             f"run `shards verify` (nothing was written)")
    table = table.drop_columns([c for c in schema.MEMBER_SPAN_COLUMNS if c in table.column_names])
    for name, values in columns.items():
        table = table.append_column(name, pa.array(values, type=pa.int64()))
    return table


def run(root: Path, card: dict[str, Any], *, force: bool = False, out=None) -> int:
    """Write the spans into the manifest unless it has them (force recomputes them)."""
    path = Path(root) / schema.MANIFEST_FILE
    table = pq.read_table(path)
    if schema.has_member_spans(table.column_names) and not force:
        print(f"{root}: the manifest already has member spans (--force recomputes them)", file=out)
        return 0
    table = with_spans(table, member_spans(Path(root), card))
    write_table(path, table)
    print(f"{root}: wrote member spans for {table.num_rows} samples into {schema.MANIFEST_FILE}", file=out)
    return 0
