"""Linformer self-attention (Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity").

Eq. 7, per head i:

    head_i = softmax(Q_i (E K_i)^T / sqrt(d)) (F V_i)

E, F: (k, n) learned projections along the sequence, so attention is (n x k) instead of (n x n).
One E and one F per layer, the same for every head (the paper's "headwise sharing", §4); E and F
stay distinct (its "key-value sharing" would tie them). Because E, F act on positions, the module
is built for one sequence length n and refuses any other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinformerSelfAttention(nn.Module):
    """x: (N, seq_len, dim) -> (N, seq_len, dim); `proj_len` is k of eq. 7.

    k >= seq_len saves nothing (the projected sequence is no shorter than the real one) but is
    allowed, so one setting runs at every image size.
    """

    def __init__(self, *, dim: int, num_heads: int, seq_len: int, proj_len: int = 64, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.seq_len = seq_len
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.key_projection = nn.Parameter(torch.empty(proj_len, seq_len))  # E
        self.value_projection = nn.Parameter(torch.empty(proj_len, seq_len))  # F
        # Xavier with gain 1/sqrt(2), as the fairseq Linformer release initialises its compression
        # layers: each projected key is a weighted sum of n keys and keeps about their scale.
        for projection in (self.key_projection, self.value_projection):
            nn.init.xavier_uniform_(projection, gain=2**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        if length != self.seq_len:
            raise ValueError(f"Linformer attention built for sequences of {self.seq_len} tokens, got {length}")
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, n, head_dim)
        k = torch.einsum("kn,bhnd->bhkd", self.key_projection, k)  # E K: (N, heads, k, head_dim)
        v = torch.einsum("kn,bhnd->bhkd", self.value_projection, v)  # F V
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(Q (EK)^T / sqrt(d)) FV: (N, heads, n, head_dim)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))
