import pytest
import torch

from trainer.layers.attention import ATTENTION_KINDS, NystromSelfAttention, SelfAttention, build_attention
from trainer.layers.vit_block import Block


def test_sdpa_and_explicit_agree_with_the_same_weights():
    torch.manual_seed(0)
    sdpa = SelfAttention(dim=32, num_heads=4, kernel="sdpa")
    explicit = SelfAttention(dim=32, num_heads=4, kernel="explicit")
    explicit.load_state_dict(sdpa.state_dict())
    x = torch.randn(3, 17, 32)
    assert torch.allclose(sdpa(x), explicit(x), atol=1e-5)


def test_nystrom_with_one_landmark_per_token_is_softmax_attention():
    # Landmarks = tokens makes the Nystrom factorisation exact (Xiong et al. 2021, eq. 14) up to
    # the iterative pseudo-inverse (run to convergence here: 12 iterations, the default is 6); the
    # depthwise-conv skip is zeroed to compare attention alone.
    torch.manual_seed(0)
    dim, heads, length = 32, 4, 16
    nystrom = NystromSelfAttention(dim=dim, num_heads=heads, num_landmarks=length, pinv_iterations=12)
    torch.nn.init.zeros_(nystrom.attn.res_conv.weight)
    exact = SelfAttention(dim=dim, num_heads=heads, qkv_bias=False)
    exact.qkv.weight.data.copy_(nystrom.attn.to_qkv.weight)
    exact.proj.load_state_dict(nystrom.attn.to_out[0].state_dict())
    x = 0.3 * torch.randn(2, length, dim)
    assert torch.allclose(nystrom(x), exact(x), atol=1e-4)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
@pytest.mark.parametrize("length", [17, 64])  # 17: padded up to a multiple of the landmarks
def test_block_keeps_shape_and_passes_gradients(kind, length):
    torch.manual_seed(0)
    block = Block(dim=32, num_heads=2, attention=kind, num_landmarks=8, seq_len=length)
    x = torch.randn(2, length, 32, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())
    assert torch.isfinite(x.grad).all()


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError):
        build_attention("flash", dim=8, num_heads=2)
