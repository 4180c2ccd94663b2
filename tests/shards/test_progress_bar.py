"""Progress on stderr: tqdm's bar on a terminal; in a log, a line of its own now and then, and
nothing for work that ends before the first."""

from __future__ import annotations

import io
import time

import pytest

from shards.progress_bar import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_log_each_redraw_is_a_line_of_its_own():
    log = io.StringIO()
    with progress_bar(total=30, desc="ingest cbis", unit="img", file=log, every_s=0.05) as bar:
        for _ in range(30):
            time.sleep(0.01)
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) >= 2 and all(line.startswith("ingest cbis: ") for line in lines)
    assert "30/30" in lines[-1] and lines[-1].isascii()
    counts = [int(line.split("|")[2].split("/")[0]) for line in lines]
    assert counts == sorted(counts) and counts[0] < 30  # the count as it went, not the end alone


def test_in_a_log_work_shorter_than_the_interval_prints_nothing():
    log = io.StringIO()
    for _ in progress_bar(range(1000), desc="verify", unit="shard", file=log, every_s=60):
        pass
    assert log.getvalue() == ""


def test_on_a_terminal_it_is_tqdm_redrawn_in_place_and_off_when_disabled():
    terminal = _Terminal()
    for _ in progress_bar(range(5), desc="stats", unit="sample", file=terminal):
        pass
    assert "\r" in terminal.getvalue() and "5/5" in terminal.getvalue()
    quiet = _Terminal()
    for _ in progress_bar(range(5), desc="stats", unit="sample", file=quiet, enabled=False):
        pass
    assert quiet.getvalue() == ""


def test_a_file_is_a_log(tmp_path):
    with open(tmp_path / "job.err", "w") as log:
        with progress_bar(total=3, desc="ingest", unit="img", file=log, every_s=0.0) as bar:
            bar.update(3)
    text = (tmp_path / "job.err").read_text()
    assert "3/3" in text and "\r" not in text


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MEDSHARDS_PROGRESS_EVERY_S", "0")
    log = io.StringIO()
    for _ in progress_bar(range(3), desc="index", unit="shard", file=log):
        pass
    assert "3/3" in log.getvalue().splitlines()[-1]
    monkeypatch.setenv("MEDSHARDS_PROGRESS_EVERY_S", "soon")
    with pytest.raises(ValueError, match="MEDSHARDS_PROGRESS_EVERY_S='soon': expected seconds"):
        progress_bar(range(3), desc="index", unit="shard", file=log)
