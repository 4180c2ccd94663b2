"""Batched random rotation of (N, C, H, W) views about their centre, one angle per sample.

PCRLv2's 2D global augmentation is "random crop, random horizontal flip, and random rotation"
(paper 003 §4.3), +-10 degrees in the authors' released pipeline. Sampled bilinearly through
`grid_sample` like trainer/views/geometric.py; the corners the rotation brings in from outside are
0, the data set's mean on standardised images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """images: (N, C, H, W), angles: (N,) radians, counter-clockwise as displayed -> (N, C, H, W)."""
    n, _, h, w = images.shape
    cos, sin = torch.cos(angles).to(images.dtype), torch.sin(angles).to(images.dtype)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    # The grid maps each output pixel to where it samples the input, in [-1, 1] coordinates whose
    # units differ along x and y when H != W: rotate in pixel units, rescale by the aspect ratio.
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * h / w
    theta[:, 1, 0] = sin * w / h
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_rotation(images: torch.Tensor, degrees: float = 10.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each sample by its own angle drawn uniformly from [-degrees, degrees]."""
    u = torch.rand(images.shape[0], device=images.device, generator=generator)
    return rotate(images, math.radians(degrees) * (2.0 * u - 1.0))
