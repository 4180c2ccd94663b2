"""The Parquet manifest: one row per sample (columns in schema.MANIFEST_COLUMNS)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards import schema
from shards.atomic_files import atomic_write_bytes


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows atomically. `labels` becomes a struct column whose fields are the union of the
    label names of all rows (missing ones null), so a shard set with lesion and random crops,
    which carry different labels, is still one table. The MEMBER_SPAN_COLUMNS are written when
    every row has them (rows of a job begun by an older version, then resumed, may not)."""
    names = schema.MANIFEST_COLUMNS
    if all(span in row for row in rows for span in schema.MEMBER_SPAN_COLUMNS):
        names += schema.MEMBER_SPAN_COLUMNS
    columns = {name: [row[name] for row in rows] for name in names}
    label_names = sorted({name for row in rows for name in row["labels"]})
    columns["labels"] = [{name: row["labels"].get(name) for name in label_names} for row in rows]
    arrays = {}
    for name, values in columns.items():
        if name == "labels" and not label_names:
            # Parquet cannot store a struct with no fields (no labels, or no rows at all: every input rejected)
            arrays[name] = pa.array([None] * len(rows), type=pa.null())
        elif name == "crop_box":
            arrays[name] = pa.array(values, type=pa.list_(pa.int64(), 4))
        elif name in ("height", "width", "channels"):
            arrays[name] = pa.array(values, type=pa.int32())
        elif name in schema.MEMBER_SPAN_COLUMNS:
            arrays[name] = pa.array(values, type=pa.int64())
        elif name == "labels":
            arrays[name] = pa.array(values)
        else:
            arrays[name] = pa.array(values, type=pa.string())
    write_table(path, pa.table(arrays))


def write_table(path: Path, table: pa.Table) -> None:
    """A manifest table written atomically, as every manifest is stored (zstd Parquet)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    atomic_write_bytes(Path(path), buf.getvalue())


def read_manifest(root: Path) -> pa.Table:
    return pq.read_table(Path(root) / schema.MANIFEST_FILE)
