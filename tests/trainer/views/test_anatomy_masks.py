"""Anatomy-shaped masks (paper 001 §3.2.2, §5.2): rays from the brightest point, stripes, blocks."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.views.anatomy_masks import (
    block_masks, border_points, brightest_points, random_ray_masks, ray_masks, stripe_masks,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blob_images(centres: list[tuple[int, int]], size: int = 128, channels: int = 3, sigma: float = 8.0,
                speck: bool = True) -> torch.Tensor:
    """A dim noisy background with one broad bright blob per image (the optic disc), and with `speck`
    one hot single pixel, brighter than the blob, far from it (noise)."""
    rows = torch.arange(size, dtype=torch.float32)[:, None]
    cols = torch.arange(size, dtype=torch.float32)[None, :]
    images = 0.05 * torch.randn(len(centres), channels, size, size, generator=seeded(0))
    for i, (r, c) in enumerate(centres):
        images[i] += torch.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2))
        if speck:
            images[i, :, (r + size // 2) % size, (c + size // 2) % size] = 3.0
    return images


def runs_on_circle(mask: torch.Tensor, centre: tuple[float, float], radius: float, samples: int = 1440) -> int:
    """Number of separate masked arcs met walking once around a circle about `centre`."""
    angles = torch.arange(samples) * (2 * math.pi / samples)
    rows = (centre[0] + radius * torch.sin(angles)).round().long()
    cols = (centre[1] + radius * torch.cos(angles)).round().long()
    on = mask[rows, cols]
    return int((on & ~on.roll(1)).sum())


def test_the_brightest_point_is_the_blob_not_a_noisy_pixel():
    images = blob_images([(30, 90), (100, 20)])
    raw = images.mean(1).flatten(1).argmax(1)
    assert [(int(i) // 128, int(i) % 128) for i in raw] == [(94, 26), (36, 84)]  # unblurred: the speck wins
    assert brightest_points(images, sigma=3.5).tolist() == [[30.0, 90.0], [100.0, 20.0]]


def test_ray_masks_start_at_the_brightest_point_and_radiate_from_it():
    centres = [(30, 90), (64, 64), (100, 20)]
    images = blob_images(centres)
    masks = random_ray_masks(images, num_rays=20, thickness=6 / 128, blur=3.5 / 128, generator=seeded(1))
    assert masks.shape == (3, 1, 128, 128) and masks.dtype == torch.bool
    for mask, (cr, cc) in zip(masks[:, 0], centres):
        assert mask[cr, cc]  # the brightest point is on the rays
        assert 0.05 < mask.float().mean() < 0.6
        # Star-shaped about the brightest point: every masked pixel sees it along masked pixels.
        rows, cols = mask.nonzero(as_tuple=True)
        for f in (0.25, 0.5):
            r = (cr + f * (rows - cr)).round().long()
            c = (cc + f * (cols - cc)).round().long()
            assert mask[r, c].all()
        border = torch.cat([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert border.any()  # rays run out to the image border


def test_number_of_rays():
    centre = torch.tensor([[64.0, 64.0]])
    angles = torch.arange(12) * (2 * math.pi / 12) + 0.1
    ends = centre[:, None] + 63 * torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1)[None]
    mask = ray_masks(centre, ends, 128, 128, thickness=3.0)[0, 0]
    for radius in (20, 40, 60):
        assert runs_on_circle(mask, (64, 64), radius) == 12
    # random rays: one arc per drawn direction (these seeds draw directions well apart)
    images = blob_images([(64, 64)])
    for seed in (0, 2, 4):
        masks = random_ray_masks(images, num_rays=8, thickness=2 / 128, blur=3.5 / 128, generator=seeded(seed))
        drawn = border_points(1, 8, 128, 128, generator=seeded(seed))[0]  # the same draws
        directions = torch.atan2(drawn[:, 0] - 64, drawn[:, 1] - 64).sort().values
        gaps = torch.cat([directions.diff(), directions[:1] + 2 * math.pi - directions[-1:]])
        assert gaps.min() > 0.15
        assert runs_on_circle(masks[0, 0], (64, 64), 50) == 8


def test_rays_end_on_the_border_in_equal_shares_per_side():
    ends = border_points(5, 80, 96, 64, generator=seeded(2))
    rows, cols = ends[..., 0], ends[..., 1]
    on_side = torch.stack([rows == 0, cols == 63, rows == 95, cols == 0])  # top, right, bottom, left
    assert on_side.any(dim=0).all()
    assert on_side.sum(dim=2).tolist() == [[20] * 5] * 4
    assert ((rows >= 0) & (rows <= 95) & (cols >= 0) & (cols <= 63)).all()
    centre = torch.tensor([[10.0, 40.0]]).expand(5, -1)
    masks = ray_masks(centre, ends, 96, 64, thickness=1.0)[:, 0]
    for i in range(5):
        ends_px = ends[i].round().long()
        assert masks[i, ends_px[:, 0], ends_px[:, 1]].all()


def test_a_ray_is_at_least_one_pixel_wide_on_small_images():
    images = blob_images([(20, 20)], size=32, sigma=3, speck=False)
    masks = random_ray_masks(images, num_rays=4, generator=seeded(3))  # 4 px at 512 is 0.25 px here
    r, c = brightest_points(images, sigma=3.5 / 512 * 32)[0].long().tolist()
    assert abs(r - 20) <= 1 and abs(c - 20) <= 1
    assert masks[0, 0, r, c] and masks.sum() >= 4 * 10  # four unbroken rays of 10 px or more


@pytest.mark.parametrize("ratio, width", [(0.5, 1), (0.25, 4), (0.75, 3)])
def test_stripes_cover_the_requested_ratio_in_full_width_rows(ratio, width):
    masks = stripe_masks(6, 96, 80, ratio=ratio, stripe_width=width, generator=seeded(4))
    assert masks.shape == (6, 1, 96, 80) and masks.dtype == torch.bool
    rows = masks[:, 0, :, 0]
    assert torch.equal(masks[:, 0], rows[:, :, None].expand(-1, -1, 80))  # whole rows
    assert torch.allclose(masks.float().mean(dim=(1, 2, 3)), torch.full((6,), ratio), atol=width / 96)
    starts = (rows & ~torch.cat([torch.zeros(6, 1, dtype=torch.bool), rows[:, :-1]], dim=1)).nonzero()[:, 1]
    assert (starts % width == 0).all()  # stripes start on the stripe lattice
    assert len({tuple(r.tolist()) for r in rows}) == 6  # each sample its own stripes


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_blocks_cover_the_requested_ratio_in_grid_cells(ratio):
    masks = block_masks(5, 64, 64, ratio=ratio, grid=16, generator=seeded(6))
    assert masks.shape == (5, 1, 64, 64) and masks.dtype == torch.bool
    assert torch.allclose(masks.float().mean(dim=(1, 2, 3)), torch.full((5,), round(ratio * 256) / 256))
    cells = masks[:, 0].reshape(5, 16, 4, 16, 4)
    assert (cells.all(dim=(2, 4)) | ~cells.any(dim=(2, 4))).all()  # 4 x 4 px cells, all or nothing
    assert len({tuple(m.flatten().tolist()) for m in masks}) == 5


def test_the_block_grid_shrinks_to_the_image():
    masks = block_masks(2, 8, 8, ratio=0.5, grid=32, generator=seeded(7))
    assert masks.float().mean().item() == pytest.approx(0.5)
