"""Lesion masks on the tissue grid: a cell is set exactly when any lesion pixel overlaps it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ingest.tissue import downscale_mask


@pytest.mark.parametrize("seed", range(40))
def test_downscaled_mask_equals_area_averaging_of_the_whole_mask(seed):
    rng = np.random.default_rng(seed)
    rows, columns = (int(v) for v in rng.integers(50, 400, 2))
    h, w = (int(v) for v in rng.integers(5, 50, 2))
    mask = np.zeros((rows, columns), np.uint8)
    for _ in range(int(rng.integers(0, 4))):
        y, x = rng.integers(0, rows), rng.integers(0, columns)
        mask[y : y + rng.integers(1, 30), x : x + rng.integers(1, 30)] = 255
    reference = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0
    assert np.array_equal(downscale_mask(mask, (h, w)), reference)
