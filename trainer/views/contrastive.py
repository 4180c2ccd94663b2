"""The two-view augmentation of SimCLR / SimSiam / VICReg, for grey and multi-channel images.

Chen et al. 2020 (SimCLR §3, Appendix A): random resized crop (scale 0.08-1), flip, colour jitter
(p 0.8), blur (p 0.5). Medical-image SSL keeps the crop and flip and replaces colour jitter by
intensity jitter (trainer/views/photometric.py); MLVICX and PCRLv2 use crops of at least 0.2-0.3 of
the image, since small crops of a radiograph hold little anatomy: `scale` is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.views.geometric import random_hflip, random_resized_crop
from trainer.views.photometric import random_brightness_contrast, random_gaussian_blur


@dataclass(frozen=True)
class ContrastiveViews:
    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    flip: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    jitter: float = 0.8
    blur: float = 0.5

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, C, H, W) -> one augmented view (N, C, size, size); call twice for two views."""
        views, _ = random_resized_crop(images, self.size, scale=self.scale, generator=generator)
        views = random_hflip(views, self.flip, generator)
        views = random_brightness_contrast(views, brightness=self.brightness, contrast=self.contrast,
                                           p=self.jitter, generator=generator)
        return random_gaussian_blur(views, p=self.blur, generator=generator)
