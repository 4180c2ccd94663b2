"""One ingest at a time per output folder: a second run into a folder another process is writing
is refused by name and touches nothing; the lock goes with the run, and a lock file left by a
killed run neither blocks the next one nor makes the folder look foreign."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest

from ingest.cli import EXIT_OK, EXIT_USAGE, main
from ingest.out_lock import LOCK_FILE, hold_out_lock
from ingest.sample_data.cbis_ddsm import make_cbis_sample

RUN = ["--workers", "1", "--no-progress", "--size", "64"]


@pytest.fixture(scope="module")
def cbis_root(tmp_path_factory) -> Path:
    return make_cbis_sample(tmp_path_factory.mktemp("lock") / "download", patients=4, seed=2, layout="tcia").root


def contents(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def _hold(out: Path, held, release) -> None:
    with hold_out_lock(out):
        held.set()
        release.wait(60)


def test_a_second_ingest_into_a_folder_being_written_is_refused_and_changes_nothing(cbis_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["cbis", str(cbis_root), "--out", str(out), *RUN]) == EXIT_OK
    capsys.readouterr()
    before = contents(out)
    context = multiprocessing.get_context("spawn")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(out, held, release))  # another process, as another run would be
    holder.start()
    try:
        assert held.wait(60)
        assert main(["cbis", str(cbis_root), "--out", str(out), *RUN, "--overwrite"]) == EXIT_USAGE
        said = capsys.readouterr().err
        assert f"another ingest (pid {holder.pid}) is writing this folder" in said
        assert contents(out) == before  # --overwrite deleted nothing
        assert main(["cbis", str(cbis_root), "--out", str(out), *RUN, "--dry-run"]) == EXIT_USAGE  # and says so
        assert f"the run would refuse: {out}: another ingest (pid {holder.pid})" in capsys.readouterr().out
    finally:
        release.set()
        holder.join(60)
    assert main(["cbis", str(cbis_root), "--out", str(out), *RUN, "--overwrite", "--dry-run"]) == EXIT_OK
    assert main(["cbis", str(cbis_root), "--out", str(out), *RUN, "--overwrite"]) == EXIT_OK
    assert contents(out) == before and not (out / LOCK_FILE).exists()


def test_a_lock_file_left_by_a_killed_run_does_not_block_the_next(cbis_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(f"{os.getpid() + 100000}\n")  # its holder is gone: the kernel freed the lock
    assert main(["cbis", str(cbis_root), "--out", str(out), *RUN]) == EXIT_OK  # not "not empty ... no medshards run"
    assert (out / "dataset.json").is_file() and not (out / LOCK_FILE).exists()
