"""Multi-head self-attention variants for ViT blocks, selected by name (`build_attention`).

"sdpa":     softmax(Q K^T / sqrt(d)) V through torch.nn.functional.scaled_dot_product_attention,
            which dispatches to flash / memory-efficient kernels that never store the L x L matrix.
"explicit": the same equation written out (Vaswani et al. 2017, eq. 1); it stores the L x L
            attention matrix per head for backward, the memory that MIRAM's Table II runs into.
            Same parameters as "sdpa", so either loads the other's weights.
"nystrom":  Nystromformer (Xiong et al. 2021, eq. 14-15) from the `nystrom-attention` package:
            softmax attention approximated through `num_landmarks` segment-mean landmarks, linear in
            L. MIRAM (paper 000, §II-A-3, §IV-C, Table II) uses it in the high-resolution decoder only.
"linformer": Linformer (Wang et al. 2020, eq. 7; linformer_attention.py): keys and values projected
            along the sequence to k = `num_landmarks` rows by learned (k x n) matrices; built for one
            length n = `seq_len`.
"performer": Performer FAVOR+ (Choromanski et al. 2021, Lemma 1, §2.4; performer_attention.py):
            softmax kernel estimated with m = `num_landmarks` positive orthogonal random features.
MIRAM's Table V compares all three linear variants in its fine decoder.

Every variant maps x: (N, L, dim) -> (N, L, dim).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nystrom_attention import NystromAttention
from torch import nn

from trainer.layers.linformer_attention import LinformerSelfAttention
from trainer.layers.performer_attention import PerformerSelfAttention

ATTENTION_KINDS = ("sdpa", "explicit", "nystrom", "linformer", "performer")


class SelfAttention(nn.Module):
    """Standard multi-head self-attention; `kernel` picks "sdpa" or "explicit" (same weights)."""

    def __init__(self, *, dim: int, num_heads: int, qkv_bias: bool = True, kernel: str = "sdpa"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if kernel not in ("sdpa", "explicit"):
            raise ValueError(f"unknown attention kernel {kernel!r}")
        self.num_heads = num_heads
        self.kernel = kernel
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, L, head_dim)
        if self.kernel == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (N, heads, L, L)
            out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class NystromSelfAttention(nn.Module):
    """Nystromformer attention with `num_landmarks` landmarks (and the package's depthwise-conv
    skip on V, Xiong et al. 2021 §3.3, kernel `residual_conv_kernel` along the sequence).

    The package pads L up to a multiple of `num_landmarks` with zero tokens at the front; left
    unmasked, those zeros enter the landmark means and take softmax weight as keys. A mask over
    the real tokens keeps the padding out (the package's own `mask` argument).
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        num_landmarks: int = 64,
        pinv_iterations: int = 6,
        residual_conv_kernel: int = 33,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.attn = NystromAttention(
            dim=dim,
            dim_head=dim // num_heads,
            heads=num_heads,
            num_landmarks=num_landmarks,
            pinv_iterations=pinv_iterations,
            residual=True,
            residual_conv_kernel=residual_conv_kernel,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.attn(x, mask=real)


def build_attention(
    kind: str,
    *,
    dim: int,
    num_heads: int,
    qkv_bias: bool = True,
    num_landmarks: int = 64,
    seq_len: int | None = None,
) -> nn.Module:
    """Name -> attention module. `num_landmarks` is the size of the approximation: Nystrom's
    landmarks, Linformer's projected length k, Performer's random features m; the softmax kernels
    ignore it. `seq_len` (tokens per sequence) is needed by "linformer" and ignored by the others."""
    if kind in ("sdpa", "explicit"):
        return SelfAttention(dim=dim, num_heads=num_heads, qkv_bias=qkv_bias, kernel=kind)
    if kind == "nystrom":
        return NystromSelfAttention(dim=dim, num_heads=num_heads, num_landmarks=num_landmarks)
    if kind == "linformer":
        if seq_len is None:
            raise ValueError("linformer attention needs seq_len, the number of tokens it will see")
        return LinformerSelfAttention(
            dim=dim, num_heads=num_heads, seq_len=seq_len, proj_len=num_landmarks, qkv_bias=qkv_bias
        )
    if kind == "performer":
        return PerformerSelfAttention(dim=dim, num_heads=num_heads, num_features=num_landmarks, qkv_bias=qkv_bias)
    raise ValueError(f"unknown attention {kind!r}; choose from {ATTENTION_KINDS}")
