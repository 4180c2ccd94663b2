"""MAE's linear-probing head, trained on cached frozen features.

He et al. 2022, §A.1 (Linear probing, Table 10) and main_linprobe.py: a BatchNorm without affine parameters
(eps 1e-6) in front of the linear classifier, whose weights start from a truncated normal of std
0.01; a half-cycle cosine learning rate after a linear warm-up, lr = blr x batch / 256, no
weight decay. Differences, for a probe on a few labels: SGD with momentum 0.9 instead of LARS
(LARS is there for MAE's batches of 16,384), and the features are computed once, without
augmentation, so every epoch is a pass over a tensor in memory. Cross-entropy for one
categorical label; binary cross-entropy per label for several binary ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class LinearProbe(nn.Module):
    def __init__(self, dim: int, outputs: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, outputs)
        nn.init.trunc_normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(features))


@dataclass(frozen=True)
class ProbeSchedule:
    epochs: int = 90  # MAE Table 10
    warmup_epochs: int = 10
    batch_size: int = 256
    blr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0


def _lr(step: int, steps: int, warmup: int, peak: float) -> float:
    """MAE's lr_sched.adjust_learning_rate, by step: linear warm-up, then half a cosine to 0."""
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def fit_probe(features: torch.Tensor, targets: torch.Tensor, outputs: int, *, multilabel: bool,
              schedule: ProbeSchedule = ProbeSchedule(), seed: int = 0) -> tuple[LinearProbe, list[float]]:
    """The trained probe (in eval mode) and its mean training loss per epoch. features (N, D)
    float32; targets (N,) int64 class indices, or (N, L) float32 0/1 when multilabel."""
    n = len(features)
    if n < 2:
        raise ValueError(f"a probe needs at least 2 training samples, got {n}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the head's initial weights
    probe = LinearProbe(features.shape[1], outputs)
    batch = min(schedule.batch_size, n)
    optimizer = torch.optim.SGD(probe.parameters(), lr=0.0, momentum=schedule.momentum,
                                weight_decay=schedule.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
    steps_per_epoch = math.ceil(n / batch)
    steps, warmup = schedule.epochs * steps_per_epoch, min(schedule.warmup_epochs, schedule.epochs) * steps_per_epoch
    peak = schedule.blr * batch / 256
    losses, step = [], 0
    probe.train()
    for _ in range(schedule.epochs):
        order = torch.randperm(n, generator=generator)
        chunks = list(order.split(batch))
        if len(chunks) > 1 and len(chunks[-1]) == 1:  # BatchNorm cannot train on one sample
            chunks[-2:] = [torch.cat(chunks[-2:])]
        total = 0.0
        for idx in chunks:
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, steps, warmup, peak)
            loss = loss_fn(probe(features[idx]), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            step += 1
        losses.append(total / n)
    return probe.eval(), losses


@torch.no_grad()
def predict(probe: LinearProbe, features: torch.Tensor, *, multilabel: bool) -> torch.Tensor:
    """Class probabilities (softmax), or per-label probabilities (sigmoid) when multilabel."""
    logits = probe(features)
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)
