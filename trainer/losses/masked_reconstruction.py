"""Masked patch reconstruction loss (MAE, He et al. 2022, §3 "Reconstruction target"; MIRAM,
paper 000, §II-B, eq. 7).

Per patch l the error is the mean squared error over its p*p*C values,
    J_P(l) = 1/(p*p*C) * sum_i (pred[l, i] - target[l, i])^2,
and the loss is the mean of J_P over the masked patches only ("we compute the loss only on masked
patches, similar to BERT"), averaged over the batch as one pool of masked patches:
    loss = sum_{n,l} mask[n, l] * J_P(n, l) / sum_{n,l} mask[n, l].
MIRAM's eq. 7 writes the mean over all L patches; it states that it follows MAE, whose loss counts
the masked ones, and so does this.

norm_pix_loss (MAE §3, Table 1c "w/ norm"): each target patch is standardised by its own mean and
variance, target' = (target - mean) / sqrt(var + eps), eps = 1e-6. The variance is the unbiased one
(torch's default, as in MAE's released code).
"""

from __future__ import annotations

import torch
from torch import nn


def patch_mean_std(patches: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """patches: (N, L, P) -> mean, std each (N, L, 1), with std = sqrt(var + eps) as norm_pix_loss
    uses; predictions made against normalised targets map back to pixels as pred * std + mean."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return mean, (var + eps).sqrt()


class MaskedReconstructionLoss(nn.Module):
    """pred, target: (N, L, p*p*C), mask: (N, L) with 1 = removed (scored), 0 = visible -> scalar.

    `target` is the raw patchified image; with norm_pix_loss it is standardised here. A mask with no
    removed patch gives NaN (0/0): masking ratios are > 0 in pretraining.
    """

    def __init__(self, *, norm_pix_loss: bool = False, eps: float = 1e-6):
        super().__init__()
        self.norm_pix_loss = norm_pix_loss
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.shape != pred.shape[:2]:
            raise ValueError(f"shapes disagree: pred {tuple(pred.shape)}, mask {tuple(mask.shape)}")
        return (self.per_patch(pred, target) * mask).sum() / mask.sum()

    def per_patch(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: (N, L, p*p*C) -> J_P (N, L) of every patch, masked or not (DAMA ranks its
        student's patches by it, paper 004 Algorithm 1)."""
        if pred.shape != target.shape:
            raise ValueError(f"shapes disagree: pred {tuple(pred.shape)}, target {tuple(target.shape)}")
        if self.norm_pix_loss:
            mean, std = patch_mean_std(target, self.eps)
            target = (target - mean) / std
        return ((pred - target) ** 2).mean(dim=-1)  # J_P of eq. 7
