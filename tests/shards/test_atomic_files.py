"""shards/atomic_files.py: a whole-file write is all or nothing, and cleans up after itself."""

from __future__ import annotations

import errno
import os

import pytest

from shards.atomic_files import ATOMIC_TEMP, atomic_write_bytes, atomic_writer, remove_atomic_temps
from shards.writer import is_temporary


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch, failure):
    target = tmp_path / "dataset.json"
    target.write_bytes(b"old")

    def fail(fd):
        raise failure

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(type(failure)):
        atomic_write_bytes(target, b"new card")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["dataset.json"]


def test_temps_that_killed_writers_left_are_removed_and_named_temporary(tmp_path):
    target = tmp_path / "manifest.parquet"
    atomic_write_bytes(target, b"the manifest")
    stale = [tmp_path / f".manifest.parquet{ATOMIC_TEMP}{pid}" for pid in (11, 4242)]
    for path in stale:
        path.write_bytes(b"half")
    other = tmp_path / f".rejects.jsonl{ATOMIC_TEMP}11"
    other.write_bytes(b"another file's temp")
    assert all(is_temporary(p.name) for p in stale) and not is_temporary(target.name)
    remove_atomic_temps(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "manifest.parquet"]
    assert target.read_bytes() == b"the manifest"


def test_a_streamed_write_replaces_the_file_only_when_its_block_ends(tmp_path):
    target = tmp_path / "manifest.parquet"
    target.write_bytes(b"old")
    with atomic_writer(target) as fh:
        fh.write(b"new ")
        assert target.read_bytes() == b"old"
        fh.write(b"manifest")
    assert target.read_bytes() == b"new manifest"
    with pytest.raises(ValueError), atomic_writer(target) as fh:
        fh.write(b"half")
        raise ValueError("the writer failed")
    assert target.read_bytes() == b"new manifest" and [p.name for p in tmp_path.iterdir()] == ["manifest.parquet"]
