"""ingest.radiograph_crops: whole-image letterbox, black-frame trimming, seeded random crops."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from ingest.radiograph_crops import (RadiographCropParams, content_box, radiograph_crops, random_boxes,
                                     whole_box)


def framed(h: int, w: int, *, left: int = 0, top: int = 0, dtype=np.uint8) -> np.ndarray:
    """A noisy mid-grey picture with a black frame `left` columns wide and `top` rows high."""
    peak = np.iinfo(dtype).max
    image = np.random.default_rng(0).integers(peak // 4, peak // 2, (h, w)).astype(dtype)
    image[:, :left] = 0
    image[:top, :] = 0
    return image


def test_whole_box_is_the_centred_enclosing_square():
    assert whole_box((390, 320)) == (-35, 0, 355, 390)
    assert whole_box((256, 256)) == (0, 0, 256, 256)


def test_whole_crop_keeps_the_picture_unstretched():
    image = framed(390, 320)
    (crop,), _ = radiograph_crops(image, "whole", RadiographCropParams(size=390), random.Random(0))
    assert crop.pixels.shape == (390, 390) and crop.pixels.dtype == np.uint8
    assert np.array_equal(crop.pixels[:, 35:355], image)  # the film, untouched
    assert not crop.pixels[:, :35].any() and not crop.pixels[:, 355:].any()  # padding is air


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_content_box_trims_a_black_frame(dtype):
    assert content_box(framed(300, 200, left=17, top=9, dtype=dtype)) == (17, 9, 200, 300)
    assert content_box(np.zeros((50, 40), dtype)) == (0, 0, 40, 50)  # all frame: keep everything


def test_content_box_of_the_real_framed_nih_film(shared_data):
    """00000013_003.png carries a black band on its left; the other edges are film."""
    image = cv2.imread(str(shared_data / "nih-chestxray14" / "00000013_003.png"), cv2.IMREAD_UNCHANGED)
    x0, y0, x1, y1 = content_box(image)
    assert 15 <= x0 <= 40 and (y0, x1, y1) == (0, 1024, 1024)
    assert image[:, : x0 - 5].max() <= 8 and image[:, x0 + 5].mean() > 8
    real = cv2.imread(str(shared_data / "nih-chestxray14" / "00000002_000.png"), cv2.IMREAD_UNCHANGED)
    assert content_box(real) == (0, 0, 1024, 1024)


def test_random_boxes_stay_inside_and_follow_the_seed():
    content = (17, 9, 200, 300)
    boxes = random_boxes(content, count=50, side=64, rng=random.Random(1))
    assert all(17 <= x0 and 9 <= y0 and x1 <= 200 and y1 <= 300 and x1 - x0 == y1 - y0 == 64
               for x0, y0, x1, y1 in boxes)
    assert boxes == random_boxes(content, count=50, side=64, rng=random.Random(1))
    assert boxes != random_boxes(content, count=50, side=64, rng=random.Random(2))
    assert len({b[0] for b in boxes}) > 10  # spread out, not one position
    with pytest.raises(ValueError):
        random_boxes(content, count=1, side=184, rng=random.Random(0))


def test_random_crops_clamp_their_side_to_a_small_film():
    image = framed(120, 100, left=10)
    params = RadiographCropParams(size=32, random_per_image=3, random_side=512)
    crops, notes = radiograph_crops(image, "random", params, random.Random(0))
    assert notes["random_side_clamped"] == 1 and len(crops) == 3
    for crop in crops:
        x0, y0, x1, y1 = crop.box
        assert x1 - x0 == 90 and x0 >= 10 and crop.pixels.shape == (32, 32) and crop.kind == "random"
        assert np.array_equal(crop.pixels, cv2.resize(image[y0:y1, x0:x1], (32, 32), interpolation=cv2.INTER_AREA))
    _, notes = radiograph_crops(framed(600, 600), "random", params, random.Random(0))
    assert notes["random_side_clamped"] == 0
