"""ingest.unit_table: rows spilled in sorted runs, merged level by level, read back as WorkUnits in
unit id order a batch at a time, in this process, a forked worker and a spawned one; its folder
goes when the table does."""

from __future__ import annotations

import errno
import gc
import pickle
import random

import pyarrow as pa
import pytest

from ingest import unit_table
from ingest.pipeline import WorkUnit
from ingest.unit_ids import job_fingerprint, repeats_an_id
from ingest.unit_pool import map_units

SCHEMA = pa.schema([("unit_id", pa.string()), ("path", pa.binary()), ("frame", pa.int64())])


def make_unit(row: tuple) -> WorkUnit:
    unit_id, path, frame = row
    return WorkUnit(unit_id, path.decode("utf-8", "surrogateescape"), frame)


def _rows(n: int, seed: int = 0) -> list[tuple]:
    ids = [f"{i:08x}" for i in random.Random(seed).sample(range(10 * n), n)]
    return [(unit_id, f"folder/{unit_id}.dcm".encode(), None if i % 7 == 0 else i) for i, unit_id in enumerate(ids)]


@pytest.fixture
def small_runs(monkeypatch):
    """Runs of 7 rows, merged 3 at a time, read 5 rows a batch: three merge levels for 200 rows."""
    monkeypatch.setattr(unit_table, "RUN_ROWS", 7)
    monkeypatch.setattr(unit_table, "MERGE_FAN", 3)
    monkeypatch.setattr(unit_table, "RUN_BATCH_ROWS", 2)
    monkeypatch.setattr(unit_table, "BATCH_ROWS", 5)


def _table(rows: list[tuple]) -> unit_table.UnitTable:
    builder = unit_table.UnitTableBuilder(SCHEMA)
    for row in rows:
        builder.add(row)
    return builder.finish(SCHEMA, make_unit)


def test_units_come_back_in_id_order_through_merged_runs(small_runs):
    rows = _rows(200)
    builder = unit_table.UnitTableBuilder(SCHEMA)
    levels = set()
    for row in rows:
        builder.add(row)
        levels |= {level for level, _ in builder._runs}
    assert max(levels) >= 2, "the fixture should make runs merged more than once"
    table = builder.finish(SCHEMA, make_unit)
    expected = [make_unit(row) for row in sorted(rows)]
    assert list(table) == expected
    assert list(table.unit_ids()) == [u.unit_id for u in expected]
    assert [p.name for p in table.folder.path.iterdir()] == ["units.arrow"]  # the runs are gone


def test_indexing_and_slicing_cross_batches(small_runs):
    rows = sorted(_rows(23))
    table = _table(rows)
    assert len(table) == 23
    assert table[0] == make_unit(rows[0]) and table[-1] == make_unit(rows[-1]) and table[12] == make_unit(rows[12])
    with pytest.raises(IndexError):
        table[23]
    pending = table[4:]
    assert len(pending) == 19 and list(pending) == [make_unit(r) for r in rows[4:]]
    assert list(pending[3:9].unit_ids()) == [r[0] for r in rows[7:13]]
    assert pending[3:9][-1] == make_unit(rows[12])
    assert len(table[30:]) == 0 and list(table[30:]) == []


def test_a_repeated_id_is_refused(small_runs):
    rows = _rows(30)
    builder = unit_table.UnitTableBuilder(SCHEMA)
    for row in [*rows, rows[17]]:
        builder.add(row)
    with pytest.raises(unit_table.DuplicateUnitId, match=rows[17][0]):
        builder.finish(SCHEMA, make_unit)


def test_an_empty_table():
    table = unit_table.UnitTableBuilder(SCHEMA).finish(SCHEMA, make_unit)
    assert len(table) == 0 and not table and list(table) == []


def test_transform_gives_the_final_rows(small_runs):
    rows = _rows(20)
    builder = unit_table.UnitTableBuilder(SCHEMA)
    for row in rows:
        builder.add(row)
    table = builder.finish(SCHEMA, make_unit, lambda row: (row[0], row[1].upper(), 1))
    assert [u.source_path for u in table] == [r[1].decode().upper() for r in sorted(rows)]
    assert {u.payload for u in table} == {1}


def test_forked_and_spawned_workers_read_the_units(small_runs):
    rows = _rows(31)
    table = _table(rows)[2:]
    expected = [u.source_path for u in table]
    for start_method in ("fork", "spawn"):
        assert list(map_units(table, _source_path, workers=2, died=_died, start_method=start_method)) == expected


def _source_path(unit: WorkUnit) -> str:
    return unit.source_path


def _died(unit: WorkUnit, reason: str) -> str:
    return reason


def test_the_folder_goes_with_the_table_and_not_with_a_pickled_copy():
    table = _table(_rows(10))
    folder = table.folder.path
    copy = pickle.loads(pickle.dumps(table))
    assert list(copy) == list(table)
    del copy
    gc.collect()
    assert folder.is_dir()
    del table
    gc.collect()
    assert not folder.exists()


def test_fingerprint_and_repeat_check_read_a_table_as_they_read_a_list(small_runs):
    table = _table(_rows(40))
    units = list(table)
    parameters = {"root": "/archive", "size": 224}
    assert job_fingerprint(parameters, table) == job_fingerprint(parameters, units)
    assert job_fingerprint(parameters, table) != job_fingerprint({**parameters, "size": 64}, table)
    assert not repeats_an_id(table)
    assert not repeats_an_id(units[::-1])  # descending: the set is used
    assert repeats_an_id([*units, units[3]])


def test_fingerprint_is_the_digest_of_the_whole_json_resumable_runs_recorded():
    import hashlib
    import json
    units = [WorkUnit(f"u{i}\"x", "p", None) for i in range(3)]
    parameters = {"b": [1, 2], "a": "é"}
    for some in (units, []):
        blob = json.dumps({"parameters": parameters, "units": [u.unit_id for u in some]}, sort_keys=True)
        assert job_fingerprint(parameters, some) == hashlib.sha256(blob.encode()).hexdigest()


def test_a_full_tmpdir_is_said_as_such(small_runs, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    builder = unit_table.UnitTableBuilder(SCHEMA)
    monkeypatch.setattr(unit_table, "_write", full)
    with pytest.raises(OSError, match=r"plan's rows failed .*set TMPDIR to a folder with room") as raised:
        for row in _rows(10):
            builder.add(row)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename.startswith(str(builder.folder.path))
