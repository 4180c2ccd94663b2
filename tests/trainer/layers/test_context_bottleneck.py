import math

import pytest
import torch

from trainer.layers.context_bottleneck import ContextBottleneck


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def channel_conv_by_loops(block: ContextBottleneck, v: list[float]) -> list[float]:
    """Conv_1 of eq. 1 on one pooled vector: one 1x1 conv, or CBAM's conv-ReLU-conv bottleneck."""
    convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d) and m is not block.spatial_conv]
    for i, conv in enumerate(convs):
        w = conv.weight[:, :, 0, 0].tolist()
        v = [sum(w[o][c] * v[c] for c in range(len(v))) for o in range(len(w))]
        if i < len(convs) - 1:
            v = [max(0.0, x) for x in v]
    return v


def refine_by_loops(block: ContextBottleneck, y: torch.Tensor) -> torch.Tensor:
    """Eq. 1-2 of paper 002 for one (C, H, W) map, element by element."""
    c_n, h_n, w_n = y.shape
    y = y.tolist()
    avg = [sum(y[c][i][j] for i in range(h_n) for j in range(w_n)) / (h_n * w_n) for c in range(c_n)]
    peak = [max(y[c][i][j] for i in range(h_n) for j in range(w_n)) for c in range(c_n)]
    a_ch = [sigmoid(p + q) for p, q in zip(channel_conv_by_loops(block, avg), channel_conv_by_loops(block, peak))]
    k = [[[a_ch[c] * y[c][i][j] for j in range(w_n)] for i in range(h_n)] for c in range(c_n)]
    pooled = [[[sum(k[c][i][j] for c in range(c_n)) / c_n for j in range(w_n)] for i in range(h_n)],
              [[max(k[c][i][j] for c in range(c_n)) for j in range(w_n)] for i in range(h_n)]]
    kernel = block.spatial_conv.weight[0].tolist()  # (2, 7, 7)
    r = len(kernel[0]) // 2
    out = torch.zeros(c_n, h_n, w_n, dtype=torch.float64)
    for i in range(h_n):
        for j in range(w_n):
            s = 0.0
            for m in range(2):
                for di in range(-r, r + 1):
                    for dj in range(-r, r + 1):
                        if 0 <= i + di < h_n and 0 <= j + dj < w_n:  # zero padding
                            s += kernel[m][di + r][dj + r] * pooled[m][i + di][j + dj]
            for c in range(c_n):
                out[c, i, j] = sigmoid(s) * k[c][i][j]
    return out


@pytest.mark.parametrize("reduction", [None, 2])
def test_block_matches_equations_1_and_2_computed_by_loops(reduction):
    torch.manual_seed(0)
    block = ContextBottleneck(6, reduction=reduction).double()
    y = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    refined = block(y)
    assert refined.shape == y.shape
    for n in range(2):
        assert torch.allclose(refined[n], refine_by_loops(block, y[n]), atol=1e-12)
    assert not torch.allclose(refined, y)


def test_channel_map_is_one_conv_as_eq_1_writes_or_a_shared_bottleneck():
    def shapes(block):
        return [tuple(m.weight.shape) for m in block.channel_conv.modules() if isinstance(m, torch.nn.Conv2d)]

    assert shapes(ContextBottleneck(8)) == [(8, 8, 1, 1)]
    assert shapes(ContextBottleneck(8, reduction=4)) == [(2, 8, 1, 1), (8, 2, 1, 1)]


def test_maps_gate_between_zero_and_one_and_keep_the_shape():
    torch.manual_seed(1)
    block = ContextBottleneck(16)
    y = torch.randn(3, 16, 9, 7)
    a_ch, a_s = block.channel_map(y), block.spatial_map(y)
    assert a_ch.shape == (3, 16, 1, 1) and a_s.shape == (3, 1, 9, 7)
    assert ((a_ch > 0) & (a_ch < 1)).all() and ((a_s > 0) & (a_s < 1)).all()
    assert block(y).shape == y.shape
    assert (block(y.abs()).abs() <= y.abs()).all()  # gates only scale down


@pytest.mark.parametrize("reduction", [None, 2])
def test_gradient_reaches_every_parameter_and_the_input(reduction):
    torch.manual_seed(2)
    block = ContextBottleneck(8, reduction=reduction)
    y = torch.randn(2, 8, 6, 6, requires_grad=True)
    block(y).pow(2).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert y.grad is not None and y.grad.abs().sum() > 0
