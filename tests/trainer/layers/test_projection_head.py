"""Projection heads: widths, BatchNorm placement and the last layer's lack of ReLU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.layers.projection_head import ProjectionHead


def test_three_layer_expander_layout():
    head = ProjectionHead((16, 32, 32, 8))
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 8) and (out < 0).any()  # no ReLU on the output


def test_last_bn_standardises_the_output():
    head = ProjectionHead((16, 32, 8), last_bn=True).train()
    out = head(torch.randn(64, 16) * 5 + 3)
    assert torch.allclose(out.mean(0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(out.std(0, unbiased=False), torch.ones(8), atol=1e-2)


def test_needs_two_widths():
    with pytest.raises(ValueError):
        ProjectionHead((16,))
