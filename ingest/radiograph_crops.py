"""Whole-image and random square crops of one grayscale radiograph (chest X-rays: NIH, CheXpert).

`whole` keeps the full field of view: the image is centred in the smallest enclosing square (the
padding is 0, air) and resized, so a portrait CheXpert film is not stretched. `random` takes square
crops of a fixed side in source pixels at seeded positions inside the image's content box: the
black frame that some digitised films carry (NIH 00000013_003.png has a 25-pixel one on its left)
is trimmed first, so no crop is mostly frame.

Boxes are (x0, y0, x1, y1) in source pixels, end-exclusive, as in ingest.crops.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ingest.crops import Box, crop_padded, resize_to

CROP_KINDS = ("whole", "random")
# A pixel darker than 1/32 of the image's peak is black; a border row or column is frame while
# fewer than a tenth of its pixels are brighter than that (film edges are noisy, never all zero).
BLACK_LEVEL = 1 / 32
CONTENT_FRACTION = 0.1
# Rows and columns are scored on every 4th pixel: exact enough for a frame test, 16x less work.
_STRIDE = 4


@dataclass(frozen=True)
class RadiographCropParams:
    size: int = 224  # output side in pixels
    random_per_image: int = 4
    random_side: int = 512  # random crop side in source pixels, before resizing to `size`


@dataclass(frozen=True)
class Crop:
    kind: str  # "whole" or "random"
    box: Box  # in source pixels; a whole crop's box may reach past the image (padding)
    pixels: np.ndarray  # (size, size), the source dtype


def whole_box(shape: tuple[int, int]) -> Box:
    """The smallest square centred on a (H, W) image that holds all of it."""
    h, w = shape
    side = max(h, w)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def content_box(pixels: np.ndarray) -> Box:
    """(H, W) radiograph -> the box left after trimming black frame rows and columns from each
    edge; the whole image when nothing but frame would remain (an all-black image)."""
    h, w = pixels.shape
    bright = pixels > pixels.max() * BLACK_LEVEL
    rows = np.flatnonzero(bright[:, ::_STRIDE].mean(axis=1) >= CONTENT_FRACTION)
    cols = np.flatnonzero(bright[::_STRIDE, :].mean(axis=0) >= CONTENT_FRACTION)
    if rows.size == 0 or cols.size == 0:
        return 0, 0, w, h
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def random_boxes(content: Box, *, count: int, side: int, rng: random.Random) -> list[Box]:
    """`count` square boxes of `side` pixels, each wholly inside `content`, at uniform positions
    drawn from `rng` (boxes may overlap). `side` must fit in the content box."""
    x0, y0, x1, y1 = content
    if side > x1 - x0 or side > y1 - y0:
        raise ValueError(f"crop side {side} does not fit in content box {content}")
    boxes = []
    for _ in range(count):
        left, top = rng.randrange(x0, x1 - side + 1), rng.randrange(y0, y1 - side + 1)
        boxes.append((left, top, left + side, top + side))
    return boxes


def radiograph_crops(pixels: np.ndarray, kind: str, params: RadiographCropParams,
                     rng: random.Random) -> tuple[list[Crop], Counter]:
    """(H, W) uint8/uint16 radiograph -> its crops of `kind`, each (size, size) in the source
    dtype, and notes: `random_side_clamped` counts images whose content box is smaller than
    random_side (their random crops take the content's shorter side instead, so a small
    CheXpert-v1.0-small film still gives crops)."""
    notes: Counter = Counter()
    if kind == "whole":
        box = whole_box(pixels.shape)
        return [Crop("whole", box, resize_to(crop_padded(pixels, box), params.size))], notes
    if kind != "random":
        raise ValueError(f"crop kind must be one of {CROP_KINDS}, got {kind!r}")
    content = content_box(pixels)
    side = min(params.random_side, content[2] - content[0], content[3] - content[1])
    notes["random_side_clamped"] += int(side < params.random_side)
    boxes = random_boxes(content, count=params.random_per_image, side=side, rng=rng)
    crops = [Crop("random", box, resize_to(pixels[box[1]:box[3], box[0]:box[2]], params.size)) for box in boxes]
    return crops, notes
