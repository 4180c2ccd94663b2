"""Batched geometric view transforms on (N, C, H, W) tensors, any channel count, on the batch's device.

Each sample gets its own random draw; boxes are returned so a method can relate views (PCRLv2's
local views lie inside the image the global views come from). Sampling is bilinear through
`grid_sample`, so a crop of a 16-bit radiograph keeps its scale of values, and the same code runs
on a GPU step after step without a CPU round trip.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sample_boxes(
    n: int,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RandomResizedCrop boxes (Szegedy et al. 2015; torchvision's sampler): area a fraction of the
    image drawn uniformly from `scale`, aspect log-uniform in `ratio`, clamped to fit, position
    uniform. -> (n, 4) as (x0, y0, x1, y1) in [0, 1] image fractions."""
    u = torch.rand(n, 4, device=device, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    x0 = (1.0 - w) * u[:, 2]
    y0 = (1.0 - h) * u[:, 3]
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """images: (N, C, H, W), boxes: (N, 4) fractions (x0, y0, x1, y1) -> (N, C, size, size), each
    box resampled bilinearly (align_corners=False: the box edges are pixel edges)."""
    n = images.shape[0]
    x0, y0, x1, y1 = boxes.to(images.dtype).unbind(1)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = x1 - x0
    theta[:, 0, 2] = x0 + x1 - 1.0
    theta[:, 1, 1] = y1 - y0
    theta[:, 1, 2] = y0 + y1 - 1.0
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(
    images: torch.Tensor,
    size: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) -> (views (N, C, size, size), boxes (N, 4) in image fractions)."""
    boxes = sample_boxes(images.shape[0], scale=scale, ratio=ratio, device=images.device, generator=generator)
    return crop_boxes(images, boxes, size), boxes


def random_hflip(images: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each sample left-right with probability p. (N, C, H, W) -> same."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
