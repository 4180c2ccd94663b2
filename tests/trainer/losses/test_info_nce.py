"""TOWER's InfoNCE (paper 001 §3.3.1, eq. 3-4): anchors are the images, positives their views,
negatives the other images and the other views of the batch."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses.info_nce import InfoNCELoss


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sim(a: list[float], b: list[float]) -> float:
    """Eq. 3."""
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def paper_eq4(z: torch.Tensor, z_plus: torch.Tensor, tau: float) -> float:
    """Eq. 4 term by term: for each image n, its view is the positive; every other image and every
    other image's view is a negative."""
    z, z_plus = z.double().tolist(), z_plus.double().tolist()
    total = 0.0
    for n in range(len(z)):
        positive = math.exp(sim(z[n], z_plus[n]) / tau)
        negatives = sum(math.exp(sim(z[n], z[m]) / tau) + math.exp(sim(z[n], z_plus[m]) / tau)
                        for m in range(len(z)) if m != n)
        total += math.log(positive / (positive + negatives))
    return -total / len(z)


@pytest.mark.parametrize("n, d, tau", [(8, 16, 0.1), (5, 3, 0.5), (2, 32, 0.07)])
def test_matches_eq4_computed_term_by_term(n, d, tau):
    z, z_plus = torch.randn(n, d, generator=seeded(n)), torch.randn(n, d, generator=seeded(n + 1))
    z_plus = z_plus + 2 * z  # correlated pairs, as a trained encoder gives
    assert float(InfoNCELoss(tau)(z, z_plus)) == pytest.approx(paper_eq4(z, z_plus, tau), rel=1e-5, abs=1e-6)


def test_one_direction_image_to_view():
    z, z_plus = torch.randn(6, 8, generator=seeded(0)), torch.randn(6, 8, generator=seeded(1))
    loss = InfoNCELoss(0.1)
    assert float(loss(z, z_plus)) != pytest.approx(float(loss(z_plus, z)), rel=1e-3)
    assert float(loss(z_plus, z)) == pytest.approx(paper_eq4(z_plus, z, 0.1), rel=1e-5)


def test_permuting_the_batch_consistently_leaves_it_unchanged():
    z, z_plus = torch.randn(10, 12, generator=seeded(2)), torch.randn(10, 12, generator=seeded(3))
    order = torch.randperm(10, generator=seeded(4))
    loss = InfoNCELoss(0.1)
    assert torch.allclose(loss(z[order], z_plus[order]), loss(z, z_plus), atol=1e-6)
    assert not torch.allclose(loss(z, z_plus[order]), loss(z, z_plus), atol=1e-3)  # pairs matter


def test_only_directions_matter():
    z, z_plus = torch.randn(7, 5, generator=seeded(5)), torch.randn(7, 5, generator=seeded(6))
    scale = torch.rand(7, 1, generator=seeded(7)) * 10 + 0.1
    loss = InfoNCELoss(0.2)
    assert torch.allclose(loss(z * scale, z_plus / scale), loss(z, z_plus), atol=1e-5)


def test_aligned_orthogonal_embeddings_beat_random_ones():
    n, tau = 8, 0.1
    aligned = torch.eye(n, 16)[:n]
    loss = InfoNCELoss(tau)
    perfect = float(loss(aligned, aligned))
    # each anchor: positive e^{1/tau}, 2 (n - 1) orthogonal negatives e^0
    assert perfect == pytest.approx(math.log(1 + 2 * (n - 1) * math.exp(-1 / tau)), rel=1e-4)
    random = [float(loss(torch.randn(n, 16, generator=seeded(s)), torch.randn(n, 16, generator=seeded(s + 100))))
              for s in range(5)]
    assert perfect < 0.01 < min(random)
    assert float(loss(aligned, -aligned)) > max(random)  # views pointing away: worse than chance


def test_gradients_reach_both_inputs_in_float32_under_autocast():
    z = torch.randn(4, 8, requires_grad=True)
    z_plus = torch.randn(4, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = InfoNCELoss(0.1)(z.bfloat16(), z_plus.bfloat16())
    assert out.dtype == torch.float32 and out.ndim == 0
    out.backward()
    assert z.grad.abs().sum() > 0 and z_plus.grad.abs().sum() > 0


def test_rejects_bad_shapes_and_temperatures():
    with pytest.raises(ValueError, match="one shape"):
        InfoNCELoss()(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(0.0)
