"""Images <-> sequences of flattened patches, for any channel count.

MAE's reference code reshapes with a literal 3 for the channels, so single-channel mammograms or
multi-channel stacks would not round-trip; here C is read from the tensor (He et al. 2022, §3
"Reconstruction target": the decoder predicts the pixel values of each patch).

Patch order is raster order over the patch grid (row i, then column j: l = i * w + j), and inside a
patch the flattened vector is ordered (row, column, channel), i.e. index (a * p + b) * C + c holds
image[c, i*p + a, j*p + b]. This matches MAE's `patchify`, so targets stay comparable.
"""

from __future__ import annotations

import math

import torch


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """imgs: (N, C, H, W) -> (N, L, p*p*C) with L = (H/p) * (W/p), raster order of the patch grid."""
    n, c, height, width = imgs.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"image {height}x{width} is not divisible into {p}x{p} patches")
    h, w = height // p, width // p
    x = imgs.reshape(n, c, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, h * w, p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
    """patches: (N, L, p*p*C) -> (N, C, h*p, w*p); grid_size (h, w) defaults to a square grid."""
    n, length, dim = patches.shape
    p = patch_size
    if dim % (p * p):
        raise ValueError(f"patch vectors of length {dim} do not hold {p}x{p} patches")
    c = dim // (p * p)
    if grid_size is None:
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"{length} patches do not form a square grid; pass grid_size")
        grid_size = (side, side)
    h, w = grid_size
    if h * w != length:
        raise ValueError(f"grid {h}x{w} does not hold {length} patches")
    x = patches.reshape(n, h, w, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, c, h * p, w * p)
