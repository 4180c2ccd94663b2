"""NT-Xent, the normalised temperature-scaled cross entropy of SimCLR (Chen et al., "A Simple
Framework for Contrastive Learning of Visual Representations", ICML 2020, §2.1 eq. 1, Algorithm 1).

Two views of N images give 2N embeddings; each one is an anchor whose positive is the other view of
its image and whose negatives are the other 2(N - 1) embeddings:
    l(i, j) = -log  exp(sim(z_i, z_j)/tau) / sum_{k != i} exp(sim(z_i, z_k)/tau)
    L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]
The anchors of view 1 see exactly the candidates of TOWER's eq. 4 (trainer.losses.info_nce) with view
1 as the images, so L = 1/2 [InfoNCE(z1 -> z2) + InfoNCE(z2 -> z1)].
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.losses.info_nce import InfoNCELoss


class NTXentLoss(nn.Module):
    """z1, z2: (N, D) embeddings of two views of the same N images -> scalar, symmetric in z1, z2."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.info_nce = InfoNCELoss(temperature)

    @property
    def temperature(self) -> float:
        return self.info_nce.temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.info_nce(z1, z2) + self.info_nce(z2, z1))
