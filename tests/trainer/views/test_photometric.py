"""Intensity views: per-sample draws, channel ratios kept, blur normalised, probabilities honoured."""

from __future__ import annotations

import torch

from trainer.views.photometric import (
    gaussian_kernel1d, random_brightness_contrast, random_gaussian_blur, random_gaussian_noise,
)


def test_brightness_contrast_is_an_affine_map_per_sample_shared_by_channels():
    images = torch.randn(8, 3, 6, 6)
    out = random_brightness_contrast(images, brightness=0.5, contrast=0.5, p=1.0, generator=torch.Generator().manual_seed(0))
    for x, y in zip(images, out):
        # one (scale, shift) for every pixel of every channel of the sample
        a = torch.linalg.lstsq(torch.stack([x.flatten(), torch.ones(x.numel())], 1), y.flatten()[:, None]).solution
        assert torch.allclose(a[0] * x + a[1], y, atol=1e-4)
        assert 0.5 - 1e-4 <= float(a[0]) <= 1.5 + 1e-4
    assert torch.equal(random_brightness_contrast(images, p=0.0), images)


def test_kernel_is_normalised_and_symmetric():
    k = gaussian_kernel1d(torch.tensor([0.5, 2.0]), 4)
    assert torch.allclose(k.sum(1), torch.ones(2))
    assert torch.allclose(k, k.flip(1))
    assert k[1, 4] < k[0, 4]  # wider sigma, lower peak


def test_blur_keeps_constant_images_and_smooths_noise():
    flat = torch.full((3, 2, 16, 16), 0.7)
    assert torch.allclose(random_gaussian_blur(flat, p=1.0), flat, atol=1e-5)
    noise = torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    blurred = random_gaussian_blur(noise, sigma=(1.5, 2.0), p=1.0)
    assert blurred.std() < 0.6 * noise.std()
    assert torch.equal(random_gaussian_blur(noise, p=0.0), noise)


def test_noise_is_added_only_with_probability_p():
    images = torch.zeros(200, 1, 4, 4)
    out = random_gaussian_noise(images, std=0.1, p=0.5, generator=torch.Generator().manual_seed(3))
    changed = (out.flatten(1).abs().sum(1) > 0).float().mean()
    assert 0.35 < float(changed) < 0.65
    assert 0.07 < float(out[out != 0].std()) < 0.13
