"""`ingest SOURCE ... --dry-run`: the plan's counts are what the run then writes, planning rejects
are named with their exit status, the output folder's fate is told, and nothing is written."""

from __future__ import annotations

import dataclasses
import shutil
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ingest.cli import EXIT_OK, EXIT_REJECTS, EXIT_USAGE, _common, build_parser, main
from ingest.pipeline import run_job
from ingest.sample_data.cbis_ddsm import make_cbis_sample
from ingest.sources import cbis
from shards import schema

RUN = ["--workers", "1", "--no-progress", "--size", "64"]


@pytest.fixture(scope="module")
def cbis_root(tmp_path_factory) -> Path:
    return make_cbis_sample(tmp_path_factory.mktemp("plan") / "download", patients=6, seed=5, layout="tcia").root


def dry_run(root: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["cbis", str(root), "--out", str(out), *RUN, "--dry-run", *extra])
    return code, capsys.readouterr().out


def test_the_plan_counts_what_the_run_writes_and_nothing_is_written(cbis_root, tmp_path, capsys):
    out = tmp_path / "shards"
    code, report = dry_run(cbis_root, out, capsys)
    assert code == EXIT_OK and not out.exists()
    assert "nothing written" in report and f"output: {out} (new)" in report

    assert main(["cbis", str(cbis_root), "--out", str(out), *RUN]) == EXIT_OK
    images, patients = defaultdict(set), defaultdict(set)
    for row in pq.read_table(out / schema.MANIFEST_FILE).to_pylist():
        images[row["split"]].add(row["source_fingerprint"])
        patients[row["split"]].add(row["patient"])
    for split in images:
        n, p = len(images[split]), len(patients[split])
        assert f"  {split}: {n} image{'s' * (n != 1)}, {p} patient{'s' * (p != 1)}\n" in report


def test_inputs_planning_rejects_are_named_with_the_rejects_status(cbis_root, tmp_path, capsys):
    root = tmp_path / "download"
    shutil.copytree(cbis_root, root)
    mammogram = sorted(p for p in root.rglob("*.dcm") if "full mammogram" in str(p).lower())[0]
    mammogram.unlink()
    code, report = dry_run(root, tmp_path / "shards", capsys)
    assert code == EXIT_REJECTS and not (tmp_path / "shards").exists()
    assert "rejected at planning: 1 inputs (file not found x1)" in report
    assert "file not found: mammogram neither at the CSV path nor in metadata.csv" in report


def test_the_output_folder_s_fate_is_told(cbis_root, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["cbis", str(cbis_root), "--out", str(out), *RUN]) == EXIT_OK
    card = (out / schema.CARD_FILE).read_bytes()
    code, report = dry_run(cbis_root, out, capsys)
    assert code == EXIT_USAGE and "the run would refuse: " in report and "already holds a finished shard set" in report
    code, report = dry_run(cbis_root, out, capsys, "--overwrite")
    assert code == EXIT_OK and "would be cleared and rebuilt (--overwrite)" in report
    code, report = dry_run(cbis_root, out, capsys, "--seed", "1")  # another job: other splits
    assert code == EXIT_USAGE and "already holds a finished shard set" in report
    assert (out / schema.CARD_FILE).read_bytes() == card  # a dry run touches nothing, --overwrite or not



class _InterruptedAt:
    """The source's own process, interrupted (Ctrl-C) when it reaches unit number `stop`."""

    def __init__(self, process, stop: int):
        self.process, self.stop, self.done = process, stop, 0

    def __call__(self, unit):
        if self.done == self.stop:
            raise KeyboardInterrupt
        self.done += 1
        return self.process(unit)


def test_an_interrupted_run_is_told_how_far_it_got(cbis_root, tmp_path, capsys):
    out = tmp_path / "shards"
    args = build_parser().parse_args(["cbis", str(cbis_root), "--out", str(out), *RUN])
    job = cbis.job_from_args(args, _common(args))  # the job the command line makes
    with pytest.raises(KeyboardInterrupt):
        run_job(dataclasses.replace(job, process=_InterruptedAt(job.process, 2), workers=0))  # Ctrl-C in this process
    code, report = dry_run(cbis_root, out, capsys)
    assert code == EXIT_OK and f"the run would resume after 2 of {len(job.units)} work units" in report
    code, report = dry_run(cbis_root, out, capsys, "--seed", "1")
    assert code == EXIT_USAGE and "holds an interrupted run with other inputs or parameters" in report
    assert main(["cbis", str(cbis_root), "--out", str(out), *RUN]) == EXIT_OK  # the dry runs left it resumable
