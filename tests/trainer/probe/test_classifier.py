"""MAE's linear-probing head learns what frozen features hold, and only that."""

from __future__ import annotations

import math

import numpy as np
import torch

from trainer.probe.classifier import LinearProbe, ProbeSchedule, _lr, fit_probe, predict
from trainer.probe.metrics import roc_auc

SHORT = ProbeSchedule(epochs=30, warmup_epochs=3, batch_size=32)


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes, each a Gaussian blob around its own mean in 16 dimensions."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 3, (n,), generator=g)
    means = torch.randn(3, 16, generator=torch.Generator().manual_seed(99)) * 3
    return means[targets] + torch.randn(n, 16, generator=g), targets


def test_separable_classes_are_learned_and_random_labels_are_not():
    features, targets = blobs(300, seed=0)
    held_out, held_targets = blobs(200, seed=1)
    probe, losses = fit_probe(features, targets, 3, multilabel=False, schedule=SHORT, seed=0)
    accuracy = (predict(probe, held_out, multilabel=False).argmax(1) == held_targets).float().mean()
    assert accuracy > 0.95 and losses[-1] < losses[0] / 4
    shuffled = targets[torch.randperm(300, generator=torch.Generator().manual_seed(5))]
    probe, _ = fit_probe(features, shuffled, 3, multilabel=False, schedule=SHORT, seed=0)
    chance = (predict(probe, held_out, multilabel=False).argmax(1) == held_targets).float().mean()
    assert chance < 0.6


def test_multilabel_probe_learns_each_label_from_its_own_feature():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(400, 8, generator=g)
    targets = torch.stack([features[:, 0] > 0, features[:, 3] > 0.5], dim=1).float()
    probe, _ = fit_probe(features[:300], targets[:300], 2, multilabel=True, schedule=SHORT, seed=0)
    probabilities = predict(probe, features[300:], multilabel=True).numpy()
    for j in range(2):
        assert roc_auc(probabilities[:, j], targets[300:, j].numpy() > 0.5) > 0.97


def test_the_same_seed_gives_the_same_probe():
    features, targets = blobs(50, seed=3)  # 50 = 32 + 18: two batches an epoch
    a, _ = fit_probe(features, targets, 3, multilabel=False, schedule=SHORT, seed=7)
    b, _ = fit_probe(features, targets, 3, multilabel=False, schedule=SHORT, seed=7)
    c, _ = fit_probe(features, targets, 3, multilabel=False, schedule=SHORT, seed=8)
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)


def test_a_last_batch_of_one_sample_is_merged_not_fed_to_batchnorm_alone():
    features, targets = blobs(33, seed=4)  # 32 + 1
    probe, losses = fit_probe(features, targets, 3, multilabel=False, schedule=ProbeSchedule(epochs=2, batch_size=32))
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_head_is_batchnorm_without_affine_then_linear_and_lr_follows_mae_schedule():
    probe = LinearProbe(10, 4)
    assert probe.norm.affine is False and probe.norm.eps == 1e-6 and float(probe.head.bias.detach().abs().sum()) == 0
    assert float(probe.head.weight.detach().std()) < 0.02
    peak = 0.5
    assert _lr(0, 100, 10, peak) == 0 and _lr(5, 100, 10, peak) == peak / 2 and _lr(10, 100, 10, peak) == peak
    assert np.isclose(_lr(55, 100, 10, peak), peak / 2) and _lr(100, 100, 10, peak) < 1e-12
