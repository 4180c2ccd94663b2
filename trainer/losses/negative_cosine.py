"""Negative cosine similarity with stop-gradient (SimSiam, Chen & He, "Exploring Simple Siamese
Representation Learning", CVPR 2021, §3 eq. 1-4; PCRLv2, paper 003, §3.3 eq. 7-9).

    D(p, z) = - p / ||p||_2  .  z / ||z||_2                            (SimSiam eq. 1)
with z a constant (stopgrad, eq. 3), averaged over the batch; the symmetrised loss is
    L = 1/2 D(p1, stopgrad(z2)) + 1/2 D(p2, stopgrad(z1))              (SimSiam eq. 4)
which is also PCRLv2's comparison loss at one pyramid level (eq. 9) with p = f_P(v), z = v.
The stop-gradient is what keeps SimSiam from collapsing (§4.1): gradients reach the network only
through the predictor's output p, never through the target z.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NegativeCosineLoss(nn.Module):
    """p, z: (N, D) -> scalar D(p, stopgrad(z)) in [-1, 1], -1 when every p points along its z."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if p.shape != z.shape or p.ndim != 2:
            raise ValueError(f"p and z must be (N, D) of one shape, got {tuple(p.shape)} and {tuple(z.shape)}")
        return -F.cosine_similarity(p, z.detach(), dim=1, eps=self.eps).mean()

    def symmetric(self, p1: torch.Tensor, z1: torch.Tensor, p2: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Two siamese views, each with its prediction p and target z -> 1/2 D(p1, z2) + 1/2 D(p2, z1)."""
        return 0.5 * (self(p1, z2) + self(p2, z1))
