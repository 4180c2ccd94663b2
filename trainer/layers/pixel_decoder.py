"""Transformer decoder from a full token grid to pixel patches (MAE, He et al. 2022, §3 "MAE
decoder": fixed position embeddings, a stack of blocks, a linear layer to p*p*C values per patch).

Knows nothing of masking: it takes the complete sequence (cls first, then one token per patch in
raster order of `grid_size`) and predicts every patch; the caller chooses which ones the loss sees.
"""

from __future__ import annotations

import torch
from timm.layers import LayerNorm
from torch import nn

from trainer.layers.pos_embed import sincos_pos_embed_2d
from trainer.layers.vit_block import Block, init_transformer_weights


class PixelDecoder(nn.Module):
    """tokens: (N, 1 + h*w, embed_dim) -> (N, h*w, patch_size**2 * out_chans)."""

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        grid_size: tuple[int, int],
        patch_size: int,
        out_chans: int,
        mlp_ratio: float = 4.0,
        attention: str = "sdpa",
        num_landmarks: int = 64,
    ):
        super().__init__()
        self.grid_size = grid_size
        # A buffer: fixed (never trained), saved in checkpoints, moved with .to(device).
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, grid_size, cls_token=True)[None])
        seq_len = 1 + grid_size[0] * grid_size[1]  # cls + one token per patch; Linformer is built for it
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                attention=attention,
                num_landmarks=num_landmarks,
                seq_len=seq_len,
            )
            for _ in range(depth)
        )
        self.norm = LayerNorm(embed_dim)
        self.pred = nn.Linear(embed_dim, patch_size**2 * out_chans)
        self.apply(init_transformer_weights)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]
