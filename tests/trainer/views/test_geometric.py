"""Batched crops and flips: boxes follow RandomResizedCrop's rules; crops sample the right pixels."""

from __future__ import annotations

import math

import torch

from trainer.views.geometric import crop_boxes, random_hflip, random_resized_crop, sample_boxes


def test_boxes_lie_in_the_image_with_area_and_aspect_in_range():
    g = torch.Generator().manual_seed(0)
    boxes = sample_boxes(4000, scale=(0.2, 0.6), ratio=(0.5, 2.0), generator=g)
    x0, y0, x1, y1 = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 1 + 1e-6).all() and (y1 <= 1 + 1e-6).all()
    w, h = x1 - x0, y1 - y0
    unclamped = (w < 1) & (h < 1)
    area = (w * h)[unclamped]
    assert area.min() >= 0.2 - 1e-5 and area.max() <= 0.6 + 1e-5
    aspect = (w / h)[unclamped]
    assert aspect.min() >= 0.5 - 1e-4 and aspect.max() <= 2.0 + 1e-4
    # log-uniform aspect: as many boxes wider than tall as taller than wide
    assert abs(float((aspect > 1).float().mean()) - 0.5) < 0.05


def test_full_box_reproduces_the_image_and_half_box_its_quarter():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    assert torch.allclose(crop_boxes(images, full, 8), images, atol=1e-4)
    top_left = torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 2)
    assert torch.allclose(crop_boxes(images, top_left, 4), images[:, :, :4, :4], atol=1e-4)
    bottom_right = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]])
    crops = crop_boxes(images, bottom_right, 4)
    assert torch.allclose(crops[0], images[0, :, 4:, 4:], atol=1e-4)
    assert torch.allclose(crops[1], images[1, :, 4:, :4], atol=1e-4)  # each sample its own box


def test_crops_keep_channels_and_differ_per_sample():
    images = torch.randn(5, 7, 32, 32)
    views, boxes = random_resized_crop(images, 16, scale=(0.1, 0.5), generator=torch.Generator().manual_seed(1))
    assert views.shape == (5, 7, 16, 16) and boxes.shape == (5, 4)
    assert len({tuple(b.tolist()) for b in boxes}) == 5


def test_hflip_flips_each_sample_or_leaves_it():
    images = torch.randn(64, 1, 4, 4)
    out = random_hflip(images, 0.5, torch.Generator().manual_seed(2))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 16 < sum(flipped) < 48
    assert math.isclose(float(random_hflip(images, 0.0).sub(images).abs().sum()), 0.0)
