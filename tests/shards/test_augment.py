"""Named augmentations on stored pixels: channels first out, dtype and range kept for uint8, uint16
and 7-channel images, one crop and flip for all planes, seeded, and "none" leaves pixels alone."""

from __future__ import annotations

import numpy as np
import pytest

from shards.augment import AUGMENTATIONS, Augment


@pytest.mark.parametrize("shape,dtype", [((40, 30), np.uint16), ((40, 30, 3), np.uint8), ((40, 30, 7), np.uint16)])
@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_channels_first_dtype_and_range_kept(name, shape, dtype):
    rng = np.random.default_rng(0)
    pixels = rng.integers(100, np.iinfo(dtype).max - 100, size=shape, dtype=dtype)
    out = Augment(name, 24, seed=0)(pixels)
    channels = 1 if len(shape) == 2 else shape[2]
    assert out.shape == (channels, 24, 24) and out.dtype == dtype
    assert out.min() >= pixels.min() and out.max() <= pixels.max()  # bilinear: no overshoot to clip


def test_all_planes_of_a_7_channel_image_get_the_same_crop_and_flip():
    base = np.add.outer(np.arange(64) * 97, np.arange(64) * 13).astype(np.uint16)  # no symmetry to hide a flip
    pixels = np.stack([base + 5000 * c for c in range(7)], axis=2)
    augment = Augment("mae", 32, seed=1)
    for _ in range(5):
        out = augment(pixels).astype(np.int64)
        for c in range(1, 7):  # within the rounding of interpolated uint16; another crop or flip is far off
            assert np.abs(out[c] - out[0] - 5000 * c).max() <= 1


def test_seeded_and_none_leaves_a_right_sized_image_alone():
    pixels = np.random.default_rng(0).integers(0, 65536, size=(32, 32), dtype=np.uint16)
    first = [Augment("mae", 16, seed=7)(pixels) for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], Augment("mae", 16, seed=8)(pixels))
    np.testing.assert_array_equal(Augment("none", 32)(pixels)[0], pixels)


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown augmentation 'simclr'; known: \['mae', 'none'\]"):
        Augment("simclr", 16)


def test_drawing_then_applying_to_the_crop_alone_is_the_same_as_augmenting_the_image():
    pixels = np.random.default_rng(3).integers(0, 65536, size=(50, 40, 3), dtype=np.uint16)
    whole, parts = Augment("mae", 24, seed=5), Augment("mae", 24, seed=5)
    for _ in range(10):
        crop = parts.draw(50, 40)
        region = np.ascontiguousarray(pixels[crop.top:crop.top + crop.height, crop.left:crop.left + crop.width])
        np.testing.assert_array_equal(parts.apply(region, crop), whole(pixels))


@pytest.mark.parametrize("height,width", [(224, 224), (100, 300)])
def test_mae_crops_are_drawn_as_torchvision_draws_them(height, width):
    """The same distribution as torchvision's RandomResizedCrop.get_params (what MAE calls): share
    of the area, aspect ratio and position, over 3000 draws each (different random streams)."""
    import torch
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    image = torch.zeros(1, height, width)
    theirs = np.array([RandomResizedCrop.get_params(image, (0.2, 1.0), (3 / 4, 4 / 3)) for _ in range(3000)])
    augment = Augment("mae", 16, seed=0)
    ours = np.array([augment.draw(height, width)[:4] for _ in range(3000)])
    for boxes in (ours, theirs):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= height).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= width).all()

    def summary(boxes):
        area = boxes[:, 2] * boxes[:, 3] / (height * width)
        centre = (boxes[:, 0] + boxes[:, 2] / 2) / height
        return area.mean(), np.log(boxes[:, 3] / boxes[:, 2]).mean(), centre.mean(), area.std()

    np.testing.assert_allclose(summary(ours), summary(theirs), atol=0.02)


@pytest.mark.parametrize("height,width", [(1, 50), (50, 1), (3, 3)])
def test_crops_that_cannot_fit_fall_back_to_torchvisions_centre_crop(height, width):
    import torch
    from torchvision.transforms import RandomResizedCrop

    box = Augment("mae", 16, seed=0).draw(height, width)
    if (height, width) != (3, 3):  # ten tries never fit: the fallback, which has no randomness
        assert tuple(box[:4]) == RandomResizedCrop.get_params(torch.zeros(1, height, width), (0.2, 1.0), (3 / 4, 4 / 3))
    assert box.top + box.height <= height and box.left + box.width <= width and box.height >= 1 and box.width >= 1


def test_a_flip_mirrors_the_crop_and_half_the_crops_are_flipped():
    pixels = np.add.outer(np.arange(16) * 100, np.arange(16)).astype(np.uint16)
    augment = Augment("none", 16)
    from shards.augment import Crop
    np.testing.assert_array_equal(augment.apply(pixels, Crop(0, 0, 16, 16, flip=True))[0], pixels[:, ::-1])
    flips = [Augment("mae", 8, seed=s).draw(16, 16).flip for s in range(400)]
    assert 150 < sum(flips) < 250
