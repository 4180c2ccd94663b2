"""A U-Net decoder over the feature pyramid of a timm `features_only` encoder (Ronneberger et al.,
"U-Net", MICCAI 2015), laid out as segmentation_models_pytorch's Unet decoder.

Starting from the deepest feature map, each block doubles the resolution (nearest), concatenates the
encoder map of that stride when there is one (the skip connection), and applies two 3x3 Conv-BN-ReLU;
blocks continue down to stride 1, so the output has the input's resolution, and a 3x3 convolution
`head` maps the last block's channels to `out_chans`. For a ResNet (maps at strides 2, 4, 8, 16, 32)
the five blocks take skips at strides 16, 8, 4 and 2 and the last one, at full resolution, none;
encoders whose first map is at stride 4 (ConvNeXt, Swin) get two skip-less blocks at the end.
A fine-tuning task with other outputs replaces `head`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.layers.pyramid_decoder import conv_bn_relu


class UNetBlock(nn.Module):
    """(N, in_channels, h, w) [+ skip (N, skip_channels, ~2h, ~2w)] -> (N, out_channels, 2h, 2w), or
    the skip's size when given."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.convs = nn.Sequential(conv_bn_relu(in_channels + skip_channels, out_channels),
                                   conv_bn_relu(out_channels, out_channels))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is None:
            return self.convs(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.convs(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """features (shallow to deep, as timm's features_only returns them) -> (N, out_chans, H, W) at the
    encoder's input resolution (deepest map x its reduction).

    encoder_channels, encoder_reductions: the encoder's `feature_info.channels()` and `.reduction()`
    (powers of two); channels: one width per block, log2(deepest reduction) of them.
    """

    def __init__(
        self, *, encoder_channels: tuple[int, ...] | list[int], encoder_reductions: tuple[int, ...] | list[int],
        channels: tuple[int, ...] | list[int] = (256, 128, 64, 32, 16), out_chans: int,
    ):
        super().__init__()
        if len(encoder_channels) != len(encoder_reductions):
            raise ValueError(f"{len(encoder_channels)} encoder channels for {len(encoder_reductions)} reductions")
        deepest = encoder_reductions[-1]
        if any(r < 1 or r & (r - 1) for r in encoder_reductions):
            raise ValueError(f"encoder reductions must be powers of two, got {list(encoder_reductions)}")
        if len(channels) != int(math.log2(deepest)):
            raise ValueError(f"a stride-{deepest} encoder needs {int(math.log2(deepest))} decoder widths, got {len(channels)}")
        skip_of_stride = {r: i for i, r in enumerate(encoder_reductions[:-1])}
        self.skip_indices: list[int | None] = []
        blocks, width = [], encoder_channels[-1]
        for level, out in enumerate(channels, start=1):
            skip = skip_of_stride.get(deepest >> level)
            self.skip_indices.append(skip)
            blocks.append(UNetBlock(width, 0 if skip is None else encoder_channels[skip], out))
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(width, out_chans, kernel_size=3, padding=1)

    def forward(self, features: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, self.skip_indices):
            x = block(x, None if skip is None else features[skip])
        return self.head(x)
