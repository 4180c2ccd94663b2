"""PCRLv2's second-stage ("local") corruptions of a view, batched and per sample (paper 003, Fig. 2:
t'_1, t'_2; §4.3 "Data augmentation and multi-crop/sub-crop").

For 2D data the paper lists "random grayscale, gaussian blur, and cutout"; the authors' released
2D pipeline also applies colour jitter (brightness, contrast, saturation, hue 0.4) before the
cutout, of which the intensity part (brightness, contrast) is kept here, as in
trainer/views/photometric.py, since hue and saturation assume RGB. The network restores the view as
it was BEFORE these corruptions (eq. 4), so they are what it learns to undo.

Images are standardised per channel (zero mean, unit std), so a cut-out hole is filled with 0, the
data set's mean, as Cutout on a normalised tensor does (DeVries & Taylor 2017), and "grayscale"
for any channel count is every channel replaced by the mean of the channels (for RGB, torchvision
weights the channels by luminance; one-channel images are unchanged by it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.views.photometric import random_brightness_contrast, random_gaussian_blur


def cutout_mask(
    n: int, height: int, width: int, *, holes: int, size: int,
    device: torch.device | str = "cpu", generator: torch.Generator | None = None,
) -> torch.Tensor:
    """-> (n, 1, height, width) bool, True inside `holes` squares of side `size` per sample: each
    centred on a uniformly drawn pixel and clipped at the image border (Cutout's sampling, so a hole
    near an edge is smaller); holes may overlap."""
    centres = torch.rand(n, holes, 2, device=device, generator=generator)
    cy = (centres[..., 0] * height).floor().long()
    cx = (centres[..., 1] * width).floor().long()
    half = size // 2
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    in_rows = (ys >= (cy - half)[..., None]) & (ys < (cy + size - half)[..., None])  # (n, holes, H)
    in_cols = (xs >= (cx - half)[..., None]) & (xs < (cx + size - half)[..., None])  # (n, holes, W)
    return (in_rows[..., :, None] & in_cols[..., None, :]).any(dim=1)[:, None]


def random_cutout(
    images: torch.Tensor, *, holes: int = 3, size: int = 32, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) -> (images with the holes set to 0 in every channel, mask (N, 1, H, W) bool)."""
    n, _, h, w = images.shape
    mask = cutout_mask(n, h, w, holes=holes, size=size, device=images.device, generator=generator)
    return images.masked_fill(mask, 0.0), mask


def random_grayscale(images: torch.Tensor, *, p: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability p per sample, every channel becomes the mean of the sample's channels."""
    chosen = torch.rand(images.shape[0], device=images.device, generator=generator) < p
    gray = images.mean(dim=1, keepdim=True).expand_as(images)
    return torch.where(chosen[:, None, None, None], gray, images)


@dataclass(frozen=True)
class LocalCorruptions:
    """The second-stage corruption of PCRLv2's views, in the released code's order: grayscale,
    blur, intensity jitter, cutout. Defaults are the released 2D pipeline's: grayscale p 0.2, blur
    p 0.5, jitter 0.4 always applied, 3 holes of 32 px at 224 (`cutout_fraction` of the side, so the
    holes scale with the view); the local views of multi-crop get the same without cutout."""

    grayscale: float = 0.2
    blur: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    jitter: float = 1.0
    cutout_holes: int = 3
    cutout_fraction: float = 32 / 224

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, C, H, W) -> corrupted (N, C, H, W)."""
        x = random_grayscale(images, p=self.grayscale, generator=generator)
        x = random_gaussian_blur(x, p=self.blur, generator=generator)
        x = random_brightness_contrast(x, brightness=self.brightness, contrast=self.contrast, p=self.jitter,
                                       generator=generator)
        if self.cutout_holes:
            size = max(1, round(self.cutout_fraction * min(images.shape[-2:])))
            x, _ = random_cutout(x, holes=self.cutout_holes, size=size, generator=generator)
        return x
