import pytest
import torch

from trainer.layers.attention import SelfAttention, build_attention
from trainer.layers.linformer_attention import LinformerSelfAttention


def shared_weights(linformer: LinformerSelfAttention) -> dict[str, torch.Tensor]:
    """The qkv / proj weights, laid out as SelfAttention's."""
    return {name: value for name, value in linformer.state_dict().items() if name.startswith(("qkv.", "proj."))}


def test_identity_projections_of_full_length_are_softmax_attention():
    torch.manual_seed(0)
    dim, heads, length = 32, 4, 17
    linformer = LinformerSelfAttention(dim=dim, num_heads=heads, seq_len=length, proj_len=length)
    with torch.no_grad():
        linformer.key_projection.copy_(torch.eye(length))
        linformer.value_projection.copy_(torch.eye(length))
    exact = SelfAttention(dim=dim, num_heads=heads, kernel="sdpa")
    exact.load_state_dict(shared_weights(linformer))
    x = torch.randn(3, length, dim)
    assert torch.allclose(linformer(x), exact(x), atol=1e-5)


def test_matches_eq_7_head_by_head_with_shared_projections():
    torch.manual_seed(0)
    dim, heads, length, k = 24, 3, 20, 5
    linformer = LinformerSelfAttention(dim=dim, num_heads=heads, seq_len=length, proj_len=k)
    x = torch.randn(2, length, dim)
    d = dim // heads
    w_q, w_k, w_v = linformer.qkv.weight.split(dim)
    b_q, b_k, b_v = linformer.qkv.bias.split(dim)
    E, F = linformer.key_projection, linformer.value_projection
    heads_out = []
    for i in range(heads):
        part = slice(i * d, (i + 1) * d)
        q = x @ w_q[part].T + b_q[part]
        keys = x @ w_k[part].T + b_k[part]
        values = x @ w_v[part].T + b_v[part]
        heads_out.append(torch.softmax(q @ (E @ keys).transpose(1, 2) / d**0.5, dim=-1) @ (F @ values))
    expected = linformer.proj(torch.cat(heads_out, dim=-1))
    assert torch.allclose(linformer(x), expected, atol=1e-5)


def test_a_sequence_of_another_length_is_refused():
    linformer = LinformerSelfAttention(dim=16, num_heads=2, seq_len=17, proj_len=8)
    with pytest.raises(ValueError, match="17 tokens, got 16"):
        linformer(torch.randn(2, 16, 16))


def test_build_attention_needs_the_length_and_reads_k_from_num_landmarks():
    with pytest.raises(ValueError, match="seq_len"):
        build_attention("linformer", dim=16, num_heads=2)
    attn = build_attention("linformer", dim=16, num_heads=2, num_landmarks=6, seq_len=30)
    assert isinstance(attn, LinformerSelfAttention)
    assert attn.key_projection.shape == attn.value_projection.shape == (6, 30)
    assert attn(torch.randn(1, 30, 16)).shape == (1, 30, 16)
