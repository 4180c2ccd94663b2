"""Fixed 2D sine-cosine position embeddings (Vaswani et al. 2017 §3.5, per axis; MAE, He et al.
2022 §A.1: "We use the fixed 2D sine-cosine positional embeddings" in encoder and decoder).

Half of the channels encode the column index and half the row index, each with the 1D formula
[sin(pos * w_i), cos(pos * w_i)], w_i = 1 / 10000^(i / (D/4)). The channel layout (column half
first) is the one MAE's released weights use, so a checkpoint's table is interchangeable with theirs.
"""

from __future__ import annotations

import torch


def sincos_pos_embed_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """positions: (M,) -> (M, embed_dim), computed in float64 for exactness then cast to float32."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def sincos_pos_embed_2d(embed_dim: int, grid_size: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """-> (cls_token + h*w, embed_dim) for a (h, w) patch grid in raster order (l = i * w + j).

    The cls row, when asked for, is all zeros: the cls token carries no position.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4 for 2D sin-cos, got {embed_dim}")
    h, w = grid_size
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat(
        [sincos_pos_embed_1d(embed_dim // 2, cols.reshape(-1)), sincos_pos_embed_1d(embed_dim // 2, rows.reshape(-1))],
        dim=1,
    )
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim), emb], dim=0)
    return emb
