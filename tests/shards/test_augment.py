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
    with pytest.raises(KeyError, match=r"unknown augmentation 'simclr'; known: \['mae', 'none'\]"):
        Augment("simclr", 16)
