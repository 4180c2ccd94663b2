"""The non-skip pyramid decoder: one input, five levels doubling in resolution, eq. 1 per level."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from trainer.layers.pyramid_decoder import PyramidDecoder


def test_five_levels_double_the_resolution_with_the_given_widths():
    decoder = PyramidDecoder(in_channels=24, channels=(16, 12, 8, 6, 4))
    features = decoder(torch.randn(2, 24, 3, 5))
    assert [tuple(f.shape) for f in features] == [
        (2, 16, 6, 10), (2, 12, 12, 20), (2, 8, 24, 40), (2, 6, 48, 80), (2, 4, 96, 160)]
    assert all((f >= 0).all() for f in features)  # each level ends in ReLU (eq. 1)


def test_the_bottleneck_is_the_only_input():
    params = list(inspect.signature(PyramidDecoder.forward).parameters)
    assert params == ["self", "bottleneck", "depth"]


def test_each_level_is_two_conv_bn_relu_on_the_upsampled_previous_level():
    torch.manual_seed(0)
    decoder = PyramidDecoder(in_channels=8, channels=(6, 4)).eval()
    x = torch.randn(2, 8, 4, 4)
    f1, f2 = decoder(x)
    # Up(F_{i-1}) then the level's own convolutions, computed here from F_1 alone (eq. 1)
    assert torch.allclose(decoder.levels[1].convs(F.interpolate(f1, scale_factor=2.0, mode="nearest")), f2)
    assert torch.allclose(decoder.levels[0].convs(x.repeat_interleave(2, -1).repeat_interleave(2, -2)), f1)
    kinds = [type(m).__name__ for m in decoder.levels[0].convs.modules() if not list(m.children())]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"]


def test_depth_stops_early_with_the_same_features():
    torch.manual_seed(0)
    decoder = PyramidDecoder(in_channels=8, channels=(6, 5, 4)).eval()
    x = torch.randn(1, 8, 2, 2)
    full = decoder(x)
    two = decoder(x, depth=2)
    assert len(two) == 2 and all(torch.equal(a, b) for a, b in zip(two, full))
    with pytest.raises(ValueError, match="depth"):
        decoder(x, depth=4)


def test_every_level_is_trained_through_the_finest():
    decoder = PyramidDecoder(in_channels=8, channels=(6, 4))
    x = torch.randn(2, 8, 2, 2, requires_grad=True)
    decoder(x)[-1].pow(2).mean().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())
