"""Batched intensity transforms for normalised (N, C, H, W) images of any channel count.

Colour jitter in SimCLR/VICReg assumes RGB (hue, saturation); medical images are grey or
multi-channel, so the intensity analogues are used: per-sample brightness shift and contrast
scale (the same for every channel, so channel ratios, e.g. stain balance, are kept), Gaussian
blur and Gaussian noise. Inputs are standardised (zero mean, unit std per channel), so brightness
is an additive shift and contrast a scale about each image's own mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _apply(mask: torch.Tensor, changed: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None, None, None], changed, images)


def random_brightness_contrast(
    images: torch.Tensor, *, brightness: float = 0.4, contrast: float = 0.4, p: float = 0.8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """With probability p: x -> (x - mean) * c + mean + b, c ~ U(1 - contrast, 1 + contrast),
    b ~ U(-brightness, brightness) (in std units), one draw per sample."""
    n, device = images.shape[0], images.device
    u = torch.rand(n, 3, device=device, generator=generator)
    c = (1.0 - contrast + 2.0 * contrast * u[:, 0]).to(images.dtype)[:, None, None, None]
    b = (brightness * (2.0 * u[:, 1] - 1.0)).to(images.dtype)[:, None, None, None]
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return _apply(u[:, 2] < p, (images - mean) * c + mean + b, images)


def gaussian_kernel1d(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """sigma: (N,) -> (N, 2 * radius + 1) normalised Gaussian taps."""
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    k = torch.exp(-0.5 * (x[None] / sigma[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def random_gaussian_blur(
    images: torch.Tensor, *, sigma: tuple[float, float] = (0.1, 2.0), p: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """With probability p, blur each sample with its own sigma ~ U(sigma) pixels (separable,
    reflect padding; SimCLR's blur). (N, C, H, W) -> same."""
    n, c, h, w = images.shape
    u = torch.rand(n, 2, device=images.device, generator=generator)
    s = (sigma[0] + (sigma[1] - sigma[0]) * u[:, 0]).to(images.dtype)
    radius = max(1, min(int(3 * sigma[1] + 0.5), (min(h, w) - 1) // 2))
    k = gaussian_kernel1d(s, radius)  # (N, K)
    # One group per (sample, channel): each sample's kernel applied to its own channels.
    x = images.reshape(1, n * c, h, w)
    kx = k.repeat_interleave(c, dim=0)[:, None, None, :]
    ky = k.repeat_interleave(c, dim=0)[:, None, :, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kx, groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), ky, groups=n * c)
    return _apply(u[:, 1] < p, x.reshape(n, c, h, w), images)


def random_gaussian_noise(
    images: torch.Tensor, *, std: float = 0.1, p: float = 0.5, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """With probability p, add N(0, std^2) noise (std in the images' standardised units)."""
    u = torch.rand(images.shape[0], device=images.device, generator=generator)
    noise = torch.randn(images.shape, device=images.device, dtype=images.dtype, generator=generator) * std
    return _apply(u < p, images + noise, images)
