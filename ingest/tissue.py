"""Breast tissue masks and random tissue crops that avoid lesions (MIRAM §III, after Shen et al.:
lesion crops plus random background crops from the same mammograms)."""

from __future__ import annotations

import random

import cv2
import numpy as np

from ingest.crops import Box, mask_bbox

# Tissue is found on a downscaled copy: Otsu and connected components on a 30 MP mammogram would
# cost more than decoding it, and crop placement needs no finer grid than this.
WORK_SIDE = 512


def tissue_mask(image: np.ndarray, *, work_side: int = WORK_SIDE) -> tuple[np.ndarray, float]:
    """(H, W) uint16 mammogram -> (h, w) bool tissue mask on a downscaled grid, and the scale
    (source pixels per grid pixel). Otsu threshold, largest connected component (drops labels and
    markers in the air), holes filled."""
    h, w = image.shape
    scale = max(h, w) / work_side if max(h, w) > work_side else 1.0
    small = cv2.resize(image, (max(1, round(w / scale)), max(1, round(h / scale))), interpolation=cv2.INTER_AREA)
    small8 = (small >> 8).astype(np.uint8) if small.dtype == np.uint16 else small.astype(np.uint8)
    _, binary = cv2.threshold(small8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return np.zeros(binary.shape, bool), scale
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = (labels == largest).astype(np.uint8)
    # Fill holes: flood the background from outside, whatever it cannot reach is inside the breast.
    flood = np.pad(mask, 1).copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return (mask.astype(bool) | holes), scale


def downscale_mask(mask: np.ndarray, shape: tuple[int, int], *, bbox: Box | None = None) -> np.ndarray:
    """Full-resolution mask (non-zero = set) -> bool mask on the tissue grid; a grid cell is set if
    any set pixel overlaps it. Only the mask's bounding box is visited: a lesion is a few hundred
    thousand pixels of a 30-megapixel mask. `bbox`: the mask's tight box, when known already."""
    h, w = shape
    rows, columns = mask.shape
    small = np.zeros(shape, bool)
    box = mask_bbox(mask) if bbox is None else bbox
    if box is None:
        return small
    x0, y0, _, _ = box
    ys, xs = np.nonzero(mask[y0 : box[3], x0 : box[2]])
    ys, xs = ys + y0, xs + x0
    # Source pixel x spans [x, x + 1), grid cell j spans [j, j + 1) * columns / w: the first and
    # last cell a pixel overlaps (equal unless it straddles a cell border).
    for row_cells in ((ys * h) // rows, ((ys + 1) * h - 1) // rows):
        for column_cells in ((xs * w) // columns, ((xs + 1) * w - 1) // columns):
            small[row_cells, column_cells] = True
    return small


def random_tissue_boxes(
    tissue: np.ndarray,
    avoid: np.ndarray,
    scale: float,
    *,
    count: int,
    side: int,
    min_tissue: float,
    rng: random.Random,
    image_shape: tuple[int, int],
    max_tries: int = 400,
) -> list[Box]:
    """Up to `count` square boxes of `side` source pixels inside the image whose tissue fraction is
    at least `min_tissue` and that touch no `avoid` cell (lesions). Fewer when the breast is too
    small; the caller reports the shortfall. Deterministic for a given rng state."""
    h, w = image_shape
    if side > h or side > w:
        return []
    tissue_sum = cv2.integral(tissue.astype(np.uint8))
    avoid_sum = cv2.integral(avoid.astype(np.uint8))

    def box_sum(table: np.ndarray, gx0: int, gy0: int, gx1: int, gy1: int) -> int:
        return int(table[gy1, gx1] - table[gy0, gx1] - table[gy1, gx0] + table[gy0, gx0])

    boxes: list[Box] = []
    for _ in range(max_tries):
        if len(boxes) == count:
            break
        x0, y0 = rng.randrange(0, w - side + 1), rng.randrange(0, h - side + 1)
        gx0, gy0 = int(x0 / scale), int(y0 / scale)
        gx1 = min(tissue.shape[1], max(gx0 + 1, int(np.ceil((x0 + side) / scale))))
        gy1 = min(tissue.shape[0], max(gy0 + 1, int(np.ceil((y0 + side) / scale))))
        cells = (gx1 - gx0) * (gy1 - gy0)
        if box_sum(avoid_sum, gx0, gy0, gx1, gy1) > 0:
            continue
        if box_sum(tissue_sum, gx0, gy0, gx1, gy1) < min_tissue * cells:
            continue
        boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes
