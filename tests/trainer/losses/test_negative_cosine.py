"""SimSiam's D(p, stopgrad(z)) against the equation written out, its invariants, and the stop-gradient."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses.negative_cosine import NegativeCosineLoss


def paper_d(p, z):
    """SimSiam eq. 1 sample by sample: -(p / ||p||) . (z / ||z||), averaged over the batch."""
    total = 0.0
    for p_row, z_row in zip(p.tolist(), z.tolist()):
        dot = sum(a * b for a, b in zip(p_row, z_row))
        norm_p = math.sqrt(sum(a * a for a in p_row))
        norm_z = math.sqrt(sum(b * b for b in z_row))
        total += -dot / (norm_p * norm_z)
    return total / len(p)


def pair(seed, n=5, d=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_equation(seed):
    p, z = pair(seed)
    assert float(NegativeCosineLoss()(p, z)) == pytest.approx(paper_d(p, z), abs=1e-12)


def test_symmetric_is_half_of_each_prediction_against_the_other_views_target():
    p1, z1 = pair(3)
    p2, z2 = pair(4)
    expected = 0.5 * paper_d(p1, z2) + 0.5 * paper_d(p2, z1)
    loss = NegativeCosineLoss()
    assert float(loss.symmetric(p1, z1, p2, z2)) == pytest.approx(expected, abs=1e-12)
    assert float(loss.symmetric(p2, z2, p1, z1)) == pytest.approx(expected, abs=1e-12)  # order of views


def test_bounds_and_invariance_to_positive_scale():
    p, z = pair(5)
    loss = NegativeCosineLoss()
    assert float(loss(p, p * 3.0)) == pytest.approx(-1.0)
    assert float(loss(p, -p)) == pytest.approx(1.0)
    scales = torch.rand(5, 1, dtype=torch.float64) * 10 + 0.1  # one positive scale per sample
    assert float(loss(p * scales, z / scales)) == pytest.approx(float(loss(p, z)), abs=1e-12)
    assert -1.0 <= float(loss(p, z)) <= 1.0


def test_no_gradient_flows_into_the_target():
    p, z = pair(6)
    p.requires_grad_(True)
    z.requires_grad_(True)
    NegativeCosineLoss()(p, z).backward()
    assert z.grad is None
    assert p.grad is not None and p.grad.abs().sum() > 0
    # the gradient on p is that of -cos(p, z) with z a constant: orthogonal to p (scale invariance)
    assert torch.allclose((p.grad * p).sum(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-12)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="shape"):
        NegativeCosineLoss()(torch.randn(4, 3), torch.randn(4, 5))
