"""InfoNCE between images and their transformed views, with in-batch negatives (TOWER, paper 001,
§3.3.1, eq. 3-4, Fig. 5; van den Oord et al. 2018).

For a batch of N images with embeddings z_n and their views' embeddings z_n^+:
    sim(a, b) = a^T b / (||a|| ||b||)                                                     (eq. 3)
    L = -1/N sum_n log  e^{sim(z_n, z_n^+)/tau} / (e^{sim(z_n, z_n^+)/tau} + sum_{z^-} e^{sim(z_n, z^-)/tau})   (eq. 4)
The anchors are the images only (one direction, image -> view), and the negatives of z_n are "the
remaining samples in this batch and their transformed views" (§3.3.1, Fig. 5): z_m and z_m^+ for every
m != n, 2 (N - 1) of them. tau = 0.1 (§3.3.1, after SimCLR).

In data-parallel training the negatives come from the global batch (trainer.losses.global_batch):
each rank's anchors meet every rank's images and views, as the paper's one-machine batch of 128 did.

SimCLR's NT-Xent (trainer.losses.nt_xent) is the average of this loss in both directions.
Computed in float32 whatever the autocast dtype: the logits are exponentiated at 1 / tau = 10.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.losses.global_batch import gather_rows


class InfoNCELoss(nn.Module):
    """anchors, positives: (N, D) -> scalar eq. 4, anchors[n] and positives[n] a positive pair."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        if anchors.shape != positives.shape or anchors.ndim != 2:
            raise ValueError(f"anchors and positives must be (N, D) of one shape, got {tuple(anchors.shape)} "
                             f"and {tuple(positives.shape)}")
        with torch.autocast(anchors.device.type, enabled=False):
            a = F.normalize(anchors.float(), dim=1)
            p = F.normalize(positives.float(), dim=1)
            every, first = gather_rows(torch.stack([a, p], dim=1), training=self.training)  # one collective
            every_a, every_p = every.unbind(1)
            n, mine = a.shape[0], torch.arange(first, first + a.shape[0], device=a.device)
            # Column first + i of to_views is anchor i's positive; of to_images, the anchor itself (no negative).
            to_views = a @ every_p.T / self.temperature
            to_images = a @ every_a.T / self.temperature
            self_pairs = torch.zeros(n, every_a.shape[0], dtype=torch.bool, device=a.device)
            self_pairs[torch.arange(n, device=a.device), mine] = True
            logits = torch.cat([to_views, to_images.masked_fill(self_pairs, float("-inf"))], dim=1)
            return F.cross_entropy(logits, mine)
