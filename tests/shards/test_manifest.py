"""shards.manifest: rows gathered in Arrow chunks, spilled to disk, give the manifest one table of the
same rows gives; row groups are cut by row count, never by chunk."""

from __future__ import annotations

import errno
import io

import pyarrow.parquet as pq
import pytest

from shards import manifest, schema
from shards.card import RowCounts
from shards.manifest import ManifestRows, read_manifest, write_manifest


def row(i: int, labels: dict, *, spans: bool = True, split: str = "train") -> dict:
    out = {
        "key": f"s{i:05d}", "shard": f"{split}/shard-000000.tar", "split": split, "official_split": None,
        "source": "toy", "patient": f"p{i % 7}", "laterality": "L" if i % 2 else None, "view": None,
        "crop_kind": "whole" if i % 3 else "random", "crop_box": [0, 0, 10 + i, 10 + i], "height": 32,
        "width": 32, "channels": 1, "dtype": "uint16", "labels": labels, "source_fingerprint": f"{i:032x}",
    }
    if spans:
        out.update(pixels_offset=512 * i, pixels_size=100 + i, json_offset=512 * i + 256, json_size=50)
    return out


def gathered(rows: list[dict], chunk_rows: int) -> ManifestRows:
    out = ManifestRows(chunk_rows=chunk_rows)
    out.extend(rows)
    return out


def parquet_bytes(table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def mixed_rows() -> list[dict]:
    """Label names and types that differ from chunk to chunk (chunks of 4): only 'b', then
    'a' as int with a list-valued 'c', then no labels at all, then 'a' as float."""
    rows = [row(i, {"b": "x" if i % 2 else None}) for i in range(4)]
    rows += [row(i, {"a": i, "c": ["m", "n"][: i % 3]}) for i in range(4, 8)]
    rows += [row(i, {}) for i in range(8, 12)]
    rows += [row(i, {"a": i + 0.5}, split="test") for i in range(12, 14)]
    return rows


def test_chunks_with_other_labels_give_the_one_table_manifest():
    rows = mixed_rows()
    whole = gathered(rows, chunk_rows=1000).table()
    chunked = gathered(rows, chunk_rows=4).table()
    assert chunked.schema.field("labels").type.names == ["a", "b", "c"]
    assert chunked.equals(whole)
    assert parquet_bytes(chunked) == parquet_bytes(whole)
    read = chunked.to_pylist()
    assert [r["key"] for r in read] == [r["key"] for r in rows]
    assert read[1]["labels"] == {"a": None, "b": "x", "c": None}
    assert read[4]["labels"] == {"a": 4.0, "b": None, "c": ["m"]}  # int, promoted as a float row follows
    assert read[9]["labels"] == {"a": None, "b": None, "c": None}  # a row without labels: every name null
    assert read[13]["labels"]["a"] == 13.5


def test_span_columns_go_when_a_later_row_lacks_them(tmp_path):
    rows = [row(i, {"a": i}) for i in range(6)] + [row(6, {"a": 6}, spans=False)]
    chunked = gathered(rows, chunk_rows=3).table()
    assert not schema.has_member_spans(chunked.column_names)
    assert chunked.equals(gathered(rows, chunk_rows=100).table())
    with_spans = gathered(rows[:6], chunk_rows=3).table()
    assert with_spans.column_names == list(schema.MANIFEST_COLUMNS + schema.MEMBER_SPAN_COLUMNS)
    assert with_spans.column("pixels_offset").to_pylist() == [512 * i for i in range(6)]


def test_write_manifest_takes_rows_or_gathered_rows_alike(tmp_path):
    rows = mixed_rows()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_manifest(tmp_path / "a" / schema.MANIFEST_FILE, rows)
    write_manifest(tmp_path / "b" / schema.MANIFEST_FILE, gathered(rows, chunk_rows=3))
    assert (tmp_path / "a" / schema.MANIFEST_FILE).read_bytes() == (tmp_path / "b" / schema.MANIFEST_FILE).read_bytes()
    assert len(read_manifest(tmp_path / "a")) == len(rows)


def test_no_rows_give_an_empty_manifest(tmp_path):
    table = ManifestRows().table()
    assert len(table) == 0 and table.column_names[: len(schema.MANIFEST_COLUMNS)] == list(schema.MANIFEST_COLUMNS)
    write_manifest(tmp_path / schema.MANIFEST_FILE, [])
    assert len(read_manifest(tmp_path)) == 0


def test_row_counts_count_what_the_rows_say():
    rows = mixed_rows()
    counts = RowCounts.of(rows)
    expected: dict = {}
    for r in rows:
        for name, value in r["labels"].items():
            for v in value if isinstance(value, list) else [value]:
                if v is not None:
                    by_value = expected.setdefault(r["split"], {}).setdefault(name, {})
                    by_value[str(v)] = by_value.get(str(v), 0) + 1
    assert counts.label_counts() == expected
    assert counts.label_counts()["train"]["c"] == {"m": 3, "n": 1}
    assert dict(counts.samples) == {"train": 12, "test": 2}
    assert {s: len(p) for s, p in counts.patients.items()} == {"train": 7, "test": 2}
    assert counts.crop_kinds["train"] == {"whole": 8, "random": 4}


def test_row_groups_are_bounded_by_row_count_whatever_the_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "ROW_GROUP_ROWS", 5)
    rows = mixed_rows()  # 14 rows: groups of 5, 5, 4
    written = []
    for chunk_rows in (3, 4, 100):
        path = tmp_path / f"{chunk_rows}.parquet"
        write_manifest(path, gathered(rows, chunk_rows=chunk_rows))
        written.append(path.read_bytes())
    assert written[0] == written[1] == written[2]
    meta = pq.ParquetFile(tmp_path / "3.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [5, 5, 4]
    assert pq.read_table(tmp_path / "3.parquet").equals(gathered(rows, chunk_rows=100).table())


def test_a_manifest_of_one_row_group_is_what_write_table_makes(tmp_path):
    rows = mixed_rows()
    write_manifest(tmp_path / schema.MANIFEST_FILE, gathered(rows, chunk_rows=4))
    assert (tmp_path / schema.MANIFEST_FILE).read_bytes() == parquet_bytes(gathered(rows, chunk_rows=1000).table())


def test_chunks_wait_on_disk_not_in_memory():
    rows = ManifestRows(chunk_rows=4)
    rows.extend(mixed_rows())
    assert len(rows._pending) == 14 % 4
    assert rows._spill.seek(0, io.SEEK_END) > 0  # the three full chunks, as Arrow streams
    assert [len(t) for t in rows._tables()] == [4, 4, 4, 2]


def test_a_spill_that_cannot_be_written_names_tmpdir_not_the_output():
    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    rows = ManifestRows(chunk_rows=2)
    rows._spill = Full()
    with pytest.raises(OSError) as raised:
        rows.extend(mixed_rows())
    assert raised.value.errno == errno.ENOSPC and "$TMPDIR" in raised.value.filename
