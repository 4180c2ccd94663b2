"""Nucleus centroids on a nuclear channel (DAPI, histone): where cell-centred crops go when no cell
table is given.

DAMA (paper 004, §2 "Real-30k and Real-170k"): the large image is cut into tiles, eroded, split by
watershed segmentation, and crops are cut around the cells' centres. Here: one Otsu threshold for
the whole image (from a histogram, so a slide never has to be in memory), then tile by tile:
threshold, morphological opening (erosion then dilation: drops specks, opens thin bridges between
touching nuclei), distance transform, one marker per distance peak (OpenCV's "distance transform
and watershed" recipe), OpenCV watershed of the channel from those markers, and the centroid of
the foreground of every watershed region at least `min_area` pixels large. Tiles overlap by a halo and a
nucleus belongs to the tile whose core holds its centroid, so none is found twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import cv2
import numpy as np

from ingest.crops import Box

TILE = 1024  # tile side in pixels (DAMA tiles at 1000 x 1000)
HALO = 32  # overlap around each tile: more than a nucleus radius at ~0.5 um/pixel


def otsu_threshold(hist: np.ndarray) -> int:
    """Otsu's threshold of a histogram over integer levels 0..len-1: the level t maximising the
    between-class variance of {<= t} and {> t}. Foreground is `value > t`."""
    hist = np.asarray(hist, dtype=np.float64)
    levels = np.arange(hist.size, dtype=np.float64)
    weight0 = np.cumsum(hist)
    total = weight0[-1]
    if total == 0:
        return 0
    weight1 = total - weight0
    mass0 = np.cumsum(hist * levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean0 = mass0 / weight0
        mean1 = (mass0[-1] - mass0) / weight1
        between = weight0 * weight1 * (mean0 - mean1) ** 2
    between[~np.isfinite(between)] = -1.0
    return int(np.argmax(between))


def nuclear_threshold(chunks: Iterable[np.ndarray]) -> int:
    """One Otsu threshold from the pooled histogram of some (or all) pieces of a uint8/uint16 channel."""
    hist = np.zeros(1, np.int64)
    for chunk in chunks:
        counts = np.bincount(chunk.ravel(), minlength=hist.size)
        if counts.size > hist.size:
            counts[: hist.size] += hist
            hist = counts
        else:
            hist += counts
    return otsu_threshold(hist)


def nucleus_centroids(image: np.ndarray, threshold: int, *, min_area: int = 20,
                      min_distance: int = 3) -> np.ndarray:
    """(H, W) nuclear channel -> (N, 2) float64 centroids (x, y) in its pixels, sorted by (y, x).

    `min_distance`: two distance-map peaks closer than this (Chebyshev) merge into one marker, so a
    nucleus with a ragged outline is not split. `min_area`: smaller watershed regions are dropped.
    """
    binary = (image > threshold).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
    if not binary.any():
        return np.zeros((0, 2))
    dist = cv2.distanceTransform(binary, cv2.DIST_L2, 5)
    smooth = cv2.GaussianBlur(dist, (0, 0), 1.0)
    footprint = np.ones((2 * min_distance + 1,) * 2, np.uint8)
    peaks = (smooth >= cv2.dilate(smooth, footprint)) & (dist >= 1.5)
    count, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    background = count  # one more label for everything outside the nuclei
    markers[binary == 0] = background
    # OpenCV floods by the intensity step between neighbours (its watershed tutorial floods the image
    # itself, markers from the distance transform): the nuclear channel, scaled so the threshold
    # sits at 128 whatever the tile, so basins stop at nucleus edges and meet at dim necks or, on a
    # flat plateau, halfway between the peaks.
    relief = np.clip(image.astype(np.float32) * (128.0 / max(threshold, 1)), 0, 255).astype(np.uint8)
    markers = cv2.watershed(cv2.cvtColor(relief, cv2.COLOR_GRAY2BGR), markers)
    inside = (markers > 0) & (markers < background) & (binary > 0)
    labels = markers[inside]
    ys, xs = np.nonzero(inside)
    area = np.bincount(labels, minlength=count)
    keep = np.flatnonzero(area >= max(min_area, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = np.bincount(labels, weights=xs, minlength=count)[keep] / area[keep]
        cy = np.bincount(labels, weights=ys, minlength=count)[keep] / area[keep]
    order = np.lexsort((cx, cy))
    return np.stack([cx[order], cy[order]], axis=1)


def find_nuclei(read: Callable[[Box], np.ndarray], core: Box, image_shape: tuple[int, int], *, threshold: int,
                tile: int = TILE, halo: int = HALO, min_area: int = 20, min_distance: int = 3) -> np.ndarray:
    """Centroids (N, 2) of the nuclei whose centroid lies in `core` (x0, y0, x1, y1), found tile by
    tile: `read(box)` returns the nuclear channel under a box inside the image. Sorted by (y, x)."""
    h, w = image_shape
    x0, y0, x1, y1 = core
    found = []
    for ty in range(y0, y1, tile):
        for tx in range(x0, x1, tile):
            tile_core = (tx, ty, min(tx + tile, x1), min(ty + tile, y1))
            box = (max(tx - halo, 0), max(ty - halo, 0), min(tile_core[2] + halo, w), min(tile_core[3] + halo, h))
            points = nucleus_centroids(read(box), threshold, min_area=min_area, min_distance=min_distance)
            points = points + np.array([box[0], box[1]], dtype=np.float64)
            inside = ((points[:, 0] >= tile_core[0]) & (points[:, 0] < tile_core[2])
                      & (points[:, 1] >= tile_core[1]) & (points[:, 1] < tile_core[3]))
            found.append(points[inside])
    points = np.concatenate(found) if found else np.zeros((0, 2))
    return points[np.lexsort((points[:, 0], points[:, 1]))]
