import pytest
import torch

from trainer.layers.attention import SelfAttention, build_attention
from trainer.layers.performer_attention import PerformerSelfAttention, orthogonal_gaussian_features

DIM, HEADS = 16, 2  # head_dim 8


def performer_and_exact(num_features: int, seed: int) -> tuple[PerformerSelfAttention, SelfAttention]:
    torch.manual_seed(seed)
    performer = PerformerSelfAttention(dim=DIM, num_heads=HEADS, num_features=num_features)
    exact = SelfAttention(dim=DIM, num_heads=HEADS, kernel="sdpa")
    exact.load_state_dict({name: value for name, value in performer.state_dict().items() if name != "random_features"})
    return performer, exact


def heads_of(attn: PerformerSelfAttention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    n, length, dim = x.shape
    qkv = attn.qkv(x).reshape(n, length, 3, HEADS, dim // HEADS).permute(2, 0, 3, 1, 4)
    return tuple(qkv.unbind(0))  # q, k, v: (N, heads, L, head_dim)


def merge_heads(attn: PerformerSelfAttention, out: torch.Tensor) -> torch.Tensor:
    n, _, length, _ = out.shape
    return attn.proj(out.transpose(1, 2).reshape(n, length, DIM))


def test_random_features_are_block_orthogonal_with_gaussian_lengths():
    torch.manual_seed(0)
    d = 8
    w = orthogonal_gaussian_features(4096, d)
    assert w.shape == (4096, d)
    for block in w[:24].split(d):  # 3 full blocks
        gram = block @ block.T
        assert torch.allclose(gram, torch.diag(gram.diagonal()), atol=1e-4)
    lengths = w.norm(dim=1)
    assert lengths.std() > 0.1  # chi-distributed, not all sqrt(d)
    assert abs(lengths.square().mean() - d) < 0.05 * d  # E|w|^2 = d for w ~ N(0, I_d)
    partial = orthogonal_gaussian_features(11, d)  # one full block and 3 rows of a second
    assert partial.shape == (11, d)


def test_features_estimate_the_softmax_kernel_without_bias():
    # Lemma 1: E[phi(x)^T phi(y)] = exp(x^T y), with the unshifted features.
    torch.manual_seed(0)
    d, m = 8, 8192
    w = orthogonal_gaussian_features(m, d)
    x, y = 0.4 * torch.randn(64, d), 0.4 * torch.randn(64, d)

    def phi(z):
        return torch.exp(z @ w.T - z.square().sum(-1, keepdim=True) / 2) / m**0.5

    relative_error = (phi(x) * phi(y)).sum(-1) / torch.exp((x * y).sum(-1)) - 1
    assert relative_error.abs().mean() < 0.06  # each pair: the estimator's spread at this m
    assert relative_error.mean().abs() < 0.02  # over pairs: no systematic offset


def test_many_features_approach_softmax_attention_and_the_error_shrinks_with_more():
    # Small inputs keep the estimator's variance low; the error is measured against how far softmax
    # attention is from uniform attention (the mean of V), so a nearly uniform case cannot pass trivially.
    def relative_error(num_features: int, seed: int) -> float:
        x = torch.randn(2, 16, DIM, generator=torch.Generator().manual_seed(seed))
        performer, exact = performer_and_exact(num_features, seed)
        with torch.no_grad():
            v = heads_of(performer, x)[2]
            uniform = merge_heads(performer, v.mean(dim=-2, keepdim=True).expand_as(v))
            target = exact(x)
            return ((performer(x) - target).norm() / (uniform - target).norm()).item()

    few = sum(relative_error(64, seed) for seed in range(3)) / 3
    many = sum(relative_error(4096, seed) for seed in range(3)) / 3
    assert many < 0.25
    assert many < few / 3  # ~ 1 / sqrt(m): 8x expected


def test_implied_attention_is_positive_row_stochastic_and_is_what_forward_computes():
    torch.manual_seed(0)
    performer = PerformerSelfAttention(dim=DIM, num_heads=HEADS, num_features=32)
    x = torch.randn(2, 10, DIM)
    with torch.no_grad():
        q, k, v = heads_of(performer, x)
        scale = q.shape[-1] ** -0.25
        phi_q = performer.positive_random_features(q * scale, is_query=True)
        phi_k = performer.positive_random_features(k * scale, is_query=False)
        assert (phi_q > 0).all() and (phi_k > 0).all()
        implied = phi_q @ phi_k.transpose(-2, -1)  # (N, heads, L, L): D^-1 A's A
        implied = implied / implied.sum(dim=-1, keepdim=True)
        assert (implied > 0).all()
        assert torch.allclose(merge_heads(performer, implied @ v), performer(x), atol=1e-5)


def test_max_shifts_only_rescale_the_features():
    # Queries: one factor per query; keys: one factor per sample and head (both cancel in D^-1).
    torch.manual_seed(0)
    performer = PerformerSelfAttention(dim=DIM, num_heads=HEADS, num_features=16, feature_eps=0.0)
    z = torch.randn(2, HEADS, 5, DIM // HEADS)
    w = performer.random_features
    naive = torch.exp(z @ w.T - z.square().sum(-1, keepdim=True) / 2) / 4
    ratio_q = performer.positive_random_features(z, is_query=True) / naive
    ratio_k = performer.positive_random_features(z, is_query=False) / naive
    assert torch.allclose(ratio_q, ratio_q[..., :1].expand_as(ratio_q), rtol=1e-4)
    assert torch.allclose(ratio_k, ratio_k[..., :1, :1].expand_as(ratio_k), rtol=1e-4)


def test_large_inputs_stay_finite():
    torch.manual_seed(0)
    performer = PerformerSelfAttention(dim=DIM, num_heads=HEADS, num_features=64)
    x = (40 * torch.randn(2, 50, DIM)).requires_grad_()
    y = performer(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("scale", [100.0, 400.0])
def test_inputs_whose_keys_differ_widely_in_norm_stay_finite(scale):
    """Without the features' epsilon a query meeting only keys pushed to 0 by the shared shift
    divided 0 by 0 (here non-finite output from 100x unit scale)."""
    torch.manual_seed(0)
    performer = PerformerSelfAttention(dim=DIM, num_heads=HEADS, num_features=64)
    x = scale * torch.randn(2, 197, DIM)
    assert torch.isfinite(performer(x)).all()


def test_features_are_drawn_once_from_torch_seed_and_kept():
    torch.manual_seed(3)
    first = build_attention("performer", dim=DIM, num_heads=HEADS, num_landmarks=24)
    torch.manual_seed(3)
    second = build_attention("performer", dim=DIM, num_heads=HEADS, num_landmarks=24)
    assert isinstance(first, PerformerSelfAttention)
    assert first.random_features.shape == (24, DIM // HEADS)
    assert torch.equal(first.random_features, second.random_features)
    assert "random_features" in first.state_dict() and not first.random_features.requires_grad
    drawn = first.random_features.clone()
    x = torch.randn(2, 7, DIM)
    out = first(x)
    out.sum().backward()
    assert torch.equal(first.random_features, drawn) and torch.equal(first(x), out)


@pytest.mark.parametrize("num_features", [4, 8, 20])  # fewer, as many as, more than head_dim
def test_any_number_of_features_keeps_the_shape(num_features):
    performer = PerformerSelfAttention(dim=DIM, num_heads=HEADS, num_features=num_features)
    assert performer(torch.randn(3, 9, DIM)).shape == (3, 9, DIM)
