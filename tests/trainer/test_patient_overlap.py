"""A run that mixes shard sets split separately is told which of their held-out patients it
trains on (trainer.patient_overlap), before it starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.cli import EXIT_OK
from ingest.cli import main as ingest
from trainer.config import load_config
from trainer.patient_overlap import held_out_patients_in_training

TINY = Path(__file__).resolve().parents[2] / "trainer" / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def exports(archive_exports, tmp_path_factory) -> Path:
    """An archive's first export (8 patients) and its second (all 20) made into sets twice:
    split afresh, and split as the first (--splits-from)."""
    first, whole = archive_exports
    tmp = tmp_path_factory.mktemp("exports")
    common = ["--no-progress", "--workers", "0", "--id-salt", "a-secret-of-this-test", "--size", "64",
              "--test-fraction", "0.25", "--val-fraction", "0.25", "--shard-size", "4"]
    assert ingest(["dicom", str(first), "--out", str(tmp / "v1"), *common]) == EXIT_OK
    assert ingest(["dicom", str(whole), "--out", str(tmp / "v2"), *common]) == EXIT_OK
    assert ingest(["dicom", str(whole), "--out", str(tmp / "v2-kept"), *common,
                   "--splits-from", str(tmp / "v1")]) == EXIT_OK
    return tmp


def _config(*roots: Path, split: str = "train"):
    sources = ", ".join(f"{{root: {root}, split: {split}}}" for root in roots)
    return load_config(TINY, [f"data.sources=[{sources}]"])


def test_sets_split_separately_are_said_to_share_held_out_patients(exports):
    said = held_out_patients_in_training(_config(exports / "v1", exports / "v2"))
    assert said and all("the sets were split separately" in line and "--splits-from" in line for line in said)
    assert any(f"{exports / 'v2'}'s " in line or f"{exports / 'v1'}'s " in line for line in said)
    assert held_out_patients_in_training(_config(exports / "v1", exports / "v2-kept")) == []
    assert held_out_patients_in_training(_config(exports / "v2")) == []  # one set: split by ingest
    # a set's own val split streamed for training is trained on knowingly; the other set's is not
    said = held_out_patients_in_training(_config(exports / "v1", exports / "v2-kept", split="val"))
    assert said == []


def test_pretrain_warns_before_it_starts(exports, tmp_path, capsys):
    from trainer.pretrain import main

    sources = f"data.sources=[{{root: {exports / 'v1'}}}, {{root: {exports / 'v2'}}}]"
    assert main(["--config", str(TINY), f"run.storage_path={tmp_path}", sources, "run.workers=1",
                 "data.batch_size=2", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "pretrain: warning: " in err and "trained on from another set are in" in err
