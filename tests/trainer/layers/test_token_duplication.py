import pytest
import torch

from trainer.layers.patchify import patchify, unpatchify
from trainer.layers.token_duplication import duplicate_tokens


def test_four_copies_land_on_the_sub_regions_of_their_patch():
    h, w = 2, 3  # not square, so a transposed layout would show
    tokens = torch.randn(2, h * w, 5)
    fine = duplicate_tokens(tokens, (h, w), k=4)
    assert fine.shape == (2, 4 * h * w, 5)
    for i in range(h):
        for j in range(w):
            for a in (0, 1):
                for b in (0, 1):
                    assert torch.equal(fine[:, (2 * i + a) * (2 * w) + (2 * j + b)], tokens[:, i * w + j])


def test_each_position_gets_exactly_one_copy_per_token():
    owner = duplicate_tokens(torch.arange(12)[None], (3, 4), k=4)[0]
    assert torch.equal(torch.bincount(owner), torch.full((12,), 4))


def test_fine_patches_of_a_token_tile_its_own_region_of_the_2x_image():
    p, h, w, c = 4, 2, 3, 7
    image = torch.randn(2, c, 2 * h * p, 2 * w * p)
    fine_patches = patchify(image, p)  # (N, 4L, p*p*C), raster order of the 2h x 2w grid
    owner = duplicate_tokens(torch.arange(h * w)[None], (h, w), k=4)[0]
    for i in range(h):
        for j in range(w):
            mine = fine_patches[:, owner == i * w + j]  # its 4 sub-patches, in fine raster order
            tiled = unpatchify(mine, p, grid_size=(2, 2))
            assert torch.equal(tiled, image[:, :, 2 * p * i : 2 * p * (i + 1), 2 * p * j : 2 * p * (j + 1)])


def test_k_must_be_a_square():
    with pytest.raises(ValueError):
        duplicate_tokens(torch.zeros(1, 4, 2), (2, 2), k=3)
