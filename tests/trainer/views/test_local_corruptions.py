"""PCRLv2's local corruptions: per-sample draws, pixels changed only where each corruption says."""

from __future__ import annotations

import torch

from trainer.views.local_corruptions import LocalCorruptions, cutout_mask, random_cutout, random_grayscale


def test_cutout_zeroes_its_holes_in_every_channel_and_nothing_else():
    images = torch.randn(6, 3, 40, 40) + 5.0  # no pixel is 0 before the cutout
    out, mask = random_cutout(images, holes=2, size=8, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and mask.shape == (6, 1, 40, 40) and mask.dtype == torch.bool
    inside = mask.expand_as(images)
    assert (out[inside] == 0).all()
    assert torch.equal(out[~inside], images[~inside])
    assert torch.equal(out == 0, inside)


def test_cutout_holes_are_drawn_per_sample_and_bounded():
    mask = cutout_mask(50, 32, 32, holes=3, size=8, generator=torch.Generator().manual_seed(1))
    area = mask.flatten(1).sum(1)
    assert (area > 0).all() and (area <= 3 * 8 * 8).all()
    assert len({tuple(m.flatten().nonzero().flatten().tolist()) for m in mask}) == 50  # no two samples alike
    # one hole away from the border is a full size x size square
    single = cutout_mask(200, 32, 32, holes=1, size=8, generator=torch.Generator().manual_seed(2))
    assert single.flatten(1).sum(1).max() == 64
    rows, cols = single.any(-1).flatten(1).sum(1), single.any(-2).flatten(1).sum(1)
    assert (rows <= 8).all() and (cols <= 8).all()


def test_cutout_is_reproducible_with_a_generator():
    a = cutout_mask(4, 16, 16, holes=3, size=5, generator=torch.Generator().manual_seed(7))
    b = cutout_mask(4, 16, 16, holes=3, size=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_grayscale_replaces_the_chosen_samples_channels_by_their_mean():
    images = torch.randn(200, 3, 4, 4)
    out = random_grayscale(images, p=0.5, generator=torch.Generator().manual_seed(0))
    changed = [i for i in range(200) if not torch.equal(out[i], images[i])]
    assert 60 < len(changed) < 140
    for i in range(200):
        if i in changed:
            assert torch.allclose(out[i], images[i].mean(0, keepdim=True).expand(3, 4, 4))
    assert torch.equal(random_grayscale(images, p=0.0), images)
    grey = torch.randn(5, 1, 4, 4)
    assert torch.allclose(random_grayscale(grey, p=1.0), grey)


def test_local_corruptions_change_the_view_and_keep_its_shape():
    images = torch.randn(4, 7, 32, 32)
    out = LocalCorruptions()(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    per_sample = (out - images).abs().flatten(1).amax(1)
    assert (per_sample > 0.1).all()  # jitter is always applied, and there are holes
    # cutout's holes: 3 of round(32 * 32 / 224) = 5 px, all channels 0
    holes = (out == 0).all(dim=1)
    assert (holes.flatten(1).sum(1) > 0).all() and (holes.flatten(1).sum(1) <= 3 * 25).all()


def test_local_corruptions_without_any_is_the_identity_and_without_cutout_leaves_no_holes():
    images = torch.randn(3, 2, 16, 16) + 10.0
    nothing = LocalCorruptions(grayscale=0.0, blur=0.0, jitter=0.0, cutout_holes=0)
    assert torch.equal(nothing(images), images)
    no_holes = LocalCorruptions(cutout_holes=0)(images, torch.Generator().manual_seed(1))
    assert not (no_holes == 0).all(dim=1).any()
