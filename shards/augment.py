"""Named augmentation pipelines (albumentations 2.x), applied to decoded pixels in their stored
units (uint8 / uint16, any channel count) before normalisation.

Measured with albumentations 2.0.8 and OpenCV 4 on 224 px images: RandomResizedCrop keeps uint16
(it resizes uint16 natively; bilinear never leaves the input's range) and takes any channel
count, but OpenCV has vectorised resize kernels for 1 to 4 channels only: a 7-channel image took
1.4 ms against 0.45 ms for the same seven planes passed as albumentations' `images` target (one
draw of crop and flip, applied to each plane). So images of more than 4 channels go through
`images` as (C, H, W) planes; the others through `image`.

Bilinear, not MAE's bicubic: half the cost in OpenCV at 224 px, and no overshoot to clip in
integer pixels; `area_for_downscale` averages when a crop is shrunk.
"""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np

_PLANES_ABOVE = 4  # OpenCV's vectorised resize handles at most 4 channels


def mae(image_size: int) -> list[A.BasicTransform]:
    """MAE pretraining (He et al. 2022, main_pretrain.py): random resized crop, scale 0.2-1.0, and
    a horizontal flip."""
    return [A.RandomResizedCrop(size=(image_size, image_size), scale=(0.2, 1.0), interpolation=cv2.INTER_LINEAR,
                                area_for_downscale="image"),
            A.HorizontalFlip(p=0.5)]


def none(image_size: int) -> list[A.BasicTransform]:
    """No augmentation: only a resize to image_size, which leaves an image of that size untouched."""
    return [A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR, area_for_downscale="image")]


AUGMENTATIONS: dict[str, Callable[[int], list[A.BasicTransform]]] = {"mae": mae, "none": none}


class Augment:
    """pixels (H, W) or (H, W, C), uint8/uint16 -> (C, image_size, image_size) of the same dtype.
    Seeded: the same seed gives the same crops and flips."""

    def __init__(self, name: str, image_size: int, *, seed: int | None = None):
        if name not in AUGMENTATIONS:
            raise KeyError(f"unknown augmentation {name!r}; known: {sorted(AUGMENTATIONS)}")
        if image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {image_size}")
        self.name = name
        self.image_size = image_size
        self._compose = A.Compose(AUGMENTATIONS[name](image_size), seed=seed)

    def reseed(self, seed: int) -> None:
        self._compose.set_random_seed(seed)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.ndim == 2:
            return self._compose(image=pixels)["image"][None]
        if pixels.shape[2] > _PLANES_ABOVE:
            return self._compose(images=np.ascontiguousarray(pixels.transpose(2, 0, 1)))["images"]
        return self._compose(image=pixels)["image"].transpose(2, 0, 1)
