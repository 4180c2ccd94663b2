"""trainer/checkpoints.py: which checkpoints run.keep_by keeps, and a run's best one, in one
process and as Ray Train keeps them; export_encoder --best."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shards import storage
from trainer.checkpoints import (best_checkpoint, checkpoint_val_loss, keep_by_change, kept, metrics_json, read_metrics,
                                 score)

PROJECT = Path(__file__).resolve().parents[2]
TINY = PROJECT / "trainer" / "configs" / "tiny_cpu.yaml"


def test_newest_keeps_the_last_ones():
    assert kept([0.5, None, 0.1, None], 2, "newest") == [False, False, True, True]
    assert kept([0.5], 3, "newest") == [True]


def test_val_loss_keeps_the_lowest_and_always_the_newest():
    # epochs without a pass rank below every scored one; the newest stays whatever its score
    assert kept([0.5, None, 0.1, 0.9, None], 2, "val_loss") == [True, False, True, False, True]
    assert kept([0.3, 0.2, 0.4], 1, "val_loss") == [False, True, True]
    assert kept([0.2, 0.2, 0.2, 0.9], 2, "val_loss") == [False, True, True, True]  # equals: the older goes
    assert kept([None, None, None], 1, "val_loss") == [False, False, True]
    assert kept([], 2, "val_loss") == []
    with pytest.raises(ValueError, match="keep_by must be one of"):
        kept([0.1], 1, "best")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own snapshot writing (pydantic's .json())
def test_the_rule_is_ray_trains_own_on_random_runs(tmp_path):
    """kept() against Ray Train's checkpoint manager itself (the one a Ray run's controller uses),
    fed the same reports: NaN where an epoch had no pass, ties, keep 1 to 4."""
    import asyncio
    import random

    internals = pytest.importorskip("ray.train.v2._internal.execution.checkpoint.checkpoint_manager",
                                    reason="Ray Train's checkpoint manager moved (a Ray other than constraints.txt's)")
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train.v2._internal.execution.context import StorageContext
    from ray.train.v2._internal.execution.training_report import _TrainingReport

    async def ray_keeps(scores: list[float | None], keep: int, folder: Path) -> list[bool]:
        manager = internals.CheckpointManager(
            CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"),
            StorageContext(str(folder), "run"))
        reported = []
        for epoch, value in enumerate(scores):
            reported.append(folder / "run" / f"checkpoint_{epoch:03d}")
            reported[-1].mkdir(parents=True)
            (reported[-1] / "checkpoint.pt").write_bytes(b"")
            metrics = {"epoch": epoch, "val_loss": math.nan if value is None else value}
            manager.register_checkpoint(_TrainingReport(Checkpoint(str(reported[-1])), metrics, False))
        return [path.exists() for path in reported]

    rng = random.Random(0)
    for trial in range(100):
        scores = [rng.choice([None, round(rng.uniform(0, 1), 1)]) for _ in range(rng.randint(1, 12))]
        keep = rng.randint(1, 4)
        assert asyncio.run(ray_keeps(scores, keep, tmp_path / str(trial))) == kept(scores, keep, "val_loss"), \
            (scores, keep)


def test_metrics_are_strict_json_and_a_missing_pass_has_no_score(tmp_path):
    assert json.loads(metrics_json({"epoch": 3, "loss": 0.25, "val_loss": math.nan})) == {
        "epoch": 3, "loss": 0.25, "val_loss": None}
    assert score({"val_loss": 0.5}) == 0.5 and score({"loss": 0.5}) is None and score(None) is None
    assert score({"val_loss": None}) is None
    assert read_metrics(tmp_path) is None  # a checkpoint written before metrics.json existed
    (tmp_path / "metrics.json").write_text("{cut sh")
    assert read_metrics(tmp_path) is None
    (tmp_path / "metrics.json").write_text("[0.5]")
    assert read_metrics(tmp_path) is None


def _checkpoint(folder: Path, epoch: int, val_loss: float | None) -> Path:
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"")
    (folder / "metrics.json").write_bytes(metrics_json({"epoch": epoch, **({"val_loss": val_loss} if val_loss else {})}))
    return folder


def test_the_best_is_the_lowest_val_loss_the_later_among_equals(tmp_path):
    ray_run = tmp_path / "ray-run"
    _checkpoint(ray_run / "checkpoint_2026-12-03_10-00-00.000001", 0, None)
    _checkpoint(ray_run / "checkpoint_2026-12-03_10-00-01.000001", 1, 0.4)
    wanted = _checkpoint(ray_run / "checkpoint_2026-12-03_10-00-02.000001", 3, 0.3)
    _checkpoint(ray_run / "checkpoint_2026-12-03_10-00-03.000001", 2, 0.3)  # equal, earlier epoch
    folder, metrics = best_checkpoint(ray_run)
    assert folder == wanted and metrics["epoch"] == 3
    one_process = tmp_path / "local-run"
    _checkpoint(one_process / "checkpoints" / "epoch_0001", 1, None)
    assert best_checkpoint(one_process) is None
    wanted = _checkpoint(one_process / "checkpoints" / "epoch_0002", 2, 0.7)
    assert best_checkpoint(one_process)[0] == wanted


def test_the_best_of_a_run_in_a_bucket_and_a_checkpoints_val_loss(s3_endpoint, tmp_path):
    run = tmp_path / "run"
    _checkpoint(run / "checkpoint_2026-12-03_10-00-00.000001", 1, 0.6)
    _checkpoint(run / "checkpoint_2026-12-03_10-00-01.000001", 2, 0.5)
    _checkpoint(run / "checkpoint_2026-12-03_10-00-02.000001", 3, None)
    uri = s3_endpoint.upload(run, "runs/x")
    folder, metrics = best_checkpoint(uri)
    assert folder == storage.join(uri, "checkpoint_2026-12-03_10-00-01.000001") and metrics["epoch"] == 2
    assert checkpoint_val_loss(storage.join(folder, "checkpoint.pt")) == 0.5
    assert checkpoint_val_loss(storage.join(uri, "checkpoint_2026-12-03_10-00-02.000001", "checkpoint.pt")) is None
    assert checkpoint_val_loss(run / "checkpoint_2026-12-03_10-00-00.000001" / "checkpoint.pt") == 0.6


def _epochs(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "epochs.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _kept_epochs(folders) -> list[int]:
    return sorted(int(read_metrics(folder)["epoch"]) for folder in folders)


# 4 epochs, a checkpoint each, a pass after the 2nd and 4th (0-based 1 and 3): keep 2 by val_loss
# keeps those two, where the newest 2 would be epochs 2 and 3, whatever the losses come out as.
RANKED = ["optim.epochs=4", "optim.warmup_epochs=1", "data.batch_size=8", "validation.every_epochs=2",
          "validation.batch_size=2", "run.keep_checkpoints=2", "run.keep_by=val_loss"]


def test_a_one_process_run_keeps_the_lowest_val_losses_and_exports_the_best(lesion_shards, tmp_path, capsys):
    from trainer.export_encoder import main as export_main
    from trainer.pretrain import main

    args = ["--config", str(TINY), f"data.sources=[{{root: {lesion_shards}}}]", f"run.storage_path={tmp_path}",
            "run.use_ray=false", *RANKED]
    assert main(args) == 0
    run_dir = tmp_path / "tiny-cpu"
    assert _kept_epochs((run_dir / "checkpoints").iterdir()) == [1, 3]
    rows = _epochs(run_dir)
    best = min((1, 3), key=lambda e: (float(rows[e]["val_loss"]), -e))
    out = capsys.readouterr().out
    assert f"best checkpoint: {run_dir / 'checkpoints' / f'epoch_{best:04d}'} (after epoch {best + 1}, " in out
    assert export_main([str(run_dir), "--best", "--out", str(tmp_path / "best.safetensors")]) == 0
    recipe = json.loads((tmp_path / "best.json").read_text())
    assert recipe["epoch"] == best and recipe["val_loss"] == pytest.approx(float(rows[best]["val_loss"]))
    state = torch.load(run_dir / "checkpoints" / f"epoch_{best:04d}" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == best


def test_export_best_of_a_run_without_val_losses_is_refused(exported_encoder, tmp_path, capsys):
    from trainer.export_encoder import main as export_main

    out = tmp_path / "e.safetensors"
    assert export_main([str(exported_encoder.parent / "tiny-cpu"), "--best", "--out", str(out)]) == 2
    assert "none of its 1 checkpoint(s) has a val_loss" in capsys.readouterr().err and not out.exists()


def test_a_ray_run_keeps_the_same_checkpoints_as_one_process(lesion_shards, ray_env, tmp_path):
    """Ray Train keeps them (CheckpointConfig with val_loss as the score): the epochs without a
    pass are reported with a NaN val_loss, which Ray ranks lowest (left out, it ranks highest)."""
    args = ["--config", str(TINY), f"data.sources=[{{root: {lesion_shards}}}]", f"run.storage_path={tmp_path}",
            "run.workers=1", *RANKED]
    done = subprocess.run([sys.executable, "trainer/pretrain.py", *args], cwd=PROJECT, env=ray_env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    run_dir = tmp_path / "tiny-cpu"
    assert _kept_epochs(p for p in run_dir.glob("checkpoint_*") if p.is_dir()) == [1, 3]
    folder, metrics = best_checkpoint(run_dir)
    assert f"best checkpoint: {folder} (after epoch {int(metrics['epoch']) + 1}, " in done.stdout


def test_a_ray_run_resumed_under_another_keep_by_is_refused_before_ray_starts(lesion_shards, tmp_path, capsys):
    from trainer.pretrain import main

    run_dir = tmp_path / "tiny-cpu"
    (run_dir / "checkpoint_2026-12-03_10-00-00.000001").mkdir(parents=True)  # an earlier Ray run's
    args = ["--config", str(TINY), f"data.sources=[{{root: {lesion_shards}}}]", f"run.storage_path={tmp_path}",
            "validation.every_epochs=2", "--resume"]
    assert keep_by_change(run_dir, "val_loss") is None  # no saved config: nothing to compare
    (run_dir / "config.yaml").write_text("run:\n  name: tiny-cpu\n  keep_by: newest\n")
    assert keep_by_change(run_dir, "newest") is None
    assert main([*args, "run.keep_by=val_loss"]) == 2
    assert "run.keep_by: this run kept its checkpoints by newest" in capsys.readouterr().err
    (run_dir / "config.yaml").write_text("run:\n  name: tiny-cpu\n")  # saved before keep_by existed: newest
    assert "by newest" in keep_by_change(run_dir, "val_loss")
