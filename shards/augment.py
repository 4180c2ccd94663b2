"""Named augmentations of stored pixels (uint8 / uint16, any channel count), in two steps so that
a stream decodes only what a crop keeps:

    crop = augment.draw(height, width)            # from the member's header, before decoding
    pixels = codecs.decode_pixels(ext, data, crop.region)
    image = augment.apply(pixels, crop)           # (C, S, S), same dtype

`augment(pixels)` does both on pixels already decoded.

"mae" is MAE's pretraining augmentation (He et al. 2022, main_pretrain.py: torchvision's
RandomResizedCrop(input_size, scale=(0.2, 1.0)) and RandomHorizontalFlip()). The crop is drawn
by torchvision's RandomResizedCrop.get_params algorithm, re-stated in `_random_resized_crop`; it
is not taken from a library because it must be drawn from the image's size before the pixels
exist, which albumentations' and torchvision's transforms (which take the image) cannot do.
Measured at 224 px, 16-bit: decoding only the crop's rectangle cost 0.90x a whole decode on
PNGs written by OpenCV, 0.9x on PNGs written by shards.png_encode (see shards.png_region);
resizing and flipping with OpenCV directly took about 70 us a sample, where albumentations'
Compose of RandomResizedCrop and HorizontalFlip took 110 to 120 us.

Resizing: bilinear, not MAE's bicubic (half the cost in OpenCV at 224 px, and no overshoot to
clip in integer pixels), and area averaging when a crop is shrunk in either direction. OpenCV's
vectorised resize handles 1 to 4 channels; a 7-channel image is resized plane by plane (1.4 ms
against 0.45 ms for the seven planes at 224 px), all planes with the same crop and flip.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

_PLANES_ABOVE = 4  # OpenCV's vectorised resize handles at most 4 channels


class Crop(NamedTuple):
    """The rectangle an augmentation keeps, and whether it is mirrored left to right."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False

    @property
    def region(self) -> tuple[int, int, int, int]:
        """(top, left, height, width), as shards.codecs.decode_pixels takes it."""
        return self.top, self.left, self.height, self.width


@dataclass(frozen=True)
class Policy:
    """scale: the crop's share of the image's area, drawn uniformly (None: the whole image);
    ratio: its width / height, drawn log-uniformly; flip: the chance of a horizontal flip."""

    scale: tuple[float, float] | None
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.0


AUGMENTATIONS: dict[str, Policy] = {
    "mae": Policy(scale=(0.2, 1.0), flip=0.5),  # MAE main_pretrain.py
    "none": Policy(scale=None),  # only a resize to image_size: an image of that size is left alone
}


def _random_resized_crop(rng: random.Random, height: int, width: int, scale: tuple[float, float],
                         ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: ten tries at an area and an aspect ratio that
    fit, else the largest centred crop within the ratio range. (top, left, height, width)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class Augment:
    """A named augmentation, seeded: the same seed gives the same crops and flips."""

    def __init__(self, name: str, image_size: int, *, seed: int | None = None):
        if name not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {name!r}; known: {sorted(AUGMENTATIONS)}")
        if image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {image_size}")
        self.name, self.image_size, self.policy = name, image_size, AUGMENTATIONS[name]
        self._rng = random.Random(seed)

    def reseed(self, seed: int) -> None:
        self._rng.seed(seed)

    def draw(self, height: int, width: int) -> Crop:
        """The crop and flip for the next image, of this height and width."""
        if height < 1 or width < 1:
            raise ValueError(f"cannot crop a {height} x {width} image")
        policy = self.policy
        if policy.scale is None:
            box = (0, 0, height, width)
        else:
            box = _random_resized_crop(self._rng, height, width, policy.scale, policy.ratio)
        return Crop(*box, flip=policy.flip > 0 and self._rng.random() < policy.flip)

    def apply(self, pixels: np.ndarray, crop: Crop) -> np.ndarray:
        """pixels: the crop's rectangle, (h, w) or (h, w, C) -> (C, image_size, image_size), same
        dtype; a view of `pixels` where nothing needs computing."""
        if pixels.shape[:2] != (crop.height, crop.width):
            raise ValueError(f"pixels are {pixels.shape[:2]}, the crop is {crop.height} x {crop.width}")
        size = self.image_size
        shrink = crop.height > size or crop.width > size
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        if pixels.ndim == 3 and pixels.shape[2] <= _PLANES_ABOVE:
            image = pixels
            if pixels.shape[:2] != (size, size):
                image = cv2.resize(np.ascontiguousarray(pixels), (size, size), interpolation=interpolation)
            if crop.flip:
                image = cv2.flip(image, 1)
            return image.transpose(2, 0, 1)
        planes = pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))
        if planes.shape[1:] == (size, size) and not crop.flip:
            return planes
        out = np.empty((len(planes), size, size), planes.dtype)
        for plane, target in zip(planes, out):
            if not crop.flip:  # then the sizes differ (the case above returned)
                cv2.resize(plane, (size, size), dst=target, interpolation=interpolation)
                continue
            if plane.shape != (size, size):
                plane = cv2.resize(plane, (size, size), interpolation=interpolation)
            cv2.flip(plane, 1, dst=target)  # a numpy copy through reversed strides took 4x as long
        return out

    def on_device(self, crop: Crop) -> bool:
        """Whether the stream leaves this crop's resize (and flip) to the training device
        (shards.device_crops): when the crop is enlarged or kept in both directions. Its own pixels
        are then no more bytes to hand over than the resized image, and OpenCV would enlarge it
        bilinearly (INTER_LINEAR), which the device does with the same sample positions. A crop
        shrunk in either direction is resized here (`apply`), with area averaging."""
        return crop.height <= self.image_size and crop.width <= self.image_size

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """pixels (H, W) or (H, W, C) -> (C, image_size, image_size), same dtype, C-contiguous."""
        crop = self.draw(*pixels.shape[:2])
        return np.ascontiguousarray(self.apply(pixels[crop.top:crop.top + crop.height,
                                                      crop.left:crop.left + crop.width], crop))

