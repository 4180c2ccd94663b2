"""Batched rotation: exact at 0 and 90 degrees, one angle per sample, within the range asked."""

from __future__ import annotations

import math

import torch

from trainer.views.rotation import random_rotation, rotate


def test_zero_angle_is_the_identity_and_a_quarter_turn_is_rot90():
    images = torch.randn(2, 3, 8, 8)
    assert torch.allclose(rotate(images, torch.zeros(2)), images, atol=1e-5)
    quarter = rotate(images, torch.full((2,), math.pi / 2))
    assert torch.allclose(quarter, torch.rot90(images, 1, dims=(-2, -1)), atol=1e-4)  # counter-clockwise


def test_rotation_of_a_non_square_image_keeps_the_centre_row():
    images = torch.zeros(1, 1, 9, 15)
    images[..., 4, 3:12] = 1.0  # a horizontal bar through the centre
    half_turn = rotate(images, torch.tensor([math.pi]))
    assert torch.allclose(half_turn, images.flip(-1).flip(-2), atol=1e-4)


def test_each_sample_gets_its_own_angle_within_the_range():
    images = torch.zeros(64, 1, 33, 33)
    images[..., 16, :] = 1.0  # a horizontal line through the centre
    out = random_rotation(images, degrees=10.0, generator=torch.Generator().manual_seed(0))
    # the line's slope: where its weight sits in the leftmost and rightmost columns
    rows = torch.arange(33, dtype=torch.float32)[:, None]
    left = (out[:, 0, :, 4:5] * rows).sum((1, 2)) / out[:, 0, :, 4:5].sum((1, 2))
    right = (out[:, 0, :, 28:29] * rows).sum((1, 2)) / out[:, 0, :, 28:29].sum((1, 2))
    slope_deg = torch.rad2deg(torch.atan((left - right) / 24))
    assert slope_deg.abs().max() <= 10.5
    assert slope_deg.std() > 3.0 and len(set(slope_deg.round(decimals=2).tolist())) > 50
