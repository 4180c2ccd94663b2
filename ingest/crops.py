"""Crop boxes and crop extraction shared by every source.

Boxes are (x0, y0, x1, y1) in source pixels, end-exclusive. A box may reach past the image; the
part outside is filled with 0 (air / background), so a lesion at the border stays centred.
"""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]


def mask_bbox(mask: np.ndarray) -> Box | None:
    """Tight bounding box of the non-zero pixels of a (H, W) mask, or None if it is empty.

    One pass over the whole mask for the rows that hold any (a row-wise max for unsigned masks:
    0.7 ms on a 4096 x 2560 8-bit CBIS mask, where cv2.boundingRect took 3.0 ms and `any` 1.6),
    then the columns of the band between the first and last of them only."""
    unsigned = mask.dtype.kind in "ub"
    rows = np.flatnonzero(mask.max(axis=1) if unsigned else mask.any(axis=1))
    if rows.size == 0:
        return None
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    band = mask[top:bottom]
    cols = np.flatnonzero(band.max(axis=0) if unsigned else band.any(axis=0))
    return int(cols[0]), top, int(cols[-1]) + 1, bottom


def square_context_box(bbox: Box, *, margin: float, min_side: int) -> Box:
    """A square box centred on `bbox`: the longer bbox side plus `margin` of it on each side,
    and at least `min_side` (so a tiny calcification keeps context instead of being upsampled)."""
    x0, y0, x1, y1 = bbox
    side = max(x1 - x0, y1 - y0)
    side = max(int(round(side * (1.0 + 2.0 * margin))), min_side)
    cx2, cy2 = x0 + x1, y0 + y1  # twice the centre, to stay in integers
    left = (cx2 - side) // 2
    top = (cy2 - side) // 2
    return left, top, left + side, top + side


def crop_padded(image: np.ndarray, box: Box) -> np.ndarray:
    """image[y0:y1, x0:x1] with zero fill where the box leaves the image. (H, W[, C]) -> (h, w[, C])."""
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0) + image.shape[2:], dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx0 < sx1 and sy0 < sy1:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def resize_to(image: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize a square crop to size x size: area averaging when shrinking (no aliasing of
    calcifications), linear when enlarging, nearest for masks. dtype is kept (uint16 stays uint16)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)
