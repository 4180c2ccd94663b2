"""ingest/if_plan_reads.py: `ingest if` planning's whole-image reads. An image that cannot be read
through, or whose read kills its reader, is a reject naming it; the other images are planned."""

from __future__ import annotations

import errno
import json
import os

import pytest

from ingest import if_plan_reads
from ingest.mapped_files import MAP_AT_LEAST, read_source
from ingest.pipeline import run_job
from ingest.sample_data.multiplex_if import make_if_sample
from ingest.sources import multiplex_if
from shards import schema


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return make_if_sample(tmp_path_factory.mktemp("if"), images=3, seed=2, layout="ome", tables="none")


def _rejects(out) -> dict[str, str]:
    return {r["source_path"]: r["reason"] for r in map(json.loads, (out / schema.REJECTS_FILE).read_text().splitlines())}


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_that_cannot_be_read_through_is_a_reject_and_the_rest_is_planned(slides, tmp_path, monkeypatch,
                                                                                 workers):
    names = sorted(p.name for p in slides.root.iterdir() if p.suffix == ".tif")
    bad, fingerprint = names[1], if_plan_reads.files_fingerprint

    def failing_disk(path):
        if path.name == bad:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return fingerprint(path)

    monkeypatch.setattr(if_plan_reads, "files_fingerprint", failing_disk)
    job = multiplex_if.build_job(root=slides.root, out=tmp_path / "out", workers=workers, progress=False)
    assert {u.source_path for u in job.units} == set(names) - {bad}
    summary = run_job(job)
    assert summary.rejects == 1
    assert _rejects(tmp_path / "out") == {bad: "cannot be read: Input/output error"}


def test_an_image_whose_read_kills_its_reader_is_a_reject(slides, tmp_path, monkeypatch):
    """A real SIGBUS: the fingerprint's file cut short under its mapping, as a failing disk does."""
    names = sorted(p.name for p in slides.root.iterdir() if p.suffix == ".tif")
    bad, fingerprint, scratch = names[0], if_plan_reads.files_fingerprint, tmp_path / "scratch"

    def cut_short(path):
        if path.name == bad:
            with open(scratch, "wb") as fh:
                fh.truncate(4 * MAP_AT_LEAST)
            view = read_source(scratch)
            os.truncate(scratch, 0)
            bytes(view[-4096:])
        return fingerprint(path)

    monkeypatch.setattr(if_plan_reads, "files_fingerprint", cut_short)
    job = multiplex_if.build_job(root=slides.root, out=tmp_path / "out", workers=1, progress=False)
    assert {u.source_path for u in job.units} == set(names) - {bad}
    run_job(job)
    reason = _rejects(tmp_path / "out")[bad]
    assert reason.startswith("the worker process died of SIGBUS") and reason.endswith("while reading it for planning, 2 times")
