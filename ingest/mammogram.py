"""Lesion crops and random tissue crops from one decoded mammogram (CBIS-DDSM, CMMD, ...).

MIRAM (§III) pretrains on ROI crops of annotated lesions and on random crops of breast tissue;
this module makes both from a (H, W) uint16 mammogram and its full-size ROI masks.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from ingest import crops, tissue
from ingest.dicom_pixels import DicomDecodeError, decode_mask_values


class RoiMask(NamedTuple):
    """An abnormality's ROI mask: pixels (H, W), the ROI being the non-zero ones (values as in the
    file, not widened to 0/1); bbox, their tight box (x0, y0, x1, y1); resized, whether the file was
    of another size than its mammogram."""

    pixels: np.ndarray
    bbox: crops.Box
    resized: bool


class RoiMaskError(ValueError):
    """No usable ROI mask for an abnormality; str() is 'reason kind: detail'."""


@dataclass(frozen=True)
class CropParams:
    size: int = 224  # output side, pixels
    margin: float = 0.2  # lesion context on each side, as a fraction of the ROI's longer side
    random_per_image: int = 4
    random_side: int = 512  # random crop side in source pixels (before resizing to `size`)
    min_tissue: float = 0.9  # least fraction of a random crop that must be breast tissue
    lesion_clearance: int = 32  # source pixels kept between a random crop and any ROI


def find_roi_mask(candidates: list[Path], image_shape: tuple[int, int], root: Path, *,
                  decode: Callable[..., np.ndarray] = decode_mask_values) -> RoiMask:
    """Pick the ROI mask among an abnormality's DICOMs by content, not by name or order.

    CBIS-DDSM ships the mask and the cropped lesion in one or two series, and which of 000000 /
    000001 (or 1-1 / 1-2) is the mask differs between the mass and calc files and even within them.
    The mask is the full-size binary image: candidates are tried largest file first (the mask is
    the full-size one; a header parse per candidate only to order them cost as much as the rest of
    the search) and the first whose pixels hold a single non-zero value wins. A mask of another
    size than its mammogram (a known CBIS quirk) is resized to it with nearest neighbour.
    decode(path, name=...) reads a candidate's pixels (DicomDecodeError when it cannot).
    """
    sized = []
    problems = []
    for path in candidates:
        try:
            sized.append((Path(path).stat().st_size, str(path), path))
        except OSError as exc:
            problems.append(f"{_rel(path, root)}: cannot be read ({exc.strerror or type(exc).__name__})")
    h, w = image_shape
    for _, _, path in sorted(sized, reverse=True):
        try:
            pixels = decode(path, name=_rel(path, root))
        except DicomDecodeError as exc:
            problems.append(str(exc))
            continue
        if pixels.ndim != 2 or pixels.shape[0] < h // 2 or pixels.shape[1] < w // 2:
            continue  # a cropped lesion image, not a full-size mask
        bbox = crops.mask_bbox(pixels)  # the one pass over the whole mask: all else lies inside the box
        if bbox is None:
            raise RoiMaskError(f"empty ROI mask: {_rel(path, root)} is all zero")
        inside = pixels[bbox[1] : bbox[3], bbox[0] : bbox[2]]
        if np.count_nonzero(inside) != np.count_nonzero(inside == inside.max()):
            continue  # full-size but not binary: not a mask
        if pixels.shape != image_shape:
            mask = cv2.resize((pixels != 0).view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
            resized_bbox = crops.mask_bbox(mask)
            if resized_bbox is None:
                raise RoiMaskError(f"empty ROI mask: {_rel(path, root)} is empty once resized to its mammogram")
            return RoiMask(mask, resized_bbox, True)
        return RoiMask(pixels, bbox, False)
    detail = "; ".join(problems) if problems else f"{len(candidates)} DICOM(s), none full-size and binary"
    raise RoiMaskError(f"no ROI mask found: {detail}")


def lesion_crop(image: np.ndarray, mask: np.ndarray, params: CropParams, *,
                bbox: crops.Box | None = None) -> tuple[np.ndarray, np.ndarray, crops.Box]:
    """ROI (mask's non-zero pixels) bounding box plus context margin, made square, resized to
    params.size. -> (pixels (size, size) uint16, mask (size, size) uint8 0/255, box in source pixels).
    With the ROI's `bbox` given, only the crop box is read from either image."""
    bbox = crops.mask_bbox(mask) if bbox is None else bbox
    box = crops.square_context_box(bbox, margin=params.margin, min_side=params.size)
    pixels = crops.resize_to(crops.crop_padded(image, box), params.size)
    mask_box = (crops.crop_padded(mask, box) != 0).view(np.uint8) * np.uint8(255)
    mask_crop = crops.resize_to(mask_box, params.size, nearest=True)
    return pixels, mask_crop, box


def random_tissue_crops(
    image: np.ndarray, lesions: list[RoiMask], params: CropParams, rng: random.Random
) -> list[tuple[np.ndarray, crops.Box]]:
    """Up to params.random_per_image crops inside breast tissue, clear of every lesion.
    -> [(pixels (size, size) uint16, box)], fewer when the breast is too small."""
    breast, scale = tissue.tissue_mask(image)
    avoid = np.zeros(breast.shape, bool)
    for lesion in lesions:
        avoid |= tissue.downscale_mask(lesion.pixels, breast.shape, bbox=lesion.bbox)
    clearance = max(1, int(np.ceil(params.lesion_clearance / scale)))
    avoid = cv2.dilate(avoid.astype(np.uint8), np.ones((2 * clearance + 1,) * 2, np.uint8)).astype(bool)
    side = min(params.random_side, *image.shape)
    boxes = tissue.random_tissue_boxes(
        breast, avoid, scale, count=params.random_per_image, side=side, min_tissue=params.min_tissue,
        rng=rng, image_shape=image.shape,
    )
    return [(crops.resize_to(crops.crop_padded(image, box), params.size), box) for box in boxes]


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
