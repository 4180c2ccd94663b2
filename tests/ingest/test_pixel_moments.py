"""Dataset statistics of one image: per-channel sums and sums of squares, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.pixel_moments import pixel_moments


@pytest.mark.parametrize("shape, dtype", [((37, 23), np.uint16), ((40, 30, 3), np.uint8), ((16, 16, 7), np.uint16),
                                            ((33, 17), np.uint8), ((9, 11, 7), np.uint8)])
def test_moments_are_exact_per_channel(shape, dtype):
    pixels = np.random.default_rng(0).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    sums, squares, count = pixel_moments(pixels)
    values = pixels.reshape(shape[0] * shape[1], -1).astype(object)  # Python integers: no rounding at all
    assert count == shape[0] * shape[1]
    assert sums == [float(sum(values[:, c])) for c in range(values.shape[1])]
    assert squares == [float(sum(v * v for v in values[:, c])) for c in range(values.shape[1])]
