"""The Parquet manifest: one row per sample (columns in schema.MANIFEST_COLUMNS).

A job's rows are gathered by ManifestRows, which keeps them as Arrow tables of CHUNK_ROWS rows
rather than as Python dicts: a manifest row as a dict is about 1.2 KB (twenty keys, a labels dict,
strings of its own), as Arrow columns a few hundred bytes, so the writing process of an archive
of a million images holds a few hundred MB for its manifest, not more than a GB, and does not
copy every row once more into column lists at the end.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from shards import schema
from shards.atomic_files import atomic_write_bytes

CHUNK_ROWS = 4096


class ManifestRows:
    """Manifest rows appended in order, kept as Arrow chunks; table() gives the manifest.

    `labels` becomes a struct column whose fields are the union of the label names of all rows,
    in name order (missing ones null), so a shard set with lesion and random crops, which carry
    different labels, is still one table; a label's type is promoted across chunks as pyarrow
    infers it over one list (int and float give double). The MEMBER_SPAN_COLUMNS are kept when
    every row has them (rows of a job begun by an older version, then resumed, may not)."""

    def __init__(self, chunk_rows: int | None = None):
        self.chunk_rows = chunk_rows or CHUNK_ROWS
        self._pending: list[dict[str, Any]] = []
        self._chunks: list[pa.Table] = []
        self._rows = 0
        self._spans = True

    def append(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        self._rows += 1
        self._spans = self._spans and all(span in row for span in schema.MEMBER_SPAN_COLUMNS)
        if len(self._pending) >= self.chunk_rows:
            self._flush()

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.append(row)

    def __len__(self) -> int:
        return self._rows

    def table(self) -> pa.Table:
        self._flush()
        names = schema.MANIFEST_COLUMNS + (schema.MEMBER_SPAN_COLUMNS if self._spans else ())
        if not self._chunks:
            return _chunk_table([], names)
        chunks = _without_unlabelled_chunks([chunk.select(names) for chunk in self._chunks])
        table = chunks[0] if len(chunks) == 1 else pa.concat_tables(chunks, promote_options="permissive")
        return _labels_in_name_order(table.combine_chunks())

    def _flush(self) -> None:
        if self._pending:
            names = schema.MANIFEST_COLUMNS + (schema.MEMBER_SPAN_COLUMNS if self._spans else ())
            self._chunks.append(_chunk_table(self._pending, names))
            self._pending = []


def _chunk_table(rows: list[dict[str, Any]], names: tuple[str, ...]) -> pa.Table:
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
    return pa.table(arrays)


def _without_unlabelled_chunks(chunks: list[pa.Table]) -> list[pa.Table]:
    """Chunks whose rows have no labels at all (a null labels column) given the other chunks'
    label names, each null: their rows then read {name: None, ...} as in a single table."""
    names = sorted({field.name for chunk in chunks if pa.types.is_struct(chunk.schema.field("labels").type)
                    for field in chunk.schema.field("labels").type})
    if not names:
        return chunks
    at = chunks[0].schema.get_field_index("labels")

    def all_null(rows: int) -> pa.StructArray:
        return pa.StructArray.from_arrays([pa.nulls(rows)] * len(names), names=names)

    return [chunk if pa.types.is_struct(chunk.schema.field("labels").type)
            else chunk.set_column(at, "labels", all_null(len(chunk))) for chunk in chunks]


def _labels_in_name_order(table: pa.Table) -> pa.Table:
    """The labels struct's fields sorted by name (chunks with other label names were unified in
    the order they came)."""
    labels = table.column("labels")
    if not pa.types.is_struct(labels.type):
        return table
    names = sorted(labels.type.field(i).name for i in range(labels.type.num_fields))
    if names == [labels.type.field(i).name for i in range(labels.type.num_fields)]:
        return table
    struct = labels.chunk(0) if labels.num_chunks == 1 else pa.concat_arrays(labels.chunks)
    ordered = pa.StructArray.from_arrays([struct.field(n) for n in names], names=names, mask=struct.is_null())
    return table.set_column(table.schema.get_field_index("labels"), "labels", ordered)


def write_manifest(path: Path, rows: Iterable[dict[str, Any]] | ManifestRows) -> None:
    """Write rows (a ManifestRows, or rows as dicts) atomically, as ManifestRows.table() lays them out."""
    if not isinstance(rows, ManifestRows):
        gathered = ManifestRows()
        gathered.extend(rows)
        rows = gathered
    write_table(path, rows.table())


def write_table(path: Path, table: pa.Table) -> None:
    """A manifest table written atomically, as every manifest is stored (zstd Parquet)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    atomic_write_bytes(Path(path), buf.getvalue())


def read_manifest(root: Path) -> pa.Table:
    return pq.read_table(Path(root) / schema.MANIFEST_FILE)
