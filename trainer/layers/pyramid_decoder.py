"""An upsampling decoder without skip connections that returns its feature map at every level (the
decoder of PCRLv2's non-skip U-Net, paper 003 §3.1 eq. 1 and Fig. 3).

Each level doubles the resolution of the previous one and applies two 3x3 Conv-BN-ReLU:
    F_i = Conv-BN-ReLU(Conv-BN-ReLU(Up(F_{i-1}))),   F_0 = the encoder's bottleneck.
Its only input is the bottleneck: no encoder feature of higher resolution is concatenated or added
on the way up, so every pixel detail in F_i has to pass through the bottleneck (the paper removes
U-Net's skips because they let pixel restoration bypass the high-level representation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias: BN follows), BatchNorm, ReLU; keeps the resolution."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UpsamplingLevel(nn.Module):
    """(N, in_channels, h, w) -> (N, out_channels, 2h, 2w): nearest 2x upsampling, two Conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class PyramidDecoder(nn.Module):
    """bottleneck (N, in_channels, h, w) -> [F_1, ..., F_depth], F_i: (N, channels[i-1], h*2^i, w*2^i).

    channels=(256, 128, 64, 32, 16) on a stride-32 encoder gives five levels at strides 16, 8, 4,
    2 and 1 (full resolution), the pyramid of PCRLv2's 2D nsUNet.
    """

    def __init__(self, *, in_channels: int, channels: tuple[int, ...] | list[int] = (256, 128, 64, 32, 16)):
        super().__init__()
        widths = [in_channels, *channels]
        self.levels = nn.ModuleList(UpsamplingLevel(c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:]))

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    def forward(self, bottleneck: torch.Tensor, depth: int | None = None) -> list[torch.Tensor]:
        """`depth` stops after that many levels (the finer ones are not computed): a caller that
        needs only level i runs i levels."""
        depth = self.num_levels if depth is None else depth
        if not 1 <= depth <= self.num_levels:
            raise ValueError(f"depth must be in 1..{self.num_levels}, got {depth}")
        features, x = [], bottleneck
        for level in self.levels[:depth]:
            x = level(x)
            features.append(x)
        return features
