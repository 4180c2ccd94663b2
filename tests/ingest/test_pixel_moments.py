"""Dataset statistics of one image: per-channel sums and sums of squares, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.pixel_moments import pixel_moments


@pytest.mark.parametrize("shape, dtype", [((37, 23), np.uint16), ((40, 30, 3), np.uint8), ((16, 16, 7), np.uint16),
                                            ((33, 17), np.uint8), ((9, 11, 7), np.uint8), ((21, 19, 4), np.uint8),
                                            ((13, 12, 2), np.uint16), ((10, 9, 1), np.uint8), ((15, 14, 3), np.uint16),
                                            ((11, 10, 5), np.uint16)])
def test_moments_are_exact_per_channel(shape, dtype):
    pixels = np.random.default_rng(0).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    sums, squares, count = pixel_moments(pixels)
    values = pixels.reshape(shape[0] * shape[1], -1).astype(object)  # Python integers: no rounding at all
    assert count == shape[0] * shape[1]
    assert sums == [float(sum(values[:, c])) for c in range(values.shape[1])]
    assert squares == [float(sum(v * v for v in values[:, c])) for c in range(values.shape[1])]


@pytest.mark.parametrize("shape, dtype", [((1414, 1414), np.uint16), ((1414, 1414, 3), np.uint16),
                                            ((2000, 2000, 4), np.uint8), ((1414, 1414, 7), np.uint16)])
def test_moments_of_the_brightest_large_image_do_not_overflow(shape, dtype):
    """All pixels at the dtype's maximum, two million of them or more: the largest sums there are
    (integer accumulators inside OpenCV, float64 squares) must still come out exact."""
    top = int(np.iinfo(dtype).max)
    sums, squares, count = pixel_moments(np.full(shape, top, dtype))
    channels = 1 if len(shape) == 2 else shape[2]
    assert sums == [float(count * top)] * channels
    assert squares == [float(count * top * top)] * channels


@pytest.mark.parametrize("channels", [1, 3, 7])
def test_moments_of_a_crop_view_are_those_of_its_copy(channels):
    """Crops reach pixel_moments as strided views into their source image (ingest.crops)."""
    image = np.random.default_rng(1).integers(0, 65536, (40, 50, channels), dtype=np.uint16)
    view = image[5:29, 7:38]
    assert not view.flags.c_contiguous
    assert pixel_moments(view) == pixel_moments(view.copy())
    assert pixel_moments(view)[0] == [float(view[:, :, c].astype(np.int64).sum()) for c in range(channels)]
