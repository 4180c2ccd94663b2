"""The Parquet manifest: one row per sample (columns in schema.MANIFEST_COLUMNS).

A job's rows are gathered by ManifestRows in Arrow chunks of CHUNK_ROWS rows, each spilled
(LZ4-compressed) to an anonymous temporary file as it fills (tempfile's, so in $TMPDIR; the
system removes it however the process ends), and written as Parquet row groups of ROW_GROUP_ROWS rows, read back
a group at a time. So what the writing process holds of its rows is a chunk being filled and a
group being written, however many samples the job makes. Kept in memory instead, a million-row
job's chunks were 250 MB (dicom rows, 0.25 KB each as Arrow, against 2.6 KB as Python dicts),
and writing them took as much again and more. The row groups' bounds are fixed by row count,
so the file's bytes do not depend on the chunk size; a manifest of up to ROW_GROUP_ROWS rows is
one row group, as pyarrow.parquet.write_table makes it.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards import schema
from shards.atomic_files import atomic_write_bytes, atomic_writer

CHUNK_ROWS = 4096
ROW_GROUP_ROWS = 8192  # writing takes ~2 KB a row of the group being written (+25 MB at 8,192 dicom rows, +45 at 16,384)
_SPILL_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


class ManifestRows:
    """Manifest rows appended in order, spilled as Arrow chunks; write() makes the manifest,
    table() gives it as one table (for a set small enough to hold).

    `labels` becomes a struct column whose fields are the union of the label names of all rows,
    in name order (missing ones null), so a shard set with lesion and random crops, which carry
    different labels, is still one table; a label's type is promoted across chunks as pyarrow
    infers it over one list (int and float give double). The MEMBER_SPAN_COLUMNS are kept when
    every row has them (rows of a job begun by an older version, then resumed, may not)."""

    def __init__(self, chunk_rows: int | None = None):
        self.chunk_rows = chunk_rows or CHUNK_ROWS
        self._pending: list[dict[str, Any]] = []
        self._spill = tempfile.TemporaryFile(prefix="medshards-manifest-")
        self._chunks: list[tuple[int, int, pa.DataType]] = []  # (offset in the spill, bytes, labels type)
        self._spans = True

    def append(self, row: dict[str, Any]) -> None:
        self._pending.append(row)
        self._spans = self._spans and all(span in row for span in schema.MEMBER_SPAN_COLUMNS)
        if len(self._pending) >= self.chunk_rows:
            self._flush()

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.append(row)

    def table(self) -> pa.Table:
        tables = list(self._tables())
        return tables[0] if len(tables) == 1 else pa.concat_tables(tables).combine_chunks()

    def write(self, path: Path) -> None:
        """The manifest written atomically, ROW_GROUP_ROWS rows a row group (zstd Parquet)."""
        with atomic_writer(Path(path)) as fh:
            writer = None
            for group in _row_groups(self._tables(), ROW_GROUP_ROWS):
                writer = writer or pq.ParquetWriter(fh, group.schema, compression="zstd")
                writer.write_table(group, row_group_size=ROW_GROUP_ROWS)
            writer.close()

    def _tables(self) -> Iterator[pa.Table]:
        """The rows as tables in the manifest's schema, a chunk at a time (one empty table for no rows)."""
        self._flush()
        columns = self._columns()
        if not self._chunks:
            yield _chunk_table([], columns)
            return
        labels = _labels_type([labels for _, _, labels in self._chunks])
        for offset, size, _ in self._chunks:
            self._spill.seek(offset)
            chunk = pa.ipc.open_stream(self._spill.read(size)).read_all().select(columns)
            yield chunk if labels is None else _with_labels(chunk, labels)

    def _columns(self) -> tuple[str, ...]:
        return schema.MANIFEST_COLUMNS + (schema.MEMBER_SPAN_COLUMNS if self._spans else ())

    def _flush(self) -> None:
        if not self._pending:
            return
        chunk = _chunk_table(self._pending, self._columns())
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, chunk.schema, options=_SPILL_OPTIONS) as stream:
            stream.write_table(chunk)
        data = sink.getvalue()
        try:
            offset = self._spill.seek(0, io.SEEK_END)
            self._spill.write(data)
        except OSError as exc:  # said as where it is: not the output folder
            raise OSError(exc.errno, exc.strerror, f"{tempfile.gettempdir()} ($TMPDIR), where the manifest's rows wait "
                                                   "until the job ends") from exc
        self._chunks.append((offset, data.size, chunk.schema.field("labels").type))
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


def _labels_type(chunk_types: list[pa.DataType]) -> pa.StructType | None:
    """The manifest's labels struct: the union of the chunks' label names, in name order, each of
    the type pyarrow promotes its chunks' types to (None: no chunk has labels)."""
    types: dict[str, list[pa.DataType]] = {}
    for struct in chunk_types:
        if pa.types.is_struct(struct):
            for field in struct:
                types.setdefault(field.name, []).append(field.type)
    if not types:
        return None
    return pa.struct([pa.unify_schemas([pa.schema([(name, t)]) for t in types[name]], promote_options="permissive")
                      .field(name) for name in sorted(types)])


def _with_labels(chunk: pa.Table, labels: pa.StructType) -> pa.Table:
    """The chunk's labels as the manifest's struct: a name it lacks as nulls (a chunk without labels
    at all, a null column, likewise: its rows then read {name: None, ...}), each field cast."""
    if chunk.schema.field("labels").type == labels:
        return chunk
    struct = chunk.column("labels").combine_chunks()
    have = {field.name for field in struct.type} if pa.types.is_struct(struct.type) else set()
    children = [struct.field(f.name).cast(f.type) if f.name in have else pa.nulls(len(chunk), f.type) for f in labels]
    mask = struct.is_null() if have else None
    at = chunk.schema.get_field_index("labels")
    return chunk.set_column(at, "labels", pa.StructArray.from_arrays(children, fields=list(labels), mask=mask))


def _row_groups(tables: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The tables' rows regrouped into tables of `rows` rows (the last may be shorter), each one
    chunk; no rows at all give one empty table (the file still has the manifest's schema)."""
    held: list[pa.Table] = []
    count, made = 0, False
    for table in tables:
        held.append(table)
        count += len(table)
        while count >= rows:
            joined = pa.concat_tables(held)
            yield joined.slice(0, rows).combine_chunks()
            held, count, made = [joined.slice(rows)], count - rows, True
    if count or not made:
        yield pa.concat_tables(held).combine_chunks()


def write_manifest(path: Path, rows: Iterable[dict[str, Any]] | ManifestRows) -> None:
    """Write rows (a ManifestRows, or rows as dicts) atomically, as ManifestRows.write() lays them out."""
    if not isinstance(rows, ManifestRows):
        gathered = ManifestRows()
        gathered.extend(rows)
        rows = gathered
    rows.write(path)


def write_table(path: Path, table: pa.Table) -> None:
    """A manifest table written atomically, as every manifest is stored (zstd Parquet)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    atomic_write_bytes(Path(path), buf.getvalue())


def read_manifest(root: Path) -> pa.Table:
    return pq.read_table(Path(root) / schema.MANIFEST_FILE)
