"""Lesion crops and random tissue crops from one decoded mammogram (CBIS-DDSM, CMMD, ...).

MIRAM (§III) pretrains on ROI crops of annotated lesions and on random crops of breast tissue;
this module makes both from a (H, W) uint16 mammogram and its full-size ROI masks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ingest import crops, tissue
from ingest.dicom_pixels import DicomDecodeError, decode_dicom, read_header


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


def find_roi_mask(candidates: list[Path], image_shape: tuple[int, int], root: Path) -> tuple[np.ndarray, bool]:
    """Pick the ROI mask among an abnormality's DICOMs by content, not by name or order.

    CBIS-DDSM ships the mask and the cropped lesion in one or two series, and which of 000000 /
    000001 (or 1-1 / 1-2) is the mask differs between the mass and calc files and even within them.
    The mask is the full-size binary image: candidates are tried largest first (by header) and the
    first whose pixels hold a single non-zero value wins. A mask of another size than its mammogram
    (a known CBIS quirk) is resized to it with nearest neighbour. Returns (bool mask (H, W), resized).
    """
    sized = []
    problems = []
    for path in candidates:
        try:
            header = read_header(path, name=_rel(path, root))
            sized.append((int(header.Rows) * int(header.Columns), str(path), path))
        except (DicomDecodeError, AttributeError) as exc:
            problems.append(str(exc))
    h, w = image_shape
    for _, _, path in sorted(sized, reverse=True):
        try:
            pixels = decode_dicom(path, name=_rel(path, root)).pixels
        except DicomDecodeError as exc:
            problems.append(str(exc))
            continue
        if pixels.ndim != 2 or pixels.shape[0] < h // 2 or pixels.shape[1] < w // 2:
            continue  # a cropped lesion image, not a full-size mask
        peak = pixels.max()
        if peak == 0:
            raise RoiMaskError(f"empty ROI mask: {_rel(path, root)} is all zero")
        if np.count_nonzero((pixels != 0) & (pixels != peak)):
            continue  # full-size but not binary: not a mask
        mask = pixels != 0
        if mask.shape != image_shape:
            mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
            if not mask.any():
                raise RoiMaskError(f"empty ROI mask: {_rel(path, root)} is empty once resized to its mammogram")
            return mask, True
        return mask, False
    detail = "; ".join(problems) if problems else f"{len(candidates)} DICOM(s), none full-size and binary"
    raise RoiMaskError(f"no ROI mask found: {detail}")


def lesion_crop(image: np.ndarray, mask: np.ndarray, params: CropParams) -> tuple[np.ndarray, np.ndarray, crops.Box]:
    """ROI bounding box plus context margin, made square, resized to params.size.
    -> (pixels (size, size) uint16, mask (size, size) uint8 0/255, box in source pixels)."""
    bbox = crops.mask_bbox(mask)
    box = crops.square_context_box(bbox, margin=params.margin, min_side=params.size)
    pixels = crops.resize_to(crops.crop_padded(image, box), params.size)
    mask_crop = crops.resize_to(crops.crop_padded(mask.astype(np.uint8) * 255, box), params.size, nearest=True)
    return pixels, mask_crop, box


def random_tissue_crops(
    image: np.ndarray, lesion_masks: list[np.ndarray], params: CropParams, rng: random.Random
) -> list[tuple[np.ndarray, crops.Box]]:
    """Up to params.random_per_image crops inside breast tissue, clear of every lesion.
    -> [(pixels (size, size) uint16, box)], fewer when the breast is too small."""
    breast, scale = tissue.tissue_mask(image)
    avoid = np.zeros(breast.shape, bool)
    for mask in lesion_masks:
        avoid |= tissue.downscale_mask(mask, breast.shape)
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
