import math

import pytest
import torch

from trainer.losses.vicreg import VICRegLoss, VICRegTerms


def terms_by_loops(za: torch.Tensor, zb: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> tuple[float, float, float]:
    """Eq. 6-8 of paper 002 written out element by element (invariance as VICReg's mean squared
    error, eps under the root as VICReg eq. 1), for both branches: their variance terms averaged
    and covariance terms summed, as main_vicreg.py computes them."""
    b, d = len(za), len(za[0])
    za, zb = za.tolist(), zb.tolist()
    invariance = sum((za[i][j] - zb[i][j]) ** 2 for i in range(b) for j in range(d)) / (b * d)

    def variance(z):
        total = 0.0
        for j in range(d):
            mean = sum(z[i][j] for i in range(b)) / b
            var = sum((z[i][j] - mean) ** 2 for i in range(b)) / (b - 1)
            total += max(0.0, gamma - math.sqrt(var + eps))
        return total / d

    def covariance(z):
        means = [sum(z[i][j] for i in range(b)) / b for j in range(d)]
        total = 0.0
        for l in range(d):
            for q in range(d):
                if l != q:
                    c = sum((z[i][l] - means[l]) * (z[i][q] - means[q]) for i in range(b)) / (b - 1)
                    total += c * c
        return total / d

    return invariance, (variance(za) + variance(zb)) / 2, covariance(za) + covariance(zb)


def test_terms_and_total_match_the_equations_written_with_loops():
    torch.manual_seed(0)
    za = torch.randn(7, 5, dtype=torch.float64) * torch.tensor([0.3, 0.8, 1.5, 2.0, 0.05], dtype=torch.float64)
    zb = za + 0.4 * torch.randn(7, 5, dtype=torch.float64)
    loss = VICRegLoss()
    inv, var, cov = terms_by_loops(za, zb)
    terms = loss.terms(za, zb)
    assert terms.invariance.item() == pytest.approx(inv, rel=1e-6)
    assert terms.variance.item() == pytest.approx(var, rel=1e-6)
    assert terms.covariance.item() == pytest.approx(cov, rel=1e-6)
    assert var > 0 and cov > 0 and inv > 0  # every term is exercised
    assert loss(za, zb).item() == pytest.approx(25 * inv + 25 * var + 1 * cov, rel=1e-6)
    weighted = VICRegLoss(sim_coeff=2.0, std_coeff=3.0, cov_coeff=5.0, gamma=2.0)
    inv2, var2, cov2 = terms_by_loops(za, zb, gamma=2.0)
    assert weighted(za, zb).item() == pytest.approx(2 * inv2 + 3 * var2 + 5 * cov2, rel=1e-6)


def test_loss_is_symmetric_in_the_two_branches():
    torch.manual_seed(1)
    za, zb = torch.randn(16, 12), torch.randn(16, 12) * 0.5
    loss = VICRegLoss()
    assert torch.allclose(loss(za, zb), loss(zb, za))


def test_invariance_is_zero_for_identical_embeddings():
    z = torch.randn(10, 6)
    assert VICRegLoss().terms(z, z.clone()).invariance.item() == 0.0


def test_variance_term_is_zero_when_every_dimension_has_std_above_the_threshold():
    torch.manual_seed(2)
    z = torch.randn(32, 8)
    z = (z - z.mean(0)) / z.std(0) * torch.linspace(1.0, 4.0, 8)  # stds exactly 1 .. 4
    assert VICRegLoss().terms(z, z + 0.1).variance.item() == 0.0
    assert VICRegLoss(gamma=2.0).terms(z, z).variance.item() > 0  # the same batch under a higher threshold


def test_collapsed_batch_pays_the_whole_variance_hinge():
    z = torch.ones(8, 4) * torch.tensor([1.0, -2.0, 3.0, 0.5])  # every row the same
    terms = VICRegLoss().terms(z, z)
    assert terms.variance.item() == pytest.approx(1 - math.sqrt(1e-4))  # each branch's, averaged
    assert terms.covariance.item() == 0.0


def test_covariance_is_zero_for_decorrelated_dimensions():
    # Columns of a Hadamard matrix other than the all-ones one: zero mean, mutually orthogonal.
    h = torch.tensor([[1.0]])
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = h[:, 1:] * torch.arange(1.0, 8.0)  # (8, 7), different scales, still uncorrelated
    assert VICRegLoss().terms(z, z).covariance.item() == pytest.approx(0.0, abs=1e-10)
    mixed = z.clone()
    mixed[:, 1] += mixed[:, 0]  # now C_01 = C_10 = Var(z_:0) = 8/7, every other pair still 0
    expected = 2 * (2 * (8 / 7) ** 2) / 7  # two branches, two entries, / d
    assert VICRegLoss().terms(mixed, mixed).covariance.item() == pytest.approx(expected, rel=1e-5)


def test_low_precision_inputs_are_scored_in_float32():
    torch.manual_seed(3)
    za, zb = torch.randn(16, 32).bfloat16(), torch.randn(16, 32).bfloat16()
    loss = VICRegLoss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(za, zb)
    assert value.dtype == torch.float32
    assert torch.allclose(value, loss(za.float(), zb.float()))


def test_terms_are_named_and_bad_shapes_are_refused():
    terms = VICRegLoss().terms(torch.randn(4, 3), torch.randn(4, 3))
    assert isinstance(terms, VICRegTerms) and all(t.ndim == 0 for t in terms)
    with pytest.raises(ValueError, match="one shape"):
        VICRegLoss()(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="at least 2"):
        VICRegLoss()(torch.randn(1, 3), torch.randn(1, 3))
