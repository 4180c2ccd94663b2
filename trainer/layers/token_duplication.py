"""Duplicate interpolation of tokens onto a finer patch grid (MIRAM, Vo et al., paper 000, §II-A-2,
eq. 5: "for each encoded token, we interpolate the missing neighboring tokens by duplicating the
selected token's feature vector"; k = 4 copies double the height and width).

Eq. 5 lists the k copies of each token next to each other, (e_1^1 .. e_1^k, ..., e_L^1 .. e_L^k);
each copy handles one sub-region of its patch. Here the copies are written straight to their
sub-region's place on the fine grid, in the fine grid's raster order, so the fine decoder's output
unpatchifies to the fine image and its target is plainly `patchify(fine_image)`. This is eq. 5 up to
a fixed permutation of the sequence, which a transformer with matching position embeddings and
targets does not see. With s = sqrt(k), coarse patch (i, j) owns fine patches (s*i + a, s*j + b)
for a, b in 0..s-1, i.e. for k = 4: (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1).
"""

from __future__ import annotations

import math

import torch


def duplicate_tokens(tokens: torch.Tensor, grid_size: tuple[int, int], k: int = 4) -> torch.Tensor:
    """tokens: (N, h*w, ...) in raster order of an (h, w) grid -> (N, k*h*w, ...) in raster order
    of the (s*h, s*w) grid, s = sqrt(k). Trailing dims are carried along, so a (N, L) mask works too.
    """
    s = math.isqrt(k)
    if s * s != k:
        raise ValueError(f"k must be a square (one copy per sub-region of an s x s split), got {k}")
    h, w = grid_size
    n, length = tokens.shape[:2]
    if length != h * w:
        raise ValueError(f"{length} tokens do not fill a {h}x{w} grid")
    rest = tokens.shape[2:]
    grid = tokens.reshape(n, h, w, *rest)
    grid = grid.repeat_interleave(s, dim=1).repeat_interleave(s, dim=2)
    return grid.reshape(n, k * length, *rest)
