"""One ingest at a time per output folder: a second run into a folder another process is writing
is refused by name and touches nothing; the lock goes with the run, and a lock file left by a
killed run neither blocks the next one nor makes the folder look foreign."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.cli import EXIT_OK, EXIT_USAGE, main
from ingest.out_lock import LOCK_FILE, LocksUnsupported, hold_out_lock
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


_WITHOUT_LOCKS = """
import errno, fcntl, os, sys

def flock(fd, operation):  # what Lustre mounted without -o flock answers
    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

fcntl.flock = flock
from ingest.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_filesystem_without_locks_gets_a_warning_and_the_run(cbis_root, tmp_path, monkeypatch, capsys):
    """Lustre mounted without `-o flock` answers flock with ENOSYS (an NFS server without a lock
    manager, ENOLCK): the run goes on, unguarded, and says so in one line; any other error of
    the call is the folder's (an unusable output), as before."""
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", _WITHOUT_LOCKS, "cbis", str(cbis_root), "--out", str(out), *RUN],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert run.returncode == EXIT_OK, run.stderr
    assert run.stderr.splitlines()[0] == (f"ingest cbis: warning: {out}'s filesystem takes no file locks (Function "
                                          "not implemented): nothing stops a second ingest from writing this folder "
                                          "at the same time, so run one at a time")
    assert (out / "dataset.json").exists() and not (out / LOCK_FILE).exists()
    reference = tmp_path / "reference"
    assert main(["cbis", str(cbis_root), "--out", str(reference), *RUN]) == EXIT_OK
    assert contents(out) == contents(reference)

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(LocksUnsupported, match="No locks available"):
        assert main(["cbis", str(cbis_root), "--out", str(tmp_path / "enolck"), *RUN]) == EXIT_OK
    assert main(["cbis", str(cbis_root), "--out", str(tmp_path / "dry"), *RUN, "--dry-run"]) == EXIT_OK

    def broken(fd, operation):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(fcntl, "flock", broken)
    capsys.readouterr()
    assert main(["cbis", str(cbis_root), "--out", str(tmp_path / "eio"), *RUN]) == 1
    assert "Input/output error" in capsys.readouterr().err
