"""Anatomy-shaped masks for TOWER's masked reconstruction proxy task (paper 001 §3.2.2, Fig. 3; §5,
Fig. 8-9). Batched, one draw per sample, on the batch's device; each returns (N, 1, H, W) bool masks,
True where pixels are removed (the released code's Mask is the complement: x'' = x' x Mask keeps 1s).

- Rays (fundus): vessels leave the optic disc like rays from a point, so the mask is `num_rays`
  straight segments from the brightest point of the image (the optic disc) to the image border. As in
  the released code, the brightest point is the maximum of the Gaussian-blurred grey image (blurring
  keeps single noisy pixels from winning; a 21 x 21 kernel, sigma 3.5 px, at 512 px), the far ends
  are drawn uniformly along the border, an equal share on each of the four sides, and the segments
  are 4 px wide at 512 px. Fig. 9(c): 80 rays did best. Sizes are fractions of the image side so the
  mask keeps its shape at any resolution.
- Stripes (X-ray): full-width horizontal stripes, where the ribs lie; a `ratio` of the stripes is
  removed, chosen uniformly per sample (the released code removes single pixel rows).
- Blocks (CT, ultrasound, others): a `grid` x `grid` lattice of square cells (32 x 32 in the
  released code), a `ratio` of the cells removed, chosen uniformly per sample.
Fig. 9(a, b): ratio 50% did best for stripes and blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainer.views.photometric import gaussian_kernel1d

_CHUNK_ELEMENTS = 1 << 24  # (sample, ray, pixel) distances computed at once while drawing rays


def brightest_points(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, C, H, W) -> (N, 2) (row, col) float of the maximum of the channel-mean image blurred by
    a Gaussian of `sigma` pixels (reflect padding; no blur when sigma is 0)."""
    n, _, h, w = images.shape
    grey = images.mean(dim=1, keepdim=True)
    radius = min(math.ceil(3 * sigma), (min(h, w) - 1) // 2)
    if sigma > 0 and radius > 0:
        k = gaussian_kernel1d(torch.tensor([sigma], device=images.device, dtype=grey.dtype), radius)
        grey = F.conv2d(F.pad(grey, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :])
        grey = F.conv2d(F.pad(grey, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None])
    flat = grey.reshape(n, -1).argmax(dim=1)
    return torch.stack([flat // w, flat % w], dim=1).to(images.dtype)


def border_points(
    n: int, num_rays: int, height: int, width: int, *,
    device: torch.device | str = "cpu", generator: torch.Generator | None = None,
) -> torch.Tensor:
    """-> (n, num_rays, 2) (row, col) float on the border of the pixel grid: ray r on side r % 4
    (top, right, bottom, left), at a uniform position along that side."""
    u = torch.rand(n, num_rays, device=device, generator=generator)
    side = (torch.arange(num_rays, device=device) % 4).expand(n, -1)
    zero = torch.zeros_like(u)
    row = torch.where(side == 0, zero, torch.where(side == 2, zero + (height - 1), u * (height - 1)))
    col = torch.where(side == 1, zero + (width - 1), torch.where(side == 3, zero, u * (width - 1)))
    return torch.stack([row, col], dim=-1)


def ray_masks(centres: torch.Tensor, ends: torch.Tensor, height: int, width: int, thickness: float) -> torch.Tensor:
    """centres: (N, 2), ends: (N, R, 2), both (row, col) -> (N, 1, H, W) bool, True at pixels whose
    centre lies within thickness / 2 of a segment from the sample's centre to one of its ends."""
    n, num_rays = ends.shape[:2]
    dtype = torch.float32
    rows = torch.arange(height, device=centres.device, dtype=dtype)[None, None, :, None]
    cols = torch.arange(width, device=centres.device, dtype=dtype)[None, None, None, :]
    v_row = rows - centres[:, 0, None, None, None].to(dtype)  # (N, 1, H, 1): pixel - centre
    v_col = cols - centres[:, 1, None, None, None].to(dtype)
    d = (ends - centres[:, None]).to(dtype)  # (N, R, 2): the segments
    length2 = (d**2).sum(-1).clamp_min(1e-12)
    reach2 = (thickness / 2) ** 2
    mask = torch.zeros(n, height, width, dtype=torch.bool, device=centres.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, n * height * width))
    for start in range(0, num_rays, step):
        d_row = d[:, start:start + step, 0, None, None]  # (N, r, 1, 1)
        d_col = d[:, start:start + step, 1, None, None]
        # Closest point of each segment: the projection of the pixel, clamped to the segment's ends.
        t = ((v_row * d_row + v_col * d_col) / length2[:, start:start + step, None, None]).clamp(0.0, 1.0)
        distance2 = (v_row - t * d_row) ** 2 + (v_col - t * d_col) ** 2
        mask |= (distance2 <= reach2).any(dim=1)
    return mask[:, None]


def random_ray_masks(
    images: torch.Tensor, *, num_rays: int = 80, thickness: float = 4 / 512, blur: float = 3.5 / 512,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(N, C, H, W) -> (N, 1, H, W) bool: rays from each image's brightest point. thickness and blur
    (the Gaussian's sigma) are fractions of the image side; a ray is at least one pixel wide."""
    n, _, h, w = images.shape
    side = min(h, w)
    centres = brightest_points(images, blur * side)
    ends = border_points(n, num_rays, h, w, device=images.device, generator=generator)
    return ray_masks(centres, ends, h, w, max(thickness * side, 1.0))


def _choose(n: int, count: int, ratio: float, device, generator) -> torch.Tensor:
    """-> (n, count) bool with round(ratio * count) True per row, placed uniformly at random."""
    order = torch.rand(n, count, device=device, generator=generator).argsort(dim=1)
    chosen = torch.zeros(n, count, dtype=torch.bool, device=device)
    return chosen.scatter(1, order[:, :round(ratio * count)], True)


def stripe_masks(
    n: int, height: int, width: int, *, ratio: float = 0.5, stripe_width: int = 1,
    device: torch.device | str = "cpu", generator: torch.Generator | None = None,
) -> torch.Tensor:
    """-> (n, 1, height, width) bool: horizontal stripes of `stripe_width` rows (the last one shorter
    when it does not divide the height), round(ratio * stripes) of them removed per sample."""
    stripes = math.ceil(height / stripe_width)
    chosen = _choose(n, stripes, ratio, device, generator)
    rows = chosen.repeat_interleave(stripe_width, dim=1)[:, :height]
    return rows[:, None, :, None].expand(n, 1, height, width)


def block_masks(
    n: int, height: int, width: int, *, ratio: float = 0.5, grid: int = 32,
    device: torch.device | str = "cpu", generator: torch.Generator | None = None,
) -> torch.Tensor:
    """-> (n, 1, height, width) bool: a grid x grid lattice of cells (fewer when the image is smaller
    than the grid), round(ratio * cells) of them removed per sample, resized nearest to the image."""
    grid = min(grid, height, width)
    cells = _choose(n, grid * grid, ratio, device, generator).reshape(n, 1, grid, grid)
    return F.interpolate(cells.float(), size=(height, width), mode="nearest").bool()
