"""A job's work units on disk, sorted by unit id, for plans too large to hold as Python objects.

A hospital archive is millions of files. Held as a list, each planned file costs its WorkUnit
(~0.5 KB) beside the walk's own record of it (~0.9 KB), a planning process of gigabytes for
what is a few hundred bytes of text a file. Here the planner adds rows (unit id first) as it
walks; every RUN_ROWS of them are sorted and written as a run (Arrow IPC, LZ4-compressed), and
`finish` merges the runs, in unit id order, into one table of BATCH_ROWS-row batches. A
UnitTable is a Sequence of WorkUnits read from that file one batch at a time, so what the
planning and writing processes hold is a run being filled and a batch being read, however
large the archive:

- indexable (a worker forked from the writing process reads the unit whose number it was sent;
  each process opens the file for itself), sliceable (a resumed job's pending units), iterable;
- `unit_ids()` reads the id column alone (the job's fingerprint, its resume check);
- pickled, it is its file's path and range (a spawned worker opens the file itself);
- its folder (tempfile's, so $TMPDIR: set it to a roomy disk for a very large archive) is removed
  when the table is no longer used, or at exit, by the process that made it. Rows hold no raw
  identifier: only what a unit carries (pseudonyms, paths).

`make_unit(row)` (module-level, so a spawned worker can unpickle it) turns a final row, a tuple
in the schema's column order, into a WorkUnit.
"""

from __future__ import annotations

import heapq
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from ingest.pipeline import WorkUnit

RUN_ROWS = 8192  # rows sorted in memory, then written, during planning (~4 MB of them)
BATCH_ROWS = 1024  # rows a read of the unit table brings into memory
RUN_BATCH_ROWS = 256  # rows a merge holds of each run it reads
MERGE_FAN = 32  # runs of one size merged into one (so a merge holds at most 32 x 256 rows, and as many files open)
_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")

Row = tuple[Any, ...]


class DuplicateUnitId(ValueError):
    """Two rows with one unit id: a bug in the source that made them."""


class _Folder:
    """A temporary folder, removed by the process that made it once nothing refers to it."""

    def __init__(self, prefix: str):
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self._finalizer = weakref.finalize(self, _remove, str(self.path), os.getpid())

    def __reduce__(self):
        return _Borrowed, (str(self.path),)


class _Borrowed:
    """A folder another process made (a spawned worker's view of it): never removed here."""

    def __init__(self, path: str):
        self.path = Path(path)


def _remove(path: str, owner: int) -> None:
    if os.getpid() == owner:  # not a forked worker that inherited the finalizer
        shutil.rmtree(path, ignore_errors=True)


def _write(path: Path, schema: pa.Schema, rows: Iterator[Row], batch_rows: int | None = None) -> int:
    """Rows written as batch_rows-row batches (BATCH_ROWS, read at run time); returns how many."""
    batch_rows = batch_rows or BATCH_ROWS
    count = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema, options=_OPTIONS) as writer:
        batch: list[Row] = []
        for row in rows:
            batch.append(row)
            if len(batch) == batch_rows:
                writer.write_batch(_batch(schema, batch))
                count += len(batch)
                batch = []
        if batch:
            writer.write_batch(_batch(schema, batch))
            count += len(batch)
    return count


def _spill(path: Path, schema: pa.Schema, rows: Iterator[Row], batch_rows: int | None = None) -> int:
    """_write, and a failure said as what it is: a full $TMPDIR (pyarrow's message names no folder)."""
    try:
        return _write(path, schema, rows, batch_rows)
    except OSError as exc:
        raise OSError(exc.errno, f"writing the plan's rows failed ({exc}); they wait in $TMPDIR until the job "
                                 "ends: set TMPDIR to a folder with room", str(path)) from exc


def _batch(schema: pa.Schema, rows: list[Row]) -> pa.RecordBatch:
    return pa.record_batch([pa.array(column, type=f.type) for column, f in zip(zip(*rows), schema)], schema=schema)


def _read_rows(path: Path) -> Iterator[Row]:
    with pa.OSFile(str(path), "rb") as source:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            yield from zip(*(column.to_pylist() for column in reader.get_batch(i).columns))


class UnitTableBuilder:
    """Rows added in any order; finish() gives the UnitTable sorted by unit id (a row's first column)."""

    def __init__(self, run_schema: pa.Schema, *, prefix: str = "medshards-plan-"):
        self.run_schema = run_schema
        self.folder = _Folder(prefix)
        self._rows: list[Row] = []
        self._runs: list[tuple[int, Path]] = []  # (level: a run of level L merged MERGE_FAN ** L, file)
        self._written = 0

    def add(self, row: Row) -> None:
        self._rows.append(row)
        if len(self._rows) >= RUN_ROWS:
            self._spill()

    def _spill(self) -> None:
        """The rows in memory sorted into a run; then, while the last MERGE_FAN runs are of one
        level, they become one run of the next (each row is merged log_FAN(rows) times in all)."""
        self._rows.sort(key=_unit_id)
        self._runs.append((0, self._run_file(iter(self._rows))))
        self._rows = []
        while len(self._runs) >= MERGE_FAN and len({level for level, _ in self._runs[-MERGE_FAN:]}) == 1:
            merging = self._runs[-MERGE_FAN:]
            merged = self._run_file(heapq.merge(*(_read_rows(path) for _, path in merging), key=_unit_id))
            for _, path in merging:
                path.unlink()
            self._runs[-MERGE_FAN:] = [(merging[0][0] + 1, merged)]

    def _run_file(self, rows: Iterator[Row]) -> Path:
        path = self.folder.path / f"run-{self._written:06d}.arrow"
        self._written += 1
        _spill(path, self.run_schema, rows, RUN_BATCH_ROWS)
        return path

    def sorted_rows(self) -> Iterator[Row]:
        """Every row added, in unit id order (runs merged); DuplicateUnitId on a repeated id."""
        self._rows.sort(key=_unit_id)
        runs = [_read_rows(path) for _, path in self._runs]
        previous = None
        for row in heapq.merge(*runs, iter(self._rows), key=_unit_id):
            if row[0] == previous:
                raise DuplicateUnitId(f"two work units with id {previous!r}; this is a bug in the source")
            previous = row[0]
            yield row

    def finish(self, schema: pa.Schema, make_unit: Callable[[Row], WorkUnit],
               transform: Callable[[Row], Row] | None = None) -> UnitTable:
        """The table of every row (transform(row) when given, in `schema`), in unit id order; the
        runs are removed once merged into it."""
        rows = self.sorted_rows()
        path = self.folder.path / "units.arrow"
        count = _spill(path, schema, map(transform, rows) if transform else rows)
        for _, run in self._runs:
            run.unlink()
        self._runs, self._rows = [], []
        return UnitTable(self.folder, path, make_unit, 0, count)


def _unit_id(row: Row) -> str:
    return row[0]


class UnitTable(Sequence):
    """WorkUnits [start, stop) of a unit file, read a batch at a time (see the module docstring)."""

    def __init__(self, folder: _Folder | _Borrowed, path: Path, make_unit: Callable[[Row], WorkUnit],
                 start: int, stop: int):
        self.folder, self.path, self.make_unit = folder, path, make_unit
        self.start, self.stop = start, stop
        self._reader: tuple[int, Any, pa.ipc.RecordBatchFileReader] | None = None  # (pid, file, reader)
        self._cached: tuple[int, list[list[Any]]] | None = None  # (batch number, its columns)

    def __reduce__(self):
        return UnitTable, (self.folder, self.path, self.make_unit, self.start, self.stop)

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("a UnitTable slices with step 1 only")
            return UnitTable(self.folder, self.path, self.make_unit, self.start + start, self.start + max(start, stop))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"unit {index} of {len(self)}")
        number, at = divmod(self.start + index, BATCH_ROWS)
        columns = self._columns(number)
        return self.make_unit(tuple(column[at] for column in columns))

    def __iter__(self) -> Iterator[WorkUnit]:
        for row in self._rows():
            yield self.make_unit(row)

    def unit_ids(self) -> Iterator[str]:
        """The units' ids in order, read from their column alone."""
        for number, first, last in self._spans():
            yield from self._open().get_batch(number).column(0).to_pylist()[first:last]

    def _rows(self) -> Iterator[Row]:
        for number, first, last in self._spans():
            yield from list(zip(*self._columns(number)))[first:last]

    def _spans(self) -> Iterator[tuple[int, int, int]]:
        """(batch number, first row, end row) of each batch the range covers."""
        at = self.start
        while at < self.stop:
            number, first = divmod(at, BATCH_ROWS)
            last = min(BATCH_ROWS, first + self.stop - at)
            yield number, first, last
            at += last - first

    def _columns(self, number: int) -> list[list[Any]]:
        if self._cached is None or self._cached[0] != number:
            self._cached = (number, [column.to_pylist() for column in self._open().get_batch(number).columns])
        return self._cached[1]

    def _open(self) -> pa.ipc.RecordBatchFileReader:
        """This process's reader of the file (a forked worker opens its own: a shared file offset
        would interleave two processes' reads)."""
        if self._reader is None or self._reader[0] != os.getpid():
            source = pa.OSFile(str(self.path), "rb")
            self._reader = (os.getpid(), source, pa.ipc.open_file(source))
            self._cached = None
        return self._reader[2]
