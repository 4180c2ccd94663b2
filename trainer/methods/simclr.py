"""SimCLR (Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020): the contrastive baseline of TOWER (paper 001, Tables 1 and 4, "SimCLR
v1") and of MLVICX's chest X-ray comparison (paper 002 §IV-D, Tables I-III).

Two augmented views of each image go through one encoder f (ResNet, timm, num_classes=0: the pooled
feature h) and one projection head g; the loss is NT-Xent on z = g(h) (§2.1, Algorithm 1;
trainer.losses.nt_xent), negatives from the batch, no memory bank or momentum encoder.
- g (§2.1, "MLP with one hidden layer"; the released code's `projection_head`): Linear at the
  encoder's width with BatchNorm and ReLU, then Linear to 128 with BatchNorm (affine-free here).
- tau = 0.1: the released code's default and its ImageNet recipe (README), the best of the
  temperatures in the paper's Table 5, and what TOWER sets citing SimCLR (paper 001 §3.3.1); the
  released CIFAR-10 recipe uses 0.5.
- Views (§3, Appendix A): random resized crop (scale 0.08-1), flip, colour jitter and blur. Grey and
  multi-channel images take the crop, flip, intensity jitter and blur of trainer.views.contrastive
  (hue and saturation jitter and grayscale assume RGB).
- Both views go through the network as one batch of 2N, as the released code concatenates them, so
  BatchNorm sees both (SimCLR §2.3 "global BN": synchronised across GPUs under DDP).
The recipe (LARS, lr 0.3 x batch / 256, weight decay 1e-6, 10 warm-up epochs, cosine) is in
trainer/configs/simclr_cxr.yaml.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.layers.projection_head import ProjectionHead
from trainer.layers.timm_export import TimmEncoder, backbone_as_timm, timm_backbone
from trainer.losses.nt_xent import NTXentLoss
from trainer.views.contrastive import ContrastiveViews


class SimCLR(nn.Module):
    """batch {"image": (N, in_chans, img_size, img_size), standardised} -> {"loss"}."""

    def __init__(
        self,
        *,
        img_size: int,
        in_chans: int,
        encoder: str = "resnet18",
        encoder_options: dict | None = None,
        proj_hidden_dim: int | None = None,
        proj_dim: int = 128,
        temperature: float = 0.1,
        crop_scale: tuple[float, float] = (0.08, 1.0),
    ):
        super().__init__()
        self.encoder = timm_backbone(encoder, in_chans=in_chans, options=encoder_options, num_classes=0)
        width = self.encoder.num_features
        self.projector = ProjectionHead((width, proj_hidden_dim or width, proj_dim), last_bn=True)
        self.views = ContrastiveViews(img_size, scale=tuple(crop_scale))
        self.loss = NTXentLoss(temperature)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> z = g(f(x)), (N, proj_dim)."""
        return self.projector(self.encoder(images))

    def timm_encoder(self) -> TimmEncoder:
        """The pretrained encoder, as timm builds it (trainer.layers.timm_export)."""
        return backbone_as_timm(self.encoder)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        images = batch["image"]
        views = torch.cat([self.views(images, generator), self.views(images, generator)])
        z1, z2 = self.embed(views).chunk(2)
        return {"loss": self.loss(z1, z2)}
