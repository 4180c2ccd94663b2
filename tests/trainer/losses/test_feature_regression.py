import math

import pytest
import torch

from trainer.losses.feature_regression import FeatureRegressionLoss


def paper_loss(pred, target, selected, beta):
    """data2vec eq. 2 written out per element, averaged over channels, then over the selected tokens."""
    total, count = 0.0, 0
    n_samples, n_tokens, dim = pred.shape
    for n in range(n_samples):
        for t in range(n_tokens):
            if selected[n, t] == 0:
                continue
            token = 0.0
            for d in range(dim):
                diff = abs(pred[n, t, d].item() - target[n, t, d].item())
                token += 0.5 * diff * diff / beta if diff < beta else diff - 0.5 * beta
            total += token / dim
            count += 1
    return total / count


def random_case(seed=0, n=3, tokens=7, dim=5):
    g = torch.Generator().manual_seed(seed)
    pred = 2 * torch.randn(n, tokens, dim, generator=g, dtype=torch.float64)
    target = 2 * torch.randn(n, tokens, dim, generator=g, dtype=torch.float64)
    selected = (torch.rand(n, tokens, generator=g) < 0.5).double()
    selected[0, 0] = 1
    return pred, target, selected


@pytest.mark.parametrize("beta", [2.0, 0.5, 1e-12])
def test_equals_the_paper_definition(beta):
    pred, target, selected = random_case()
    loss = FeatureRegressionLoss(beta=beta)(pred, target, selected)
    assert loss.shape == ()
    both_regimes = (pred - target).abs()[selected.bool()]
    assert (both_regimes < 2).any() and (both_regimes >= 2).any()
    assert loss.item() == pytest.approx(paper_loss(pred, target, selected, beta), rel=1e-6)


def test_beta_zero_is_the_l1_distance():
    pred, target, selected = random_case(1)
    expected = (pred - target).abs().mean(dim=-1)[selected.bool()].mean()
    assert FeatureRegressionLoss(beta=0.0)(pred, target, selected).item() == pytest.approx(expected.item(), rel=1e-12)


def test_tokens_not_selected_are_ignored_even_when_not_finite():
    pred, target, selected = random_case(2)
    loss = FeatureRegressionLoss()(pred, target, selected)
    corrupted = pred.clone()
    corrupted[selected == 0] = math.nan
    target2 = target.clone()
    target2[selected == 0] = math.inf
    assert FeatureRegressionLoss()(corrupted, target2, selected).item() == pytest.approx(loss.item(), rel=1e-12)
    pred.requires_grad_(True)
    FeatureRegressionLoss()(pred, target, selected).backward()
    assert not pred.grad[selected == 0].any() and pred.grad[selected == 1].abs().sum() > 0


def test_invariants():
    pred, target, selected = random_case(3)
    loss_fn = FeatureRegressionLoss(beta=2.0)
    loss = loss_fn(pred, target, selected)
    assert loss_fn(target, target, selected).item() == 0.0
    assert loss_fn(target, pred, selected).item() == pytest.approx(loss.item(), rel=1e-12)  # symmetric
    shift = torch.randn(pred.shape[-1], dtype=torch.float64)
    assert loss_fn(pred + shift, target + shift, selected).item() == pytest.approx(loss.item(), rel=1e-12)
    # one pool over the batch: a batch and its copy side by side give the same mean
    doubled = loss_fn(torch.cat([pred, pred]), torch.cat([target, target]), torch.cat([selected, selected]))
    assert doubled.item() == pytest.approx(loss.item(), rel=1e-12)
    small = 0.1 * (pred - target)  # |d| < beta everywhere: the quadratic branch, MSE / (2 beta)
    mse = (small**2).mean(dim=-1)[selected.bool()].mean()
    assert loss_fn(target + small, target, selected).item() == pytest.approx(mse.item() / 4.0, rel=1e-12)
    far = loss_fn(target + 10.0, target, selected)  # |d| = 10 >= beta: the linear branch, |d| - beta / 2
    assert far.item() == pytest.approx(9.0, rel=1e-12)


def test_rejects_bad_arguments():
    pred, target, selected = random_case()
    with pytest.raises(ValueError):
        FeatureRegressionLoss(beta=-1.0)
    with pytest.raises(ValueError, match="shapes"):
        FeatureRegressionLoss()(pred, target[:, :-1], selected)
