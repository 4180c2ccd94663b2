"""A ShardWriter resumed from a checkpoint, after a process that kept writing past it was killed,
ends with the same shard files (bytes, records) as one that was never interrupted, wherever the
kill fell: inside a shard, just after a shard was finished and renamed, or before any shard."""

from __future__ import annotations

import errno
import json
import os

import pytest

from shards import writer as writer_module
from shards.writer import PARTIAL_SUFFIX, ShardWriter, fold_checkpoint

SAMPLES = 7
MAX_SAMPLES = 2


def _sample(i: int) -> dict:
    return {"__key__": f"s{i:03d}", "png": bytes([i]) * (300 + 97 * i), "json": json.dumps({"i": i}).encode()}


def _files(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "train").iterdir())}


@pytest.fixture
def uninterrupted(tmp_path):
    root = tmp_path / "reference"
    with ShardWriter(root, "train", max_samples=MAX_SAMPLES) as writer:
        for i in range(SAMPLES):
            writer.write(_sample(i))
    return _files(root), writer.records


def _killed(root, done: int, beyond: int) -> list[dict]:
    """A writer's checkpoints after each of samples 0..done-1; then `beyond` more samples are
    written and reach the file, as a killed process's would, and the writer stops unfinished."""
    writer = ShardWriter(root, "train", max_samples=MAX_SAMPLES)
    states = [writer.checkpoint()]
    for i in range(done):
        writer.write(_sample(i))
        states.append(writer.checkpoint())
    for i in range(done, min(done + beyond, SAMPLES)):
        writer.write(_sample(i))  # lost work: past the checkpoint
    writer.checkpoint()
    writer.suspend()
    return states


# checkpoint after sample `done - 1`; the killed process then wrote `beyond` more samples
# hash_batch: bytes a batch for the hashing thread (tiny: the resumed shard's bytes, re-read and
# hashed again, cross batches; the default: they are handed over at the end)
# folded: the checkpoints folded into one (shards.writer.fold_checkpoint), as a resumed ingest passes them
@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("hash_batch", [200, writer_module.HASH_BATCH_BYTES])
@pytest.mark.parametrize(("done", "beyond"), [(0, 3), (1, 1), (2, 1), (2, 3), (4, 0), (5, 2), (7, 0)])
def test_resumed_writer_ends_byte_identical(tmp_path, uninterrupted, done, beyond, hash_batch, folded, monkeypatch):
    monkeypatch.setattr(writer_module, "HASH_BATCH_BYTES", hash_batch)
    root = tmp_path / "killed"
    states = json.loads(json.dumps(_killed(root, done, beyond)))
    if folded:
        one = None
        for state in states:
            one = fold_checkpoint(one, state)
        states = [one]
    resumed = ShardWriter(root, "train", max_samples=MAX_SAMPLES, resume=states)
    for i in range(done, SAMPLES):
        resumed.write(_sample(i))
    records = resumed.close()
    files, reference_records = uninterrupted
    assert _files(root) == files
    assert records == reference_records


def test_a_shard_finished_after_the_checkpoint_is_taken_back(tmp_path, uninterrupted):
    root = tmp_path / "killed"
    writer = ShardWriter(root, "train", max_samples=MAX_SAMPLES)
    for i in range(2):
        writer.write(_sample(i))
    states = [writer.checkpoint()]  # shard 0 full, still in progress
    writer.write(_sample(2))  # finishes and renames shard 0, opens shard 1
    writer.checkpoint()
    writer.suspend()
    assert list((root / "train").glob(f"*{PARTIAL_SUFFIX}"))  # shard 1 in progress
    assert (root / "train" / "shard-000000.tar").is_file()

    resumed = ShardWriter(root, "train", max_samples=MAX_SAMPLES, resume=states)
    assert sorted(p.name for p in (root / "train").iterdir()) == [f".shard-000000.tar{PARTIAL_SUFFIX}"]
    for i in range(2, SAMPLES):
        resumed.write(_sample(i))
    resumed.close()
    assert _files(root) == uninterrupted[0]


def test_resume_refuses_when_a_finished_shard_or_the_partial_is_gone(tmp_path):
    root = tmp_path / "killed"
    writer = ShardWriter(root, "train", max_samples=MAX_SAMPLES)
    states = []
    for i in range(3):
        writer.write(_sample(i))
        states.append(writer.checkpoint())
    writer.suspend()
    partial = root / "train" / f".shard-000001.tar{PARTIAL_SUFFIX}"
    partial.rename(partial.with_name("elsewhere"))
    with pytest.raises(FileNotFoundError, match="shard in progress"):
        ShardWriter(root, "train", max_samples=MAX_SAMPLES, resume=states)
    (root / "train" / "shard-000000.tar").unlink()
    with pytest.raises(FileNotFoundError, match="finished shard"):
        ShardWriter(root, "train", max_samples=MAX_SAMPLES, resume=states)


def test_background_datasync_leaves_the_same_shards(tmp_path, uninterrupted, monkeypatch):
    """A shard in progress is fdatasynced on a thread as it grows; the files are unchanged by it."""
    synced = []

    def datasync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_datasync(fd)

    real_datasync = os.fdatasync
    monkeypatch.setattr(writer_module, "DATASYNC_BYTES", 512)
    monkeypatch.setattr(os, "fdatasync", datasync)
    root = tmp_path / "synced"
    with ShardWriter(root, "train", max_samples=MAX_SAMPLES) as writer:
        for i in range(SAMPLES):
            writer.write(_sample(i))
            writer.checkpoint()
    assert _files(root) == uninterrupted[0] and writer.records == uninterrupted[1]
    assert synced and all(path.endswith(PARTIAL_SUFFIX) for path in synced)


def test_a_failed_background_datasync_fails_the_shard(tmp_path, monkeypatch):
    """An I/O error of the background fdatasync is raised where the shard would be finished, and
    the shard is not published."""

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer_module, "DATASYNC_BYTES", 512)
    monkeypatch.setattr(os, "fdatasync", failing)
    writer = ShardWriter(tmp_path, "train", max_samples=MAX_SAMPLES)
    writer.write(_sample(5))
    writer.checkpoint()
    with pytest.raises(OSError, match="Input/output error"):
        writer.close()
    assert not (tmp_path / "train" / "shard-000000.tar").exists()

