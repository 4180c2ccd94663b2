"""`shards overlap`: which patients shard sets made by separate ingest jobs share, and in which
splits, on an archive's first export and the whole archive."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ingest.cli import EXIT_OK
from ingest.cli import main as ingest
from shards.cli import main


@pytest.fixture(scope="module")
def sets(archive_exports, tmp_path_factory) -> Path:
    first, whole = archive_exports
    tmp = tmp_path_factory.mktemp("overlap")
    common = ["--no-progress", "--workers", "0", "--id-salt", "a-secret-of-this-test", "--test-fraction", "0.25",
              "--val-fraction", "0.25"]
    assert ingest(["dicom", str(first), "--out", str(tmp / "v1"), *common]) == EXIT_OK
    assert ingest(["dicom", str(whole), "--out", str(tmp / "v2"), *common]) == EXIT_OK
    assert ingest(["dicom", str(whole), "--out", str(tmp / "v2-kept"), *common, "--splits-from", str(tmp / "v1")]) == EXIT_OK
    return tmp


def _split_of(root: Path) -> dict[str, str]:
    table = pq.read_table(root / "manifest.parquet", columns=["patient", "split"])
    return dict(zip(table["patient"].to_pylist(), table["split"].to_pylist()))


def test_sets_split_separately_show_patients_in_different_splits(sets, capsys):
    assert main(["overlap", str(sets / "v1"), str(sets / "v2"), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    a, b = _split_of(sets / "v1"), _split_of(sets / "v2")
    expected = {}
    for patient, split in a.items():
        key = (split, b[patient])
        expected[key] = expected.get(key, 0) + 1
    found = {(r["split"], r["other_split"]): r["patients"] for r in report["different_splits"] + report["same_split"]}
    assert found == expected and any(x != y for x, y in found)
    assert all(r["set"] == str(sets / "v1") and r["other_set"] == str(sets / "v2") for r in report["different_splits"])
    assert main(["overlap", str(sets / "v1"), str(sets / "v2")]) == 1
    said = capsys.readouterr().out
    assert "patients in different splits (split by separate ingest jobs" in said and "--splits-from" in said


def test_a_set_made_with_splits_from_the_first_shares_only_same_splits(sets, capsys):
    assert main(["overlap", str(sets / "v1"), str(sets / "v2-kept"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["different_splits"] == []
    assert sum(r["patients"] for r in report["same_split"]) == len(_split_of(sets / "v1"))


def test_overlap_needs_two_readable_sets(sets, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["overlap", str(sets / "v1")])
    assert exit_.value.code == 2
    assert main(["overlap", str(sets / "v1"), str(tmp_path)]) == 2
    assert f"shards overlap: error: {tmp_path} is not a readable shard set" in capsys.readouterr().err
