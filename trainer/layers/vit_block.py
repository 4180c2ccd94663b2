"""Pre-norm transformer block (ViT, Dosovitskiy et al. 2021, eq. 2-3) with a pluggable attention:

    x = x + DropPath(Attention(LN(x)))
    x = x + DropPath(MLP(LN(x)))

built from timm's LayerNorm (eps 1e-6, as MAE), Mlp (GELU, hidden = mlp_ratio * dim) and DropPath.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath, LayerNorm, Mlp
from torch import nn

from trainer.layers.attention import build_attention


class Block(nn.Module):
    """x: (N, L, dim) -> (N, L, dim). `attention` is a name from attention.ATTENTION_KINDS;
    `num_landmarks` and `seq_len` (L, needed by "linformer") go to attention.build_attention."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        attention: str = "sdpa",
        num_landmarks: int = 64,
        seq_len: int | None = None,
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = build_attention(
            attention, dim=dim, num_heads=num_heads, qkv_bias=qkv_bias, num_landmarks=num_landmarks, seq_len=seq_len
        )
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_transformer_weights(module: nn.Module) -> None:
    """MAE's initialisation (He et al. 2022, reference code; ViT's JAX recipe): xavier-uniform
    Linear weights with zero bias, LayerNorm weight 1 and bias 0. Use with `module.apply`."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
