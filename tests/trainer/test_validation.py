"""trainer/validation.py: the loss on the val split after training epochs, the same measurement at
every pass, without disturbing training; and through pretrain.py, into epochs.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from trainer.config import load_config
from trainer.loop import data_shape, stream_sources
from trainer.registry import build_method
from trainer.validation import is_due, make_validation_loader, plan_validation, save_val_pictures, validate

PROJECT = Path(__file__).resolve().parents[2]
TINY = PROJECT / "trainer" / "configs" / "tiny_cpu.yaml"


def _config(shards: Path, storage: Path, *extra: str):
    return load_config(TINY, [f"data.sources=[{{root: {shards}}}]", f"run.storage_path={storage}",
                              "validation.every_epochs=1", "validation.batch_size=2", *extra])


def _epoch_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "epochs.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_passes_come_every_n_epochs_and_after_the_last():
    config = load_config(TINY, ["optim.epochs=5", "validation.every_epochs=2"])
    assert [is_due(config, epoch) for epoch in range(5)] == [False, True, False, True, True]
    config = load_config(TINY, ["optim.epochs=5"])  # every_epochs 0: none
    assert not any(is_due(config, epoch) for epoch in range(5))


def test_a_pass_measures_alike_every_time_and_leaves_the_training_randomness_alone(lesion_shards, tmp_path):
    config = _config(lesion_shards, tmp_path)
    sources = stream_sources(config)
    channels, size = data_shape(sources, config.data.image_size)
    plan = plan_validation(config, sources, size)
    assert plan.batch_size == 2 and plan.steps == 5 // 2  # the val split's 5 samples, in whole batches
    loader = make_validation_loader(config, plan, size, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_method(config.model.name, in_chans=channels, img_size=size, **config.model.options)
    state = torch.get_rng_state()
    first = validate(model, loader, plan.steps, seed=0, device=torch.device("cpu"), dtype=None)
    assert torch.equal(torch.get_rng_state(), state)  # training draws on as if no pass had run
    assert model.training and first.skipped == 0
    again = validate(model, loader, plan.steps, seed=0, device=torch.device("cpu"), dtype=None)
    assert again.terms == first.terms and set(first.terms) == {"loss", "loss_coarse", "loss_fine"}
    assert torch.equal(again.first_batch["image"], first.first_batch["image"])  # the same samples
    other_masks = validate(model, loader, plan.steps, seed=1, device=torch.device("cpu"), dtype=None)
    assert other_masks.terms["loss"] != first.terms["loss"]  # the seed is what holds the masks still
    for name in ("a.png", "b.png"):
        save_val_pictures(model, first.first_batch, tmp_path / name, seed=0, device=torch.device("cpu"))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # same samples, same masks
    assert torch.equal(torch.get_rng_state(), state) and model.training


def test_a_val_split_that_cannot_fill_a_batch_or_is_missing_is_named(lesion_shards, tmp_path):
    config = _config(lesion_shards, tmp_path, "validation.batch_size=8")
    sources = stream_sources(config)
    with pytest.raises(ValueError, match=r"validation on split 'val': 5 samples per epoch cannot fill one batch"):
        plan_validation(config, sources, 64)
    config = _config(lesion_shards, tmp_path, "validation.split=holdout")
    with pytest.raises(ValueError, match=r"validation on split 'holdout': .*no 'holdout' split"):
        plan_validation(config, sources, 64)


def test_pretrain_logs_val_losses_after_the_due_epochs_and_trains_as_without(lesion_shards, tmp_path, capsys):
    from trainer.pretrain import main

    base = ["--config", str(TINY), f"data.sources=[{{root: {lesion_shards}}}]", "run.use_ray=false",
            "optim.epochs=3", "data.batch_size=8"]
    assert main([*base, f"run.storage_path={tmp_path / 'plain'}"]) == 0
    assert main([*base, f"run.storage_path={tmp_path / 'val'}", "validation.every_epochs=2",
                 "validation.batch_size=2"]) == 0
    said = capsys.readouterr().out
    plain, val = (_epoch_rows(tmp_path / name / "tiny-cpu") for name in ("plain", "val"))
    assert [r["loss"] for r in val] == [r["loss"] for r in plain]  # training is as without the passes
    assert [r["val_loss"] == "" for r in val] == [True, False, False]  # after epochs 2 and 3 (the last)
    assert all(math.isfinite(float(r["val_loss"])) and float(r["val_skipped"]) == 0 for r in val[1:])
    assert "val_loss" not in plain[0]
    assert f"val_loss {float(val[2]['val_loss']):.4f}" in said
    pictures = sorted(p.name for p in (tmp_path / "val" / "tiny-cpu" / "images").glob("val_*.png"))
    assert pictures == ["val_epoch_0002.png", "val_epoch_0003.png"]


def test_a_pass_leaves_batchnorm_statistics_as_training_left_them(lesion_shards, tmp_path):
    """Eval mode: a BatchNorm method's running statistics (what an exported encoder normalises
    with) are read by the pass, not moved by it."""
    config = _config(lesion_shards, tmp_path, "model.name=simsiam_resnet18_tiny", "model.options={}")
    sources = stream_sources(config)
    channels, size = data_shape(sources, config.data.image_size)
    plan = plan_validation(config, sources, size)
    loader = make_validation_loader(config, plan, size, torch.device("cpu"))
    model = build_method(config.model.name, in_chans=channels, img_size=size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checked = validate(model, loader, plan.steps, seed=0, device=torch.device("cpu"), dtype=None)
    assert math.isfinite(checked.terms["loss"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running means, counts too
