import pytest
import torch

from trainer.layers.adaptive_mask import adaptive_counts, adaptive_mask


def student1_case(n=6, length=64, keep=13, seed=0):
    """Per-sample random masks with `keep` zeros each (different in every sample) and distinct losses."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.rand(n, length, generator=g).argsort(dim=1)
    mask1 = torch.ones(n, length)
    mask1.scatter_(1, ids[:, :keep], 0.0)
    loss = torch.rand(n, length, generator=g) + 0.1
    return mask1, loss


def sets(mask_row):
    """(L,) 0/1 -> (seen, removed) as Python sets of patch positions."""
    values = mask_row.tolist()
    return {i for i, v in enumerate(values) if v == 0}, {i for i, v in enumerate(values) if v == 1}


@pytest.mark.parametrize(
    "length, keep, ratio, overlap",
    [(64, 13, 0.5, 6), (64, 13, 0.6, 7), (49, 7, 0.5, 3), (64, 12, 0.5, 6), (64, 13, 0.0, 0), (16, 3, 0.5, 1)],
)
def test_counts_and_set_relations_per_sample(length, keep, ratio, overlap):
    # overlap = floor(K * ratio), line 11's int(): 13 * 0.6 = 7.8 -> 7 and 7 * 0.5 = 3.5 -> 3
    # (round() would say 8 and 4)
    assert adaptive_counts(length, keep, ratio) == (overlap, length - 2 * keep + overlap)
    mask1, loss = student1_case(length=length, keep=keep)
    out = adaptive_mask(mask1, loss, keep, ratio, torch.Generator().manual_seed(1))
    assert out.mask.shape == mask1.shape and out.mask.dtype == torch.float32
    for n in range(mask1.shape[0]):
        seen1, removed1 = sets(mask1[n])
        seen2, removed2 = sets(out.mask[n])
        assert len(seen2) == keep
        assert len(seen1 & seen2) == overlap
        assert len(seen2 - seen1) == keep - overlap
        by_loss = sorted(removed1, key=lambda i: loss[n, i].item())  # student 1's removed patches, easiest first
        hard = set(by_loss[keep - overlap :])  # the L - 2K + O highest losses (lines 14-16)
        assert len(hard) == length - 2 * keep + overlap
        assert hard <= removed2  # line 22: the hardest patches stay masked for student 2
        assert seen2 - seen1 == set(by_loss[: keep - overlap])  # it sees the easiest ones of M1
        assert removed2 == hard | (seen1 - seen2)
        assert out.ids_shuffle[n, :keep].tolist() == sorted(seen2)
    assert torch.equal(out.ids_shuffle.gather(1, out.ids_restore), torch.arange(length).expand_as(mask1))


def test_seen_patches_of_student1_never_count_as_hard_even_with_zero_losses():
    mask1, _ = student1_case()
    zeros = torch.zeros_like(mask1)  # `loss * m1` would tie them with student 1's seen patches
    out = adaptive_mask(mask1, zeros, 13, 0.5, torch.Generator().manual_seed(0))
    seen_by_both = ((1 - mask1) * (1 - out.mask)).sum(dim=1)
    assert seen_by_both.tolist() == [6.0] * 6
    assert (1 - out.mask).sum(dim=1).tolist() == [13.0] * 6


def test_losses_at_patches_student1_saw_are_ignored():
    mask1, loss = student1_case()
    noisy = torch.where(mask1 == 0, 1e6 * torch.rand_like(loss), loss)
    a = adaptive_mask(mask1, loss, 13, 0.5, torch.Generator().manual_seed(3))
    b = adaptive_mask(mask1, noisy, 13, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a.mask, b.mask)


def test_per_sample_permuting_the_batch_permutes_the_masks():
    mask1, loss = student1_case(n=8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(4))
    # overlap 0: no random draw, the whole mask is a function of each sample's own mask and losses
    a = adaptive_mask(mask1, loss, 13, 0.0)
    b = adaptive_mask(mask1[perm], loss[perm], 13, 0.0)
    assert torch.equal(b.mask, a.mask[perm])
    # overlap 0.5: what student 2 does on M1 is deterministic and per sample too
    a = adaptive_mask(mask1, loss, 13, 0.5, torch.Generator().manual_seed(5))
    b = adaptive_mask(mask1[perm], loss[perm], 13, 0.5, torch.Generator().manual_seed(6))
    assert torch.equal(b.mask * mask1[perm], (a.mask * mask1)[perm])
    alone = torch.cat([adaptive_mask(mask1[i : i + 1], loss[i : i + 1], 13, 0.5).mask for i in range(8)])
    assert torch.equal(alone * mask1, a.mask * mask1)


def test_shared_patches_are_drawn_uniformly_from_what_student1_saw_with_the_generator():
    mask1, loss = student1_case(n=1)
    copies = 4000
    mask1, loss = mask1.expand(copies, -1).clone(), loss.expand(copies, -1).clone()
    out = adaptive_mask(mask1, loss, 13, 0.5, torch.Generator().manual_seed(7))
    shared = (1 - mask1) * (1 - out.mask)
    frequency = shared.mean(dim=0)[mask1[0] == 0]
    assert torch.allclose(frequency, torch.full((13,), 6 / 13), atol=0.04)  # 6 of 13, each equally often
    again = adaptive_mask(mask1, loss, 13, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(again.mask, out.mask)


def test_rejects_impossible_settings():
    with pytest.raises(ValueError, match="needs"):
        adaptive_counts(64, 40, 0.1)  # 40 - 4 patches student 1 masked are needed, it masked 24
    assert adaptive_counts(64, 40, 0.5) == (20, 4)  # 40 - 20 <= 24: possible
    with pytest.raises(ValueError, match="overlap_ratio"):
        adaptive_counts(64, 13, 1.5)
    mask1, loss = student1_case()
    with pytest.raises(ValueError, match="must both be"):
        adaptive_mask(mask1, loss[:, :-1], 13, 0.5)
