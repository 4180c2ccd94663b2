"""trainer/loop.py's pieces that the whole-run tests in test_pretrain.py cannot single out."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist

from trainer.loop import lr_schedule, mean_over_ranks


def _rank_mean(rank: int, out: str) -> None:
    metrics = mean_over_ranks({"loss": 1.0 + rank, "loss_fine": 10.0 * rank}, torch.device("cpu"))
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump(metrics, fh)


def test_logged_metrics_are_the_mean_over_ranks(tmp_path, gloo_ranks):
    gloo_ranks(_rank_mean, str(tmp_path))
    results = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert results == {0: {"loss": 1.5, "loss_fine": 5.0}, 1: {"loss": 1.5, "loss_fine": 5.0}}


def test_one_process_metrics_are_left_as_they_are():
    assert not dist.is_initialized()
    assert mean_over_ranks({"loss": 0.25}, torch.device("cpu")) == {"loss": 0.25}


def mae_lr(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """MAE's util/lr_sched.adjust_learning_rate, written out, by step."""
    if step < warmup:
        return peak * step / warmup
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize("total,warmup", [(50, 4), (50, 0), (12, 11)])
def test_lr_warms_up_to_the_peak_then_follows_mae_cosine_over_the_steps_left(total, warmup):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
    schedule = lr_schedule(optimizer, total, warmup, 1e-3)
    for step in range(total + 1):
        schedule.step_update(step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(mae_lr(step, total, warmup, 0.4, 1e-3), rel=1e-9), step
    schedule.step_update(warmup)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.4)  # the peak is reached


@pytest.mark.parametrize("decay_all", [False, True])
def test_weight_decay_spares_norms_and_biases_unless_the_recipe_decays_them(decay_all):
    from trainer.config import OptimConfig
    from trainer.loop import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    optim = OptimConfig(name="momentum", weight_decay=1e-4, decay_norms_and_biases=decay_all)
    groups = build_optimizer(model, optim, 0.1).param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] == 1e-4 for p in g["params"]}
    weights = {id(model[0].weight), id(model[2].weight)}
    assert decayed == ({id(p) for p in model.parameters()} if decay_all else weights)
