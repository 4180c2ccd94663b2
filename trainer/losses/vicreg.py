"""Variance-invariance-covariance regularisation (VICReg: Bardes, Ponce & LeCun, ICLR 2022, §3,
eq. 1-6; MLVICX, paper 002, §III-B, eq. 3-8, applies it to both its global and its
multi-level embeddings).

For two batches of embeddings Z, Z' (b rows, d dimensions) of the same images under two views:
    inv(Z, Z') = 1/(b d) sum_i ||z_i - z'_i||^2                                 (mean squared error)
    var(Z)     = 1/d sum_j max(0, gamma - sqrt(Var(z_:j) + eps))                (eq. 7)
    cov(Z)     = 1/d sum_{l != q} C(Z)_lq^2,  C(Z) = 1/(b-1) sum_i (z_i - z̄)(z_i - z̄)^T   (eq. 8)
    loss       = sim_coeff inv(Z, Z') + std_coeff [var(Z) + var(Z')] / 2 + cov_coeff [cov(Z) + cov(Z')]   (eq. 3)
with Var the unbiased variance over the batch, gamma = 1, eps = 1e-4 and coefficients 25, 25, 1
(VICReg §4.1; MLVICX §IV-C adopts them).

Three readings differ from the text of paper 002, each as VICReg's released code computes it:
- the invariance is the MSE (mean over b and d), while eq. 6 writes the squared norm averaged over b
  only (d times larger); VICReg's coefficients were tuned for the MSE;
- eps sits under the square root (VICReg eq. 1), where eq. 7 adds it to the standard deviation;
- the two branches' variance terms are averaged, where eq. 3 (and VICReg's own eq. 6) sum them:
  main_vicreg.py's std_loss, and the MLVICX authors' copy of it, is their mean, and VICReg's
  std_coeff of 25 (which MLVICX adopts, §IV-C) was tuned on that mean; the covariance terms are
  summed, as there.

In data-parallel training the variance and covariance are those of the global batch
(trainer.losses.global_batch), as main_vicreg.py computes them over every GPU's rows; the
invariance compares each rank's own pairs.

The terms are computed in float32 whatever the autocast dtype: a bf16 covariance of thousands of
dimensions loses the small off-diagonal entries the covariance term is made of.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from trainer.losses.global_batch import gather_rows


class VICRegTerms(NamedTuple):
    """The unweighted terms, each a 0-dim tensor: variance the mean of both branches', covariance their sum."""

    invariance: torch.Tensor
    variance: torch.Tensor
    covariance: torch.Tensor


def variance_hinge(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """var(Z) of eq. 7: z (b, d) -> mean over dimensions of ReLU(gamma - sqrt(Var + eps))."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def off_diagonal_covariance(z: torch.Tensor) -> torch.Tensor:
    """cov(Z) of eq. 8: z (b, d) -> sum of the squared off-diagonal covariances / d."""
    b, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (b - 1)
    # Zero the diagonal rather than subtract its squares: the variances dwarf the covariances, and
    # the difference of two large sums would lose them.
    diagonal = torch.eye(d, dtype=torch.bool, device=z.device)
    return cov.masked_fill(diagonal, 0.0).pow(2).sum() / d


class VICRegLoss(nn.Module):
    """z_a, z_b: (b, d) embeddings of two views of the same b images -> scalar (eq. 3)."""

    def __init__(self, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0,
                 gamma: float = 1.0, eps: float = 1e-4):
        super().__init__()
        self.sim_coeff, self.std_coeff, self.cov_coeff = sim_coeff, std_coeff, cov_coeff
        self.gamma, self.eps = gamma, eps

    def terms(self, z_a: torch.Tensor, z_b: torch.Tensor) -> VICRegTerms:
        if z_a.shape != z_b.shape or z_a.ndim != 2:
            raise ValueError(f"z_a and z_b must be (b, d) of one shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
        if z_a.shape[0] < 2:
            raise ValueError("the variance and covariance terms need a batch of at least 2 embeddings")
        with torch.autocast(z_a.device.type, enabled=False):
            z_a, z_b = z_a.float(), z_b.float()
            invariance = F.mse_loss(z_a, z_b)
            both, _ = gather_rows(torch.stack([z_a, z_b], dim=1), training=self.training)  # one collective
            z_a, z_b = both.unbind(1)
            return VICRegTerms(
                invariance=invariance,
                variance=(variance_hinge(z_a, self.gamma, self.eps) + variance_hinge(z_b, self.gamma, self.eps)) / 2,
                covariance=off_diagonal_covariance(z_a) + off_diagonal_covariance(z_b),
            )

    def total(self, terms: VICRegTerms) -> torch.Tensor:
        """The weighted sum of eq. 3."""
        return self.sim_coeff * terms.invariance + self.std_coeff * terms.variance + self.cov_coeff * terms.covariance

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return self.total(self.terms(z_a, z_b))
