"""Context-bottleneck block: channel pooling then spatial pooling of a feature map (MLVICX, paper 002,
§III-A-1, eq. 1-2; the block is CBAM's, Woo et al., ECCV 2018, ref. [29] there).

    a_ch = sigmoid(Conv_1(AvgPool(y)) + Conv_1(MaxPool(y)))        (eq. 1)  (C, 1, 1)
    k    = a_ch * y
    a_s  = sigmoid(Conv_7([AvgPool_c(k); MaxPool_c(k)]))            (eq. 2)  (1, H, W)
    ŷ    = a_s * k

AvgPool / MaxPool in eq. 1 pool over the spatial positions; in eq. 2 over the channels, giving two
maps that the 7x7 convolution (zero padding 3) turns into one. Conv_1 is one 1x1 convolution shared
by the two pooled vectors, as eq. 1 writes it (`reduction=None`). CBAM, and the authors' released
code, make it a shared bottleneck instead, 1x1 conv C -> C/r, ReLU, 1x1 conv C/r -> C (r = 2 in the
released code): `reduction=r`. No bias and no BatchNorm: eq. 1-2 show none (CBAM puts a BatchNorm
after the 7x7 convolution; the released code does not).
"""

from __future__ import annotations

import torch
from torch import nn


class ContextBottleneck(nn.Module):
    """(N, C, H, W) -> (N, C, H, W): y rescaled per channel (eq. 1), then per position (eq. 2)."""

    def __init__(self, channels: int, *, reduction: int | None = None, spatial_kernel: int = 7):
        super().__init__()
        if reduction is None:
            self.channel_conv: nn.Module = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        else:
            hidden = max(1, channels // reduction)
            self.channel_conv = nn.Sequential(nn.Conv2d(channels, hidden, kernel_size=1, bias=False), nn.ReLU(inplace=True),
                                              nn.Conv2d(hidden, channels, kernel_size=1, bias=False))
        self.spatial_conv = nn.Conv2d(2, 1, kernel_size=spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def channel_map(self, y: torch.Tensor) -> torch.Tensor:
        """a_ch of eq. 1: (N, C, H, W) -> (N, C, 1, 1) in (0, 1)."""
        avg = y.mean(dim=(2, 3), keepdim=True)
        peak = y.amax(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.channel_conv(avg) + self.channel_conv(peak))

    def spatial_map(self, k: torch.Tensor) -> torch.Tensor:
        """a_s of eq. 2: (N, C, H, W) -> (N, 1, H, W) in (0, 1)."""
        pooled = torch.cat([k.mean(dim=1, keepdim=True), k.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.spatial_conv(pooled))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        k = self.channel_map(y) * y
        return self.spatial_map(k) * k
