"""Finishing crops on the device: a crop held at its own size in the corner of its row, edges
repeated, resizes to what OpenCV's bilinear resize gives (before rounding), whatever the rest of
the row holds; rows already final are left exactly as they are; flips mirror only their rows."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from shards.device_crops import finish_crops, repeat_edges


def corner_rows(crops: list[np.ndarray], size: int, fill: float) -> np.ndarray:
    rows = np.full((len(crops), 1, size, size), fill, np.float32)
    for row, crop in zip(rows, crops):
        h, w = crop.shape
        row[0, :h, :w] = crop
        repeat_edges(row, h, w)
    return rows


@pytest.mark.parametrize("size", [16, 33])
def test_crops_resize_as_opencv_enlarges_them(size):
    rng = np.random.default_rng(size)
    shapes = [(1, 1), (1, size), (size, 1), (5, 7), (size - 1, 3), (size // 2, size), (size, size - 2)]
    crops = [rng.uniform(0, 60000, shape).astype(np.float32) for shape in shapes]
    for fill in (0.0, 1e9):  # the rest of the row is never read
        images = torch.from_numpy(corner_rows(crops, size, fill))
        sizes = np.array(shapes, np.int32)
        out = finish_crops(images, sizes, np.zeros(len(shapes), bool)).numpy()
        for got, crop in zip(out, crops):
            expected = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_allclose(got[0], expected, rtol=1e-5, atol=0.05)


def test_final_rows_stay_exact_and_flips_mirror_their_rows_only():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.uniform(0, 65535, (4, 3, 8, 8)).astype(np.float32))
    before = images.clone()
    sizes = np.array([[8, 8], [8, 8], [4, 8], [8, 8]], np.int32)
    flip = np.array([False, True, True, False])
    out = finish_crops(images, sizes, flip)
    torch.testing.assert_close(out[0], before[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1], before[1].flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(out[3], before[3], rtol=0, atol=0)
    resized = cv2.resize(before[2, :, :4].permute(1, 2, 0).numpy(), (8, 8), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out[2].numpy(), resized.transpose(2, 0, 1)[:, :, ::-1], rtol=1e-5, atol=0.05)


def test_a_description_of_another_batch_is_refused():
    with pytest.raises(ValueError, match=r"do not describe a batch of 2"):
        finish_crops(torch.zeros(2, 1, 4, 4), np.zeros((3, 2), np.int32), np.zeros(2, bool))
