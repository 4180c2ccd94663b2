"""Smooth-L1 regression of target features on selected tokens (data2vec, Baevski et al. 2022,
§3.4 "Objective"; DAMA, paper 004, §1.2 and Table 2 "K-blocks/beta 6/2").

For a prediction f and target y at one token, elementwise with beta > 0:

    l(f, y) = 0.5 * (f - y)^2 / beta    if |f - y| < beta
              |f - y| - 0.5 * beta       otherwise

(beta = 0 is the plain L1 distance.) The token's loss is the mean of l over its D channels, and the
loss is the mean over the selected tokens of the whole batch, as one pool:

    loss = sum_{n,l} sel[n, l] * mean_d l(pred[n, l, d], target[n, l, d]) / sum_{n,l} sel[n, l].

data2vec sums over channels and divides by sqrt(D); DAMA's released code sums over everything
(after a softmax that keeps the values small). The per-element mean here is on the scale of the
per-element MSE of the reconstruction terms it is added to, so the paper's equal weights stay
meaningful for any width D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeatureRegressionLoss(nn.Module):
    """pred, target: (N, L, D), selected: (N, L) with 1 = scored, 0 = ignored -> scalar.

    Ignored tokens may hold anything (even non-finite values). No selected token gives NaN (0/0).
    """

    def __init__(self, *, beta: float = 2.0):
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = beta

    def forward(self, pred: torch.Tensor, target: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or selected.shape != pred.shape[:2]:
            raise ValueError(
                f"shapes disagree: pred {tuple(pred.shape)}, target {tuple(target.shape)}, "
                f"selected {tuple(selected.shape)}"
            )
        keep = selected.bool()
        dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)  # never below fp32
        per_token = F.smooth_l1_loss(pred[keep].to(dtype), target[keep].to(dtype), reduction="none", beta=self.beta)
        return per_token.mean(dim=-1).sum() / selected.sum()
