"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021): the
comparative baseline of PCRLv2's chest X-ray experiments (paper 003 §4.2, Tables 4 and 6).

Two augmented views of each image go through the same encoder f (backbone + projection MLP) and the
prediction MLP h; the loss is the symmetrised negative cosine between each view's prediction and
the other view's projection, the projection held constant (stop-gradient; §3, eq. 4, Algorithm 1).
- encoder: ResNet (timm, num_classes=0: the pooled feature, 512 wide for ResNet-18);
- projection MLP (§3 "Baseline settings"): 3 layers of width 2048, BN on every layer, the output
  fc followed by BN without ReLU (affine-free, as the released code);
- prediction MLP: 2048 -> 512 -> 2048, BN and ReLU on the hidden layer only (the bottleneck);
- views: random resized crop (scale 0.2-1), flip, intensity jitter and blur (trainer.views.
  contrastive; colour jitter and grayscale assume RGB).
The recipe (SGD, lr 0.05 x batch / 256, momentum 0.9, weight decay 1e-4, cosine) is in
trainer/configs/simsiam_cxr.yaml.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.layers.projection_head import ProjectionHead
from trainer.layers.timm_export import TimmEncoder, backbone_as_timm, timm_backbone
from trainer.losses.negative_cosine import NegativeCosineLoss
from trainer.views.contrastive import ContrastiveViews


class SimSiam(nn.Module):
    """batch {"image": (N, in_chans, img_size, img_size), standardised} -> {"loss"}, in [-1, 1]."""

    def __init__(
        self,
        *,
        img_size: int,
        in_chans: int,
        encoder: str = "resnet18",
        encoder_options: dict | None = None,
        proj_dim: int = 2048,
        pred_dim: int = 512,
        crop_scale: tuple[float, float] = (0.2, 1.0),
    ):
        super().__init__()
        self.encoder = timm_backbone(encoder, in_chans=in_chans, options=encoder_options, num_classes=0)
        width = self.encoder.num_features
        self.projector = ProjectionHead((width, proj_dim, proj_dim, proj_dim), last_bn=True)
        self.predictor = ProjectionHead((proj_dim, pred_dim, proj_dim))
        self.views = ContrastiveViews(img_size, scale=tuple(crop_scale))
        self.loss = NegativeCosineLoss()

    def project(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) -> (z = projector(encoder(x)), p = predictor(z)), each (N, proj_dim)."""
        z = self.projector(self.encoder(images))
        return z, self.predictor(z)

    def timm_encoder(self) -> TimmEncoder:
        """The pretrained encoder, as timm builds it (trainer.layers.timm_export)."""
        return backbone_as_timm(self.encoder)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        images = batch["image"]
        # Each view is encoded on its own, as the released code does: BatchNorm statistics per view.
        z1, p1 = self.project(self.views(images, generator))
        z2, p2 = self.project(self.views(images, generator))
        return {"loss": self.loss.symmetric(p1, z1, p2, z2)}
