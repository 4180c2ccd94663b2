"""run_job with worker processes: a worker that dies (here: SIGKILL, as the OOM killer sends)
turns its image into a reject naming the signal; every other image still reaches the shards, in
the same bytes as a one-process run."""

from __future__ import annotations

import os
import signal

import numpy as np
import pyarrow.parquet as pq

from ingest.pipeline import EncodedSample, IngestJob, UnitOutput, WorkUnit, pixel_moments, run_job
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


def test_a_dead_worker_becomes_a_reject_and_the_rest_is_written(tmp_path):
    summary = run_job(_job(tmp_path / "killed", workers=2, kill=True))
    assert summary.rejects == 1
    reject = (tmp_path / "killed" / schema.REJECTS_FILE).read_text()
    assert "image2.png" in reject and "SIGKILL" in reject
    keys = pq.read_table(tmp_path / "killed" / schema.MANIFEST_FILE).column("key").to_pylist()
    assert keys == [f"tu{i}" for i in range(6) if i != 2]
    run_job(_job(tmp_path / "one", workers=1, kill=False))
    run_job(_job(tmp_path / "two", workers=2, kill=False))
    shard = "train/shard-000000.tar"
    assert (tmp_path / "one" / shard).read_bytes() == (tmp_path / "two" / shard).read_bytes()
