import pytest
import torch

from trainer.losses.masked_reconstruction import MaskedReconstructionLoss


def paper_loss(pred, target, mask, norm_pix_loss):
    """MAE §3 / MIRAM eq. 7 written out: per-patch MSE, averaged over the removed patches."""
    total, count = 0.0, 0
    n_samples, n_patches, size = pred.shape
    for n in range(n_samples):
        for l in range(n_patches):
            if mask[n, l] == 0:
                continue
            t = target[n, l]
            if norm_pix_loss:
                mean = sum(t.tolist()) / size
                var = sum((v - mean) ** 2 for v in t.tolist()) / (size - 1)
                t = (t - mean) / (var + 1e-6) ** 0.5
            total += sum(((pred[n, l] - t) ** 2).tolist()) / size
            count += 1
    return total / count


def random_case(seed=0, n=3, length=10, size=12):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, length, size, generator=g, dtype=torch.float64)
    target = 3 * torch.randn(n, length, size, generator=g, dtype=torch.float64) + 1
    mask = (torch.rand(n, length, generator=g) < 0.6).double()
    return pred, target, mask


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_equals_the_paper_definition(norm_pix_loss):
    pred, target, mask = random_case()
    loss = MaskedReconstructionLoss(norm_pix_loss=norm_pix_loss)(pred, target, mask)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(paper_loss(pred, target, mask, norm_pix_loss), rel=1e-10)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_only_removed_patches_count(norm_pix_loss):
    pred, target, mask = random_case(seed=1)
    criterion = MaskedReconstructionLoss(norm_pix_loss=norm_pix_loss)
    visible = (mask == 0).nonzero()[0]
    removed = (mask == 1).nonzero()[0]
    changed = pred.clone()
    changed[visible[0], visible[1]] += 100.0
    assert criterion(changed, target, mask) == criterion(pred, target, mask)
    changed = pred.clone()
    changed[removed[0], removed[1]] += 100.0
    assert criterion(changed, target, mask) > criterion(pred, target, mask)


def test_perfect_prediction_scores_zero():
    _, target, mask = random_case(seed=2)
    assert MaskedReconstructionLoss()(target, target, mask) == 0


def test_norm_pix_loss_ignores_each_patch_brightness_and_contrast():
    pred, target, mask = random_case(seed=3)
    g = torch.Generator().manual_seed(4)
    scale = torch.rand(*target.shape[:2], 1, generator=g, dtype=torch.float64) * 5 + 0.5
    shift = torch.randn(*target.shape[:2], 1, generator=g, dtype=torch.float64) * 10
    criterion = MaskedReconstructionLoss(norm_pix_loss=True)
    assert criterion(pred, target * scale + shift, mask).item() == pytest.approx(criterion(pred, target, mask).item(), rel=1e-5)
