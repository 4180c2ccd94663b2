"""Performer self-attention, FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with Performers").

§2.3, Lemma 1: the softmax kernel is an expectation over Gaussian w ~ N(0, I_d),

    exp(x^T y) = E_w[exp(w^T x - |x|^2/2) exp(w^T y - |y|^2/2)],

so with m draws, phi(x) = exp(w_j^T x - |x|^2/2)_j / sqrt(m) gives positive features with
phi(x)^T phi(y) ~ exp(x^T y). Taking x = q / d^(1/4), y = k / d^(1/4) makes that exp(q^T k / sqrt(d)),
softmax attention's kernel, and reassociating the products makes attention linear in L:

    Att(Q, K, V) = D^-1 (phi(Q) (phi(K)^T V)),   D = diag(phi(Q) (phi(K)^T 1_L)).

The w_j are orthogonal random features (§2.4): exactly orthogonal within each block of d rows
(QR of a Gaussian matrix), blocks stacked up to m rows, each row rescaled to the length of a
d-dimensional Gaussian vector (chi-distributed) so every w_j is marginally N(0, I_d).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def orthogonal_gaussian_features(num_features: int, dim: int) -> torch.Tensor:
    """-> (num_features, dim): block-orthogonal rows with chi(dim)-distributed norms, drawn from
    torch's global generator."""
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        q, r = torch.linalg.qr(torch.randn(dim, dim))
        # Sign-fixing the columns by R's diagonal makes Q Haar-distributed (uniform over rotations).
        blocks.append((q * torch.sign(torch.diagonal(r))).T)
    directions = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, dim).norm(dim=1, keepdim=True)
    return directions * norms


class PerformerSelfAttention(nn.Module):
    """x: (N, L, dim) -> (N, L, dim) with `num_features` (m) positive orthogonal random features
    per layer, shared by its heads.

    The features are drawn once, at construction (deterministic given torch's seed), and kept as a
    buffer, so they are saved in checkpoints and move with the module. They are never redrawn
    during training (the paper also tries periodic redrawing; not done here).
    """

    def __init__(self, *, dim: int, num_heads: int, num_features: int = 64, qkv_bias: bool = True,
                 feature_eps: float = 1e-4):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("random_features", orthogonal_gaussian_features(num_features, dim // num_heads))
        self.feature_eps = feature_eps

    def positive_random_features(self, x: torch.Tensor, *, is_query: bool) -> torch.Tensor:
        """x: (N, heads, L, head_dim), already scaled by head_dim^(-1/4) -> phi(x): (N, heads, L, m) > 0.

        Before exp, the largest exponent is subtracted (as the reference implementation does): per
        query over its features, and for keys over all keys and features of a sample and head.
        That multiplies phi(q_i) by a constant of its own and every phi(k_j) by one shared constant,
        both cancelling in D^-1, while exp can no longer overflow. The subtracted maximum includes
        -|x|^2/2 (the reference leaves that out), so the largest feature is exactly 1 and cannot
        underflow either. `feature_eps` (the reference's 1e-4) is added to every shifted feature:
        with the keys' one shared shift, a key of large norm pushes every other key's features to
        0, and a query that only meets those would divide 0 by 0.
        """
        exponents = x @ self.random_features.T - x.square().sum(dim=-1, keepdim=True) / 2
        over = (-1,) if is_query else (-2, -1)
        exponents = exponents - exponents.amax(dim=over, keepdim=True).detach()
        return (exponents.exp() + self.feature_eps) / math.sqrt(self.random_features.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, L, head_dim)
        scale = q.shape[-1] ** -0.25
        phi_q = self.positive_random_features(q * scale, is_query=True)
        phi_k = self.positive_random_features(k * scale, is_query=False)
        context = phi_k.transpose(-2, -1) @ v  # phi(K)^T V: (N, heads, m, head_dim)
        normaliser = phi_q @ phi_k.sum(dim=-2).unsqueeze(-1)  # diagonal of D: (N, heads, L, 1)
        out = (phi_q @ context) / normaliser
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))
