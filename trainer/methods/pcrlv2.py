"""PCRLv2, 2D: pixel restoration and siamese feature comparison on the feature pyramid of a non-skip
U-Net (Zhou et al., "A Unified Visual Information Preservation Framework for Self-supervised
Pre-training in Medical Image Analysis", TPAMI 2023; paper 003).

- nsUNet (§3.1, Fig. 3, eq. 1): a ResNet-18 encoder (timm, stride 32) whose bottleneck F_0 alone
  feeds an upsampling decoder WITHOUT skip connections (trainer.layers.pyramid_decoder), giving five
  levels F_1..F_5 at strides 16, 8, 4, 2, 1. Decoder widths 256-128-64-32-16 are the authors'.
- Views (§3, Fig. 2; §4.3, multi-crop): two global views x_1, x_2 (random resized crop of scale
  0.3-1 back to the image size, rotation, flip: the first-stage t_1, t_2) are corrupted by the
  second stage t'_1, t'_2 (trainer.views.local_corruptions) into x'_1, x'_2, which the network
  sees; N^ = 6 local views (scale 0.05-0.3) get the same corruptions without cutout.
- One level i is drawn per step for both tasks (the indicator of eq. 4 and 9); each level has its
  own heads, shared by the siamese views ("different feature scales employ distinct task heads",
  Fig. 4):
  - restoration (§3.2): f_i^R = Conv(Conv-BN-ReLU(F_i)), 3x3, stride 1 (eq. 2-3, Fig. 4; §3.2's
    "stride of 2" would halve the level), predicts in_chans channels at the level's resolution,
    upsampled bilinearly to the view for the MSE
    against the UNCORRUPTED global view (eq. 4):
        L^R = MSE(f_i^R(F_i(x'_1)), x_1) + MSE(f_i^R(F_i(x'_2)), x_2);
    every level restores the same full-resolution targets ("reconstructing the same targets
    x_1/x_2 across different feature scales"), as the authors' code does by upsampling.
  - comparison (§3.3): v_i = BN(GAP(F_i)) (eq. 5), predictor f_P = FC(FC-BN-ReLU) (eq. 6), hidden
    width twice the level's (the authors' code; the paper gives none), negative cosine with
    stop-gradient on v (eq. 7-9):
        L^C = -1/2 [cos(sg(v_i), f_P(v_i^s)) + cos(f_P(v_i), sg(v_i^s))].
- Total (eq. 10): L^R(g_1, g_2) + L^C(g_1, g_2) + sum_{m=1,2} sum_{k=1..N^} L^C(l_k, g_m): the
  local views are compared with both global views at the same level and never restored. Eq. 10
  sums the 2 N^ local terms; the authors' code averages them (local_weight = 1 / (2 N^)).

The level is drawn from its own generator, seeded alike on every DDP rank, so all ranks train the
same level in a step. Levels are drawn as shuffled rounds of all five: uniform at every step as
"randomly choose a feature scale" asks, and every level's heads are trained within five steps.
`forward(batch, level=i)` forces level i in 1..5 (1 = coarsest, stride 16; 5 = full resolution).
Out of training (a validation pass) the loss is the mean of eq. 10 over all five levels, on the
same views: what training's draw gives in expectation, the same measure at every pass.
"""

from __future__ import annotations

import random
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from trainer.layers.projection_head import ProjectionHead
from trainer.layers.pyramid_decoder import PyramidDecoder, conv_bn_relu
from trainer.layers.timm_export import TimmEncoder, backbone_as_timm, timm_backbone
from trainer.losses.negative_cosine import NegativeCosineLoss
from trainer.views.geometric import random_hflip, random_resized_crop
from trainer.views.local_corruptions import LocalCorruptions
from trainer.views.rotation import random_rotation


class MultiCropViews(NamedTuple):
    """targets: (x_1, x_2) global views, uncorrupted, each (N, C, S, S); inputs: (x'_1, x'_2), the
    same corrupted; local: (N^, N, C, s, s) corrupted local views."""

    targets: tuple[torch.Tensor, torch.Tensor]
    inputs: tuple[torch.Tensor, torch.Tensor]
    local: torch.Tensor


def restoration_head(channels: int, out_chans: int) -> nn.Sequential:
    """f_i^R of eq. 2: (N, channels, h, w) -> (N, out_chans, h, w)."""
    return nn.Sequential(conv_bn_relu(channels, channels), nn.Conv2d(channels, out_chans, kernel_size=3, padding=1))


class ComparisonHead(nn.Module):
    """F_i: (N, C, h, w) -> (v_i = BN(GAP(F_i)) (eq. 5), f_P(v_i) (eq. 6)), both (N, C)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(channels)
        self.predictor = ProjectionHead((channels, hidden, channels))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.norm(features.mean(dim=(2, 3)))
        return v, self.predictor(v)


class PCRLv2(nn.Module):
    """batch {"image": (N, in_chans, img_size, img_size), standardised} -> {"loss", "loss_rec",
    "loss_cmp", "loss_local"}. Defaults are paper 003's 2D setting (§4.3) at the data's img_size:
    global views at img_size, 6 local views at `local_size` (the paper: 224 like the global ones;
    the authors' code: 96)."""

    uses_every_parameter = False  # one pyramid level per step (DDP must look for unused parameters)

    def __init__(
        self,
        *,
        img_size: int,
        in_chans: int,
        encoder: str = "resnet18",
        encoder_options: dict | None = None,
        decoder_channels: tuple[int, ...] | list[int] = (256, 128, 64, 32, 16),
        predictor_ratio: int = 2,
        num_local_views: int = 6,
        local_size: int | None = None,
        global_scale: tuple[float, float] = (0.3, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.3),
        rotation_degrees: float = 10.0,
        local_weight: float = 1.0,
        level_seed: int = 0,
    ):
        super().__init__()
        # Only the deepest stage (stride 32) leaves the encoder: the decoder has no skip to take.
        self.encoder = timm_backbone(encoder, in_chans=in_chans, options=encoder_options, features_only=True, out_indices=(4,))
        stride = self.encoder.feature_info.reduction()[-1]
        self.img_size, self.local_size = img_size, local_size or img_size
        for name, size in (("img_size", self.img_size), ("local_size", self.local_size)):
            if size % stride:
                raise ValueError(f"{name} {size} is not a multiple of the encoder's stride {stride}")
        self.decoder = PyramidDecoder(in_channels=self.encoder.feature_info.channels()[-1], channels=decoder_channels)
        self.restoration_heads = nn.ModuleList(restoration_head(c, in_chans) for c in decoder_channels)
        self.comparison_heads = nn.ModuleList(ComparisonHead(c, predictor_ratio * c) for c in decoder_channels)
        self.restoration_loss = nn.MSELoss()
        self.comparison_loss = NegativeCosineLoss()
        self.num_local_views = num_local_views
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        self.rotation_degrees = rotation_degrees
        self.local_weight = local_weight
        self.corrupt = LocalCorruptions()
        self.corrupt_local = LocalCorruptions(cutout_holes=0)
        self._level_rng = random.Random(level_seed)
        self._level_round: list[int] = []

    @property
    def num_levels(self) -> int:
        return self.decoder.num_levels

    def next_level(self) -> int:
        """The next level of the current shuffled round of 1..num_levels."""
        if not self._level_round:
            self._level_round = self._level_rng.sample(range(1, self.num_levels + 1), self.num_levels)
        return self._level_round.pop()

    def view(self, images: torch.Tensor, size: int, scale: tuple[float, float],
             generator: torch.Generator | None = None) -> torch.Tensor:
        """First-stage view: random resized crop to size x size, rotation, horizontal flip."""
        views, _ = random_resized_crop(images, size, scale=scale, generator=generator)
        return random_hflip(random_rotation(views, self.rotation_degrees, generator), 0.5, generator)

    def multi_crop(self, images: torch.Tensor, generator: torch.Generator | None = None) -> MultiCropViews:
        """(N, C, H, W) -> two global views with their corrupted inputs, and the local views."""
        targets = tuple(self.view(images, self.img_size, self.global_scale, generator) for _ in range(2))
        inputs = tuple(self.corrupt(x, generator) for x in targets)
        local = [self.corrupt_local(self.view(images, self.local_size, self.local_scale, generator), generator)
                 for _ in range(self.num_local_views)]
        n, c = images.shape[:2]
        local = torch.stack(local) if local else images.new_zeros(0, n, c, self.local_size, self.local_size)
        return MultiCropViews(targets, inputs, local)

    def pyramid(self, images: torch.Tensor, depth: int) -> list[torch.Tensor]:
        """(N, C, H, W) -> [F_1, ..., F_depth], F_i (N, decoder_channels[i-1], H * 2^i / 32,
        W * 2^i / 32); the decoder runs only as far as depth."""
        return self.decoder(self.encoder(images)[-1], depth=depth)

    def features(self, images: torch.Tensor, level: int) -> torch.Tensor:
        """(N, C, H, W) -> F_level."""
        return self.pyramid(images, level)[-1]

    def restore(self, features: torch.Tensor, level: int, size: tuple[int, int]) -> torch.Tensor:
        """F_level -> f^R_level(F_level) upsampled bilinearly to size: (N, in_chans, *size)."""
        pred = self.restoration_heads[level - 1](features)
        if pred.shape[-2:] != tuple(size):
            pred = F.interpolate(pred, size=size, mode="bilinear", align_corners=False)
        return pred

    def forward_loss(self, views: MultiCropViews, levels: int | list[int]) -> dict[str, torch.Tensor]:
        """Eq. 10 at one level (eq. 4 and 9 with i = level), or its mean over several levels; each
        view goes through the encoder once, and the decoder as far as the finest level asked."""
        levels = [levels] if isinstance(levels, int) else list(levels)
        if not levels or not all(1 <= level <= self.num_levels for level in levels):
            raise ValueError(f"levels must be in 1..{self.num_levels}, got {levels}")
        depth = max(levels)
        global_pyramids = [self.pyramid(x, depth) for x in views.inputs]
        local_pyramid = self.pyramid(views.local.flatten(0, 1), depth) if self.num_local_views else None
        terms = [self._level_loss(views, [p[level - 1] for p in global_pyramids],
                                  None if local_pyramid is None else local_pyramid[level - 1], level)
                 for level in levels]
        return {name: sum(t[name] for t in terms) / len(terms) for name in terms[0]}

    def _level_loss(self, views: MultiCropViews, global_features: list[torch.Tensor],
                    local_features: torch.Tensor | None, level: int) -> dict[str, torch.Tensor]:
        loss_rec = sum(self.restoration_loss(self.restore(f, level, x.shape[-2:]), x)
                       for f, x in zip(global_features, views.targets))
        compare = self.comparison_heads[level - 1]
        (v1, p1), (v2, p2) = (compare(f) for f in global_features)
        loss_cmp = self.comparison_loss.symmetric(p1, v1, p2, v2)
        loss_local = v1.new_zeros(())
        if local_features is not None:
            k, n = views.local.shape[:2]
            v_local, p_local = (t.unflatten(0, (k, n)) for t in compare(local_features))
            for j in range(k):
                for v_global, p_global in ((v1, p1), (v2, p2)):
                    loss_local = loss_local + self.comparison_loss.symmetric(p_local[j], v_local[j], p_global, v_global)
        loss = loss_rec + loss_cmp + self.local_weight * loss_local
        return {"loss": loss, "loss_rec": loss_rec, "loss_cmp": loss_cmp, "loss_local": loss_local}

    def timm_encoder(self) -> TimmEncoder:
        """The pretrained encoder, as timm builds it (trainer.layers.timm_export)."""
        return backbone_as_timm(self.encoder)

    def forward(self, batch: dict[str, torch.Tensor], level: int | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """`level` forces the pyramid level (1..5); `generator` draws the views. In training a
        level is drawn per step; out of it (a validation pass) the loss is the mean over all the
        levels, training's expected loss: one drawn level would make passes differ by the level
        they drew, not by the model, and would take a draw from training's rounds."""
        views = self.multi_crop(batch["image"], generator)
        if level is not None:
            return self.forward_loss(views, level)
        return self.forward_loss(views, self.next_level() if self.training else list(range(1, self.num_levels + 1)))

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, seed: int | None = None) -> dict[str, torch.Tensor]:
        """images: (N, C, H, W) -> picture columns (N, C, img_size, img_size): a global view, its
        corrupted version, and its restoration from the finest (full-resolution) level."""
        generator = None if seed is None else torch.Generator(device=images.device).manual_seed(seed)
        target = self.view(images, self.img_size, self.global_scale, generator)
        corrupted = self.corrupt(target, generator)
        level = self.num_levels
        restored = self.restore(self.features(corrupted, level), level, target.shape[-2:])
        return {"global_view": target, "corrupted": corrupted, "restored": restored}
