"""Phantom pixels for the CBIS-DDSM sample: made-up images shaped like digitised DDSM films.

A DDSM mammogram is a scanned film: a bright half-ellipse of breast against the chest wall (left
edge for a LEFT breast, right edge for a RIGHT one, as in the usual back-to-back display), dark air
elsewhere, in MLO views the pectoral muscle as a bright wedge in the upper chest-wall corner, and
often a bright film label in the air, which a tissue mask has to ignore. Masses are brighter blobs
and calcifications clusters of small bright specks. CBIS-DDSM ships, per abnormality, an 8-bit ROI
mask (0/255) at the mammogram's full size and a 16-bit crop of the mammogram around the lesion.
Nothing here is real patient data.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

TISSUE_LEVEL = 9000.0  # stored value at the skin line; the chest wall reaches about 21000
AIR_LEVEL = 400.0
LABEL_LEVEL = 60000.0  # film labels are the brightest thing on a DDSM scan


@dataclass(frozen=True)
class BreastGeometry:
    """A half-ellipse against the chest wall: its centre row and semi-axes in pixels."""

    chest_wall_left: bool
    view: str  # "CC" or "MLO"
    center_row: float
    axis_rows: float
    axis_cols: float


@dataclass(frozen=True)
class Lesion:
    """One abnormality: an ellipse (a mass, or the outline of a calcification cluster) and, for
    calcifications, the specks inside it. Coordinates are (row, col) pixels."""

    kind: str  # "mass" or "calcification"
    center: tuple[int, int]
    axes: tuple[int, int]  # semi-axes along cols, rows before rotation (cv2.ellipse order)
    angle: float  # degrees
    specks: tuple[tuple[int, int], ...] = ()


def breast_geometry(shape: tuple[int, int], *, chest_wall_left: bool, view: str,
                    rng: np.random.Generator) -> BreastGeometry:
    """MLO breasts sit a little lower and reach further down than CC ones (the pectoral wedge takes
    the top), so their centre row and vertical axis are larger."""
    height, width = shape
    center = 0.55 if view == "MLO" else 0.5
    axis_rows = (0.47 if view == "MLO" else 0.43) * height * rng.uniform(0.93, 1.04)
    axis_cols = 0.72 * width * rng.uniform(0.9, 1.05)
    return BreastGeometry(chest_wall_left, view, center * height, axis_rows, axis_cols)


def _breast_radius2(shape: tuple[int, int], geom: BreastGeometry) -> np.ndarray:
    """(H, W) squared elliptical radius from the chest-wall centre; the breast is where it is <= 1."""
    height, width = shape
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    from_wall = cols if geom.chest_wall_left else (width - 1) - cols
    return (from_wall / geom.axis_cols) ** 2 + ((rows - geom.center_row) / geom.axis_rows) ** 2


def _smooth_noise(shape: tuple[int, int], cell: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 noise with unit std and structure about `cell` pixels across: tissue texture."""
    height, width = shape
    coarse = rng.standard_normal((max(2, height // cell), max(2, width // cell))).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def _ellipse(shape: tuple[int, int], center: tuple[int, int], axes: tuple[int, int],
             angle: float) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    cv2.ellipse(canvas, (center[1], center[0]), axes, angle, 0, 360, 255, thickness=-1)
    return canvas


def place_lesions(shape: tuple[int, int], geom: BreastGeometry, kinds: list[str],
                  rng: np.random.Generator) -> list[Lesion]:
    """One lesion per abnormality, inside the breast away from skin and chest wall, not overlapping
    each other when room allows (an image can carry several abnormalities, each with its own mask)."""
    height, width = shape
    lesions: list[Lesion] = []
    for kind in kinds:
        if kind == "mass":
            major = max(4, round(rng.uniform(0.04, 0.08) * width))
            axes = (major, max(3, round(major * rng.uniform(0.6, 1.0))))
        else:
            radius = max(4, round(rng.uniform(0.03, 0.055) * width))
            axes = (radius, max(3, round(radius * rng.uniform(0.7, 1.0))))
        angle = float(rng.uniform(0.0, 180.0))
        for attempt in range(200):
            depth, offset = rng.uniform(0.2, 0.65), rng.uniform(-0.55, 0.55)
            row = round(geom.center_row + offset * geom.axis_rows)
            from_wall = depth * geom.axis_cols
            col = round(from_wall if geom.chest_wall_left else (width - 1) - from_wall)
            inside = depth**2 + offset**2 <= 0.5 and 0 <= row < height and 0 <= col < width
            apart = attempt >= 50 or all(  # crowded: let lesions overlap rather than leave the breast
                np.hypot(row - o.center[0], col - o.center[1]) > max(axes) + max(o.axes) + 2 for o in lesions)
            if inside and apart:
                break
        specks: tuple[tuple[int, int], ...] = ()
        if kind != "mass":
            count = int(rng.integers(6, 15))
            theta = rng.uniform(0.0, 2 * np.pi, count)
            reach = 0.8 * min(axes) * np.sqrt(rng.uniform(0.0, 1.0, count))
            specks = tuple((int(np.clip(row + r * np.sin(t), 0, height - 1)),
                            int(np.clip(col + r * np.cos(t), 0, width - 1)))
                           for r, t in zip(reach, theta))
        lesions.append(Lesion(kind, (row, col), axes, angle, specks))
    return lesions


def draw_mammogram(shape: tuple[int, int], geom: BreastGeometry, *, density: int,
                   lesions: list[Lesion], rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint16, MONOCHROME2 (bright = dense). Tissue brightens towards the chest wall (the
    breast is thicker there); `density` (BI-RADS 1-4) scales the fibroglandular texture."""
    height, width = shape
    radius2 = _breast_radius2(shape, geom)
    inside = radius2 <= 1.0
    thickness = np.sqrt(np.clip(1.0 - radius2, 0.0, 1.0))
    texture = 0.65 * _smooth_noise(shape, max(2, width // 12), rng) \
        + 0.35 * _smooth_noise(shape, max(2, width // 48), rng)
    glandular = (700.0 + 700.0 * density) * texture * thickness
    tissue = TISSUE_LEVEL + 12000.0 * thickness**0.6 + glandular
    image = np.where(inside, tissue, AIR_LEVEL).astype(np.float32)

    if geom.view == "MLO":
        rows = np.arange(height, dtype=np.float32)[:, None]
        cols = np.arange(width, dtype=np.float32)[None, :]
        from_wall = cols if geom.chest_wall_left else (width - 1) - cols
        wedge = from_wall < 0.32 * width * (1.0 - rows / (0.6 * height))
        image[wedge & inside] += 8000.0

    for lesion in lesions:
        # Drawn in a window around the lesion: blurring the whole image per lesion is slow at
        # real mammogram sizes.
        reach = max(lesion.axes) + 3 * max(2, min(lesion.axes) // 3)
        top, left = max(0, lesion.center[0] - reach), max(0, lesion.center[1] - reach)
        window = image[top:lesion.center[0] + reach + 1, left:lesion.center[1] + reach + 1]
        local = (lesion.center[0] - top, lesion.center[1] - left)
        if lesion.kind == "mass":
            blob = _ellipse(window.shape, local, lesion.axes, lesion.angle).astype(np.float32) / 255
            sigma = max(1.0, 0.3 * min(lesion.axes))
            window += 7000.0 * cv2.GaussianBlur(blob, (0, 0), sigma)
        else:
            specks = np.zeros(window.shape, np.float32)
            for row, col in lesion.specks:
                cv2.circle(specks, (col - left, row - top), int(rng.integers(1, 3)), 1.0, thickness=-1)
            window += 26000.0 * cv2.GaussianBlur(specks, (0, 0), 0.7)

    image += rng.normal(0.0, 90.0, shape).astype(np.float32)
    if rng.uniform() < 0.75:
        _draw_film_label(image, geom, rng)
    return np.clip(image, 0, 65535).astype(np.uint16)


def _draw_film_label(image: np.ndarray, geom: BreastGeometry, rng: np.random.Generator) -> None:
    """A bright rectangle with dark strokes (the scanned film label) in the upper corner away from
    the chest wall, which is always air."""
    height, width = image.shape
    label_h, label_w = max(3, height // 14), max(4, width // 7)
    top = max(1, height // 30)
    left = width - label_w - max(1, width // 30) if geom.chest_wall_left else max(1, width // 30)
    image[top:top + label_h, left:left + label_w] = LABEL_LEVEL
    for stroke in range(left + 1, left + label_w - 1, 3):
        if rng.uniform() < 0.6:
            image[top + 1:top + label_h - 1, stroke] = LABEL_LEVEL * 0.3


def lesion_mask(shape: tuple[int, int], lesion: Lesion) -> np.ndarray:
    """(H, W) uint8 ROI mask, 0 outside and 255 inside the lesion outline (CBIS masks are 0/255)."""
    return _ellipse(shape, lesion.center, lesion.axes, lesion.angle)


def off_size_mask(mask: np.ndarray, rows_delta: int = 6, cols_delta: int = -4) -> np.ndarray:
    """The mask resampled to a slightly different size (nearest neighbour, still 0/255): some real
    CBIS masks do not match their mammogram's size by a few pixels."""
    height, width = mask.shape
    return cv2.resize(mask, (width + cols_delta, height + rows_delta), interpolation=cv2.INTER_NEAREST)


def lesion_crop(mammogram: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint16 crop of the mammogram around the mask's bounding box plus a margin (CBIS 'cropped
    images' are lesion patches cut from the full mammogram)."""
    left, top, box_w, box_h = cv2.boundingRect(mask)
    bottom, right = top + box_h, left + box_w
    margin = max(4, int(0.3 * max(bottom - top, right - left)))
    height, width = mammogram.shape
    return mammogram[max(0, top - margin):min(height, bottom + margin),
                     max(0, left - margin):min(width, right + margin)].copy()
