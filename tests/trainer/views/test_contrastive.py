"""Two calls give two different views of the same images, at the requested size and channels."""

from __future__ import annotations

import torch

from trainer.views.contrastive import ContrastiveViews


def test_two_views_differ_and_keep_channels():
    images = torch.randn(4, 7, 32, 32)
    views = ContrastiveViews(size=24, scale=(0.3, 1.0))
    g = torch.Generator().manual_seed(0)
    a, b = views(images, g), views(images, g)
    assert a.shape == b.shape == (4, 7, 24, 24)
    assert not torch.allclose(a, b)
    assert torch.isfinite(a).all()
