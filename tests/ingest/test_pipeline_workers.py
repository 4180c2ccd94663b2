"""run_job with worker processes: a worker that dies (here: SIGKILL, as the OOM killer sends)
turns its image into a reject naming the signal; every other image still reaches the shards, in
the same bytes as a one-process run. A unit that fails while it is committed stops the job."""

from __future__ import annotations

import dataclasses
import os
import signal

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from ingest import pipeline
from ingest.mapped_files import MAP_AT_LEAST, read_source
from ingest.pipeline import EncodedSample, IngestJob, UnitOutput, WorkUnit, run_job
from ingest.pixel_moments import pixel_moments
from shards import codecs, schema


def _process(unit: WorkUnit) -> UnitOutput:
    if unit.payload == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    pixels = np.full((8, 8), int(unit.unit_id[1:]), np.uint16)
    meta = schema.SampleMeta(key=f"t{unit.unit_id}", source="test", patient="p" + unit.unit_id, split="train",
                             crop_kind="whole", crop_box=(0, 0, 8, 8), source_size=(8, 8), height=8, width=8,
                             channels=1, dtype="uint16", labels={}, source_fingerprint="0" * 32)
    member, data = codecs.encode_pixels(pixels)
    return UnitOutput(samples=[EncodedSample(meta, {member: data}, *pixel_moments(pixels))])


def _job(out, workers: int, kill: bool) -> IngestJob:
    units = [WorkUnit(f"u{i}", f"image{i}.png", "kill" if kill and i == 2 else "ok") for i in range(6)]
    return IngestJob(source="test", out=out, units=units, process=_process, parameters={"kill": kill},
                     tool_version="0", workers=workers, progress=False)


@pytest.mark.parametrize("workers", [1, 2])  # one worker is a process too: its death is not the job's
def test_a_dead_worker_becomes_a_reject_and_the_rest_is_written(tmp_path, workers):
    summary = run_job(_job(tmp_path / "killed", workers=workers, kill=True))
    assert summary.rejects == 1
    reject = (tmp_path / "killed" / schema.REJECTS_FILE).read_text()
    assert "image2.png" in reject and "SIGKILL" in reject
    keys = pq.read_table(tmp_path / "killed" / schema.MANIFEST_FILE).column("key").to_pylist()
    assert keys == [f"tu{i}" for i in range(6) if i != 2]
    run_job(_job(tmp_path / "here", workers=0, kill=False))
    run_job(_job(tmp_path / "workers", workers=workers, kill=False))
    shard = "train/shard-000000.tar"
    assert (tmp_path / "here" / shard).read_bytes() == (tmp_path / "workers" / shard).read_bytes()


def _read_a_file_cut_short(unit: WorkUnit) -> UnitOutput:
    """For the unit whose payload names a file: map it (as sources read a large input), and read
    it after it was cut short under the mapping, as a disk failing a page does: a real SIGBUS,
    on every try."""
    if unit.payload != "ok":
        with open(unit.payload, "wb") as fh:
            fh.truncate(4 * MAP_AT_LEAST)  # mapped, not read: ingest.mapped_files
        view = read_source(unit.payload)
        os.truncate(unit.payload, 0)
        bytes(view[-4096:])
    return _process(unit)


def test_a_file_that_kills_its_reader_with_sigbus_is_a_reject_even_with_one_worker(tmp_path):
    mammogram = tmp_path / "cut.dcm"
    units = [WorkUnit(f"u{i}", f"image{i}.dcm", str(mammogram) if i == 1 else "ok") for i in range(3)]
    job = IngestJob(source="test", out=tmp_path / "out", units=units, process=_read_a_file_cut_short, parameters={},
                    tool_version="0", workers=1, progress=False)
    summary = run_job(job)
    assert summary.rejects == 1 and summary.samples == {"train": 2}
    reject = (tmp_path / "out" / schema.REJECTS_FILE).read_text()
    assert "image1.dcm" in reject and "died of SIGBUS (the file cut short while it was read" in reject


def _pid(unit: WorkUnit) -> UnitOutput:
    output = _process(unit)
    output.notes["in_the_writing_process" if os.getpid() == int(unit.payload) else "in_a_worker"] += 1
    return output


def test_workers_0_decodes_in_the_writing_process_and_1_in_a_worker(tmp_path):
    def job(out, workers):
        units = [WorkUnit(f"u{i}", f"image{i}.png", str(os.getpid())) for i in range(3)]
        return IngestJob(source="test", out=out, units=units, process=_pid, parameters={}, tool_version="0",
                         workers=workers, progress=False)

    assert run_job(job(tmp_path / "zero", 0)).counts == {"in_the_writing_process": 3}
    assert run_job(job(tmp_path / "one", 1)).counts == {"in_a_worker": 3}


def _opencv_threads(unit: WorkUnit) -> UnitOutput:
    output = _process(unit)
    output.notes[f"opencv_threads_{cv2.getNumThreads()}"] += 1
    return output


def test_worker_processes_run_opencv_on_one_thread_each(tmp_path):
    """--workers N is one process a core: N workers with OpenCV's default (a thread a core) ran
    N x cores threads. The writing process alone (--workers 0) keeps OpenCV's default, and gets
    its own back. (Set in a forked worker instead, as first written, the workers hung in OpenCV.)"""
    before = cv2.getNumThreads()
    job = dataclasses.replace(_job(tmp_path / "two", workers=2, kill=False), process=_opencv_threads)
    assert run_job(job).counts == {"opencv_threads_1": 6}
    job = dataclasses.replace(_job(tmp_path / "one", workers=0, kill=False), process=_opencv_threads)
    assert run_job(job).counts == {f"opencv_threads_{before}": 6}
    assert cv2.getNumThreads() == before  # the parent's own setting is left alone


def _bad_key_once(unit: WorkUnit) -> UnitOutput:
    """The unit named in the marker file gets a member the shard writer refuses, until the marker is gone."""
    output = _process(unit)
    if os.path.exists(unit.payload) and open(unit.payload).read() == unit.unit_id:
        output.samples[0].members["xyz"] = b""
    return output


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("failing", [3, 5])  # one in the middle, and the last (no next unit to wait on it)
def test_a_unit_that_fails_while_committed_stops_the_job_and_the_rerun_resumes(tmp_path, monkeypatch, failing,
                                                                                threaded):
    """Large units are committed on a thread while the next is decoded: an error there must reach
    the caller (not vanish with the thread), with the units before it logged, and a re-run ends in
    the same bytes as a run that never failed. Small units are committed in line, alike."""
    monkeypatch.setattr(pipeline, "LARGE_UNIT_BYTES", 0 if threaded else 1 << 40)
    marker = tmp_path / "fail"
    marker.write_text(f"u{failing}")
    units = [WorkUnit(f"u{i}", f"image{i}.png", str(marker)) for i in range(6)]
    job = IngestJob(source="test", out=tmp_path / "out", units=units, process=_bad_key_once, parameters={},
                    tool_version="0", workers=1, progress=False)
    with pytest.raises(schema.SchemaError, match="unknown member extension"):
        run_job(job)
    assert not (tmp_path / "out" / schema.CARD_FILE).exists()
    marker.unlink()
    summary = run_job(job)
    assert summary.resumed_units == failing
    clean = IngestJob(source="test", out=tmp_path / "clean", units=units, process=_process, parameters={},
                      tool_version="0", workers=1, progress=False)
    run_job(clean)
    shard = "train/shard-000000.tar"
    assert (tmp_path / "out" / shard).read_bytes() == (tmp_path / "clean" / shard).read_bytes()


@pytest.mark.parametrize("stage", ["write_manifest", "atomic_write_bytes"])  # the manifest; the rejects file
def test_a_run_stopped_after_its_last_unit_finishes_on_the_rerun(tmp_path, monkeypatch, stage):
    """Ctrl-C or SIGTERM after every unit is in the shards, while the manifest or rejects file is
    written: no card, so not finished; the rerun has no unit left to do and writes the same set."""
    run_job(_job(tmp_path / "reference", workers=1, kill=False))
    real = getattr(pipeline, stage)

    def stopped(path, *args, **kwargs):
        if stage == "write_manifest" or path.name == schema.REJECTS_FILE:
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, stage, stopped)
    with pytest.raises(KeyboardInterrupt):
        run_job(_job(tmp_path / "out", workers=2, kill=False))
    assert not (tmp_path / "out" / schema.CARD_FILE).exists()
    monkeypatch.setattr(pipeline, stage, real)
    stale = tmp_path / "out" / f".{schema.MANIFEST_FILE}.tmp-424242"  # as a run killed mid-write leaves it
    stale.write_bytes(b"PAR1 half a manifest")
    summary = run_job(_job(tmp_path / "out", workers=2, kill=False))
    assert not stale.exists()
    assert summary.resumed_units == 6
    for name in (schema.MANIFEST_FILE, schema.REJECTS_FILE, "train/shard-000000.tar"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    reference, card = ((tmp_path / d / schema.CARD_FILE).read_text() for d in ("reference", "out"))
    assert card == reference


def test_a_run_interrupted_under_another_medshards_version_is_not_resumed_by_this_one(tmp_path, monkeypatch):
    """Crops may change between versions: resuming would make one set of two versions' samples."""
    monkeypatch.setattr(pipeline, "write_manifest", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_job(_job(tmp_path / "out", workers=1, kill=False))
    monkeypatch.undo()
    newer = dataclasses.replace(_job(tmp_path / "out", workers=1, kill=False), tool_version="1")
    with pytest.raises(pipeline.IngestError, match=f"{tmp_path / 'out'} holds this job interrupted under medshards 0, "
                                                   "and this is 1: finish it with 0, or pass --overwrite"):
        run_job(newer)
    assert run_job(_job(tmp_path / "out", workers=1, kill=False)).resumed_units == 6  # its own version resumes it
    again = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(pipeline, "write_manifest", _interrupt)
        run_job(_job(again, workers=1, kill=False))
    monkeypatch.undo()
    assert run_job(dataclasses.replace(newer, out=again, overwrite=True)).resumed_units == 0


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt
