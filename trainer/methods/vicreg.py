"""VICReg (Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022): the baseline MLVICX is built on and compared with (paper 002
§IV-D, Tables I-III, pretrained "without modifying their default hyperparameters or network
configurations").

Two views of each image go through one encoder (ResNet, timm, num_classes=0: the pooled feature) and
one expander, 3 linear layers of 8192 with BatchNorm and ReLU between them and none after the last
(§4.1); the loss is VICRegLoss (trainer.losses.vicreg) on the two expanded batches, with no
stop-gradient, predictor or momentum encoder.

Views (VICReg Appendix C.1, the BYOL pipeline): random resized crop (scale 0.08-1), flip, colour
jitter (p 0.8), blur with p 1.0 on the first view and 0.1 on the second, solarisation (p 0 / 0.2).
Grey and multi-channel images keep the crop, flip and blur; brightness/contrast jitter stands for
the colour jitter (trainer.views.photometric: hue, saturation and grayscale assume RGB); solarisation
is left out (there is no fixed intensity to solarise about in standardised images).
The recipe (LARS, lr 0.2 x batch / 256, weight decay 1e-6, 10 warm-up epochs, cosine) is in
trainer/configs/vicreg_cxr.yaml.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.layers.projection_head import ProjectionHead
from trainer.layers.timm_export import TimmEncoder, backbone_as_timm, timm_backbone
from trainer.losses.vicreg import VICRegLoss
from trainer.views.contrastive import ContrastiveViews


def asymmetric_views(img_size: int, crop_scale: tuple[float, float],
                     blur: tuple[float, float]) -> tuple[ContrastiveViews, ContrastiveViews]:
    """VICReg's two view distributions t and t': the same crop, flip and jitter, blur with
    probability blur[0] for the first and blur[1] for the second."""
    return tuple(ContrastiveViews(img_size, scale=tuple(crop_scale), blur=p) for p in blur)


class VICReg(nn.Module):
    """batch {"image": (N, in_chans, img_size, img_size), standardised} -> {"loss", "loss_inv",
    "loss_var", "loss_cov"} (the three unweighted terms of VICRegLoss)."""

    def __init__(
        self,
        *,
        img_size: int,
        in_chans: int,
        encoder: str = "resnet18",
        encoder_options: dict | None = None,
        expander_dim: int = 8192,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        blur: tuple[float, float] = (1.0, 0.1),
    ):
        super().__init__()
        self.encoder = timm_backbone(encoder, in_chans=in_chans, options=encoder_options, num_classes=0)
        self.expander = ProjectionHead((self.encoder.num_features, expander_dim, expander_dim, expander_dim))
        self.views = asymmetric_views(img_size, crop_scale, blur)
        self.loss = VICRegLoss(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> z = expander(encoder(x)), (N, expander_dim)."""
        return self.expander(self.encoder(images))

    def timm_encoder(self) -> TimmEncoder:
        """The pretrained encoder, as timm builds it (trainer.layers.timm_export)."""
        return backbone_as_timm(self.encoder)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        images = batch["image"]
        # Each view is encoded on its own, as the released code does: BatchNorm statistics per view.
        z1, z2 = (self.embed(view(images, generator)) for view in self.views)
        terms = self.loss.terms(z1, z2)
        return {"loss": self.loss.total(terms), "loss_inv": terms.invariance, "loss_var": terms.variance,
                "loss_cov": terms.covariance}
