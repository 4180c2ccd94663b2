"""SimCLR's NT-Xent (Chen et al. 2020, §2.1 eq. 1): 2N anchors, each with one positive and 2N - 2
negatives."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses.nt_xent import NTXentLoss


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def simclr_loss(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """Algorithm 1 of SimCLR: interleave the views as z_{2k-1}, z_{2k}; l(i, j) over k != i."""
    z = [row for pair in zip(z1.double().tolist(), z2.double().tolist()) for row in pair]
    norm = [math.sqrt(sum(x * x for x in row)) for row in z]
    s = [[sum(a * b for a, b in zip(z[i], z[j])) / (norm[i] * norm[j]) for j in range(len(z))] for i in range(len(z))]

    def l(i: int, j: int) -> float:
        return -math.log(math.exp(s[i][j] / tau) / sum(math.exp(s[i][k] / tau) for k in range(len(z)) if k != i))

    return sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(len(z1))) / (2 * len(z1))


@pytest.mark.parametrize("n, d, tau", [(6, 10, 0.1), (3, 4, 0.5)])
def test_matches_simclr_algorithm_1(n, d, tau):
    z1, z2 = torch.randn(n, d, generator=seeded(n)), torch.randn(n, d, generator=seeded(n + 7))
    assert float(NTXentLoss(tau)(z1, z2 + z1)) == pytest.approx(simclr_loss(z1, z2 + z1, tau), rel=1e-5)


def test_symmetric_in_the_two_views_and_invariant_to_batch_order():
    z1, z2 = torch.randn(8, 6, generator=seeded(0)), torch.randn(8, 6, generator=seeded(1))
    loss = NTXentLoss(0.1)
    assert torch.allclose(loss(z1, z2), loss(z2, z1), atol=1e-6)
    order = torch.randperm(8, generator=seeded(2))
    assert torch.allclose(loss(z1[order], z2[order]), loss(z1, z2), atol=1e-6)
    assert loss.temperature == 0.1
