import pytest
import torch

from trainer.layers.masking import num_visible, random_masking, unshuffle_with_mask_tokens


@pytest.mark.parametrize("length,ratio,keep", [(196, 0.75, 49), (49, 0.75, 12), (49, 0.6, 19), (64, 0.8, 12),
                                               (100, 0.71, 29), (4, 0.5, 2), (10, 0.0, 10)])
def test_keeps_the_truncated_unmasked_share_as_mae_and_dama_do(length, ratio, keep):
    tokens = torch.randn(5, length, 8)
    out = random_masking(tokens, ratio)
    assert num_visible(length, ratio) == keep
    assert out.visible.shape == (5, keep, 8)
    assert torch.equal(out.mask.sum(dim=1), torch.full((5,), float(length - keep)))


def test_masks_differ_between_samples():
    mask = random_masking(torch.randn(8, 196, 4), 0.75).mask
    assert len({tuple(row.tolist()) for row in mask}) == 8


def test_ids_restore_inverts_ids_shuffle_and_visible_are_the_unmasked_tokens():
    tokens = torch.randn(4, 20, 3)
    out = random_masking(tokens, 0.75)
    arange = torch.arange(20).expand(4, -1)
    assert torch.equal(torch.gather(out.ids_shuffle, 1, out.ids_restore), arange)
    assert torch.equal(torch.gather(out.ids_restore, 1, out.ids_shuffle), arange)
    keep = out.visible.shape[1]
    for n in range(4):
        kept_ids = out.ids_shuffle[n, :keep]
        assert torch.equal(out.visible[n], tokens[n, kept_ids])
        assert torch.equal(out.mask[n, kept_ids], torch.zeros(keep))
        assert out.mask[n].sum() == 20 - keep


def test_seeded_masks_repeat_and_other_seeds_differ():
    tokens = torch.randn(3, 49, 2)

    def mask(seed):
        return random_masking(tokens, 0.75, torch.Generator().manual_seed(seed)).mask

    assert torch.equal(mask(7), mask(7))
    assert not torch.equal(mask(7), mask(8))


def test_unshuffle_puts_visible_tokens_back_and_mask_tokens_elsewhere():
    tokens = torch.randn(2, 16, 6)
    out = random_masking(tokens, 0.5)
    mask_token = torch.full((1, 1, 6), 99.0)
    full = unshuffle_with_mask_tokens(out.visible, mask_token, out.ids_restore)
    removed = out.mask.bool()
    assert torch.equal(full[~removed], tokens[~removed])
    assert torch.all(full[removed] == 99.0)


def test_rejects_ratios_outside_zero_one():
    with pytest.raises(ValueError):
        random_masking(torch.randn(1, 4, 2), 1.0)
