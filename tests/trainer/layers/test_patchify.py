import pytest
import torch

from trainer.layers.patchify import patchify, unpatchify


@pytest.mark.parametrize("channels", [1, 3, 7])
def test_round_trip_is_exact_for_any_channel_count(channels):
    imgs = torch.randn(2, channels, 48, 32)
    patches = patchify(imgs, 16)
    assert patches.shape == (2, 3 * 2, 16 * 16 * channels)
    assert torch.equal(unpatchify(patches, 16, grid_size=(3, 2)), imgs)


def test_square_grid_is_the_default():
    imgs = torch.randn(1, 7, 32, 32)
    assert torch.equal(unpatchify(patchify(imgs, 8), 8), imgs)


def test_patch_l_holds_its_block_in_row_column_channel_order():
    n, c, p, h, w = 2, 3, 4, 3, 5
    imgs = torch.randn(n, c, h * p, w * p)
    patches = patchify(imgs, p)
    for i in range(h):
        for j in range(w):
            block = imgs[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p]  # (N, C, p, p)
            expected = torch.stack([block[:, ch, a, b] for a in range(p) for b in range(p) for ch in range(c)], dim=1)
            assert torch.equal(patches[:, i * w + j], expected)


def test_rejects_images_that_do_not_split_into_patches():
    with pytest.raises(ValueError):
        patchify(torch.zeros(1, 1, 30, 32), 16)
    with pytest.raises(ValueError):
        unpatchify(torch.zeros(1, 6, 256), 16)  # 6 patches, no square grid
