"""Nucleus centroids: Otsu against OpenCV's own, discs found once each where they were drawn,
touching nuclei split, and the tile-by-tile pass agreeing with one pass over the whole image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from ingest.nuclei import find_nuclei, nuclear_threshold, nucleus_centroids, otsu_threshold


def discs(shape, centres, radius=8, background=200, peak=5000, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(background - 50, background + 50, shape).astype(np.uint16)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for x, y in centres:
        img[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = peak
    return img


def nearest(found: np.ndarray, centres) -> np.ndarray:
    """Distance from each drawn centre to the closest centroid found."""
    return np.array([np.min(np.hypot(found[:, 0] - x, found[:, 1] - y)) for x, y in centres])


@pytest.mark.parametrize("seed", range(4))
def test_otsu_matches_opencv_on_8_bit_images(seed):
    rng = np.random.default_rng(seed)
    img = np.concatenate([rng.normal(60, 15, 3000), rng.normal(170, 25, 1000 + 500 * seed)])
    img = np.clip(img, 0, 255).astype(np.uint8).reshape(1, -1)
    expected, _ = cv2.threshold(img, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    assert otsu_threshold(np.bincount(img.ravel(), minlength=256)) == int(expected)


def test_threshold_from_pooled_16_bit_pieces_separates_the_modes():
    rng = np.random.default_rng(1)
    dim = rng.normal(400, 50, 5000).astype(np.uint16)
    bright = rng.normal(20000, 2000, 800).astype(np.uint16)
    t = nuclear_threshold([dim[:2000], np.concatenate([dim[2000:], bright])])  # pieces of different ranges
    assert dim.max() <= t < bright.min()
    assert nuclear_threshold([np.zeros(10, np.uint16)]) == 0


def test_each_disc_found_once_where_it_was_drawn():
    centres = [(30, 30), (100, 40), (170, 35), (60, 120), (140, 130), (20, 170)]
    img = discs((200, 200), centres)
    found = nucleus_centroids(img, nuclear_threshold([img]))
    assert len(found) == len(centres)
    assert nearest(found, centres).max() < 1.0
    assert np.all(np.diff(found[:, 1]) >= 0)  # sorted by row


def test_touching_nuclei_are_split_and_specks_dropped():
    img = discs((100, 120), [(40, 50), (55, 50)], radius=9)  # overlapping by 3 pixels
    img[10, 10] = img[80:82, 100:102] = 5000  # specks smaller than min_area
    found = nucleus_centroids(img, 1000, min_area=20)
    assert len(found) == 2
    assert nearest(found, [(40, 50), (55, 50)]).max() < 2.5


def test_tile_by_tile_equals_one_pass_and_counts_each_nucleus_once():
    rng = np.random.default_rng(5)
    centres = []
    while len(centres) < 40:  # discs anywhere, many across the 64-pixel tile borders
        x, y = rng.uniform(10, 290), rng.uniform(10, 250)
        if all(np.hypot(x - a, y - b) > 22 for a, b in centres):
            centres.append((x, y))
    img = discs((260, 300), centres, radius=6)
    t = nuclear_threshold([img])
    whole = nucleus_centroids(img, t)
    reads = []

    def read(box):
        reads.append(box)
        x0, y0, x1, y1 = box
        return img[y0:y1, x0:x1]

    tiled = find_nuclei(read, (0, 0, 300, 260), img.shape, threshold=t, tile=64, halo=16)
    assert len(reads) == 5 * 5 and max(b[2] - b[0] for b in reads) <= 64 + 2 * 16
    assert len(tiled) == len(whole) == len(centres)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    # Only nuclei whose centroid lies in the core box are returned.
    part = find_nuclei(read, (64, 64, 192, 192), img.shape, threshold=t, tile=64, halo=16)
    inside = whole[(whole[:, 0] >= 64) & (whole[:, 0] < 192) & (whole[:, 1] >= 64) & (whole[:, 1] < 192)]
    np.testing.assert_allclose(part, inside, atol=1e-6)


def test_real_mibi_histone_channel(shared_data):
    """The real MIBI image's histone H3 channel (ion counts, mostly 0): hundreds of nuclei, and
    1024-pixel or 256-pixel tiles agree to within a few percent (boundary nuclei may split
    differently when a tile sees only part of their neighbourhood)."""
    path = shared_data / "multiplex-tiff" / "mibi_fov8_22ch_uint16.tiff"
    with tifffile.TiffFile(path) as tif:
        page = next(p for p in tif.pages if p.tags["PageName"].value == "HH3 (89)")
        hh3 = page.asarray()
    t = nuclear_threshold([hh3])
    whole = find_nuclei(lambda b: hh3[b[1]:b[3], b[0]:b[2]], (0, 0, 1024, 1024), hh3.shape, threshold=t)
    tiled = find_nuclei(lambda b: hh3[b[1]:b[3], b[0]:b[2]], (0, 0, 1024, 1024), hh3.shape, threshold=t, tile=256)
    assert 300 < len(whole) < 3000
    assert abs(len(tiled) - len(whole)) <= 0.05 * len(whole)
    # Every centroid sits on a pixel at or above the threshold's foreground within 3 pixels.
    ys, xs = np.round(whole[:, 1]).astype(int), np.round(whole[:, 0]).astype(int)
    bright = cv2.dilate((hh3 > t).astype(np.uint8), np.ones((7, 7), np.uint8))
    assert bright[ys, xs].mean() > 0.95
