"""TOWER: contrastive and generative pretraining of a 2D U-Net on knowledge-based proxy tasks (Chen
et al., "TOWER: Towards Enhanced Recognition of Biomedical Microscopy Images", paper 001).

- Network (§3.1, Fig. 1): a U-Net whose encoder f is a ResNet-50 (timm, features_only: maps at
  strides 2-32) and whose decoder d (trainer.layers.unet, skip connections, back to the input
  resolution) predicts the image's `in_chans` channels; an MLP projection head h on the encoder.
- Proxy tasks (§3.2), both on every view, as x'' = x' x Mask writes ("masked reconstruction ... to
  augment the translated images x'_n", §3.2.2; the paper gives no probability, and the released
  transforms run unconditionally, their probability checks commented out):
  1. non-linear translation (§3.2.1, eq. 1-2; trainer.views.bezier): the image, rescaled to [0, 1]
     per sample, goes through its own random monotone cubic Bezier map (increasing or decreasing),
     x' = B(x);
  2. masked reconstruction (§3.2.2; trainer.views.anatomy_masks): pixels of x' under an anatomy-shaped
     mask are set to 0, x'' = x' x Mask; `anatomy` picks the mask: "fundus", rays from the brightest
     point (80 rays, Fig. 9c); "xray", stripes (50%, Fig. 9a); "other", blocks (50%, Fig. 9b; CT,
     ultrasound, §5). x'' is mapped back to the sample's own intensity range.
- Contrastive (§3.3.1, eq. 3-4; trainer.losses.info_nce): z_n = h(r_n), r_n the global average pool
  of the encoder's deepest map for x_n, z_n^+ the same for x''_n; InfoNCE image -> view with the
  other images and their views as negatives, tau = 0.1. (The released code flattens the unpooled map
  into the loss; the paper's r is the encoder's representation, pooled here as SimCLR's is.)
  h is SimCLR v1's head (§3.1 "based on SimCLR v1"): Linear-BN-ReLU at the encoder's width, then a
  Linear to 128 with BatchNorm.
- Generative (§3.3.2, eq. 5): y_n = d(f(x''_n)) restores the original x_n, L_Gen = MSE(x_n, y_n), in
  the batch's standardised units. Eq. 5 sums the per-image MSE over the batch; it is averaged here, as
  the released code's L1 and Models Genesis's MSE are, so the weight of the term does not grow with
  the per-GPU batch.
- Total (§3.4; §4.4 footnote 9: "L_Con^{NL+M} + L_Gen^{NL+M}"; the released code adds them):
  loss = L_Con + L_Gen.
Optimiser and schedule (Adam, cosine, §4.1) are in trainer/configs/tower_drive.yaml and tower_cxr.yaml.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.layers.projection_head import ProjectionHead
from trainer.layers.timm_export import TimmEncoder, backbone_as_timm, timm_backbone
from trainer.layers.unet import UNetDecoder
from trainer.losses.info_nce import InfoNCELoss
from trainer.views.anatomy_masks import block_masks, random_ray_masks, stripe_masks
from trainer.views.bezier import from_unit_range, random_intensity_curves, to_unit_range

ANATOMIES = ("fundus", "xray", "other")


class TOWER(nn.Module):
    """batch {"image": (N, in_chans, img_size, img_size), standardised} -> {"loss", "loss_nce",
    "loss_rec"}.

    `encoder` (the ResNet's feature pyramid) and `decoder` (the U-Net decoder with its `head`) are
    what segmentation fine-tuning loads (§3.4: "the encoder and decoder are applied for initialization
    in the segmentation tasks"); classification loads `encoder` only. `projector` is pretraining-only.
    """

    def __init__(
        self,
        *,
        img_size: int,
        in_chans: int,
        encoder: str = "resnet50",
        encoder_options: dict | None = None,
        decoder_channels: tuple[int, ...] | list[int] = (256, 128, 64, 32, 16),
        proj_hidden_dim: int | None = None,
        proj_dim: int = 128,
        temperature: float = 0.1,
        anatomy: str = "fundus",
        num_rays: int = 80,
        ray_thickness: float = 4 / 512,
        brightness_blur: float = 3.5 / 512,
        mask_ratio: float = 0.5,
        stripe_width: int = 1,
        block_grid: int = 32,
        decreasing_p: float = 0.5,
    ):
        super().__init__()
        if anatomy not in ANATOMIES:
            raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
        self.encoder = timm_backbone(encoder, in_chans=in_chans, options=encoder_options, features_only=True)
        info = self.encoder.feature_info
        stride = info.reduction()[-1]
        if img_size % stride:
            raise ValueError(f"img_size {img_size} is not a multiple of the encoder's stride {stride}")
        self.decoder = UNetDecoder(encoder_channels=info.channels(), encoder_reductions=info.reduction(),
                                   channels=decoder_channels, out_chans=in_chans)
        width = info.channels()[-1]
        self.projector = ProjectionHead((width, proj_hidden_dim or width, proj_dim), last_bn=True)
        self.contrastive_loss = InfoNCELoss(temperature)
        self.anatomy = anatomy
        self.num_rays, self.ray_thickness, self.brightness_blur = num_rays, ray_thickness, brightness_blur
        self.mask_ratio, self.stripe_width, self.block_grid = mask_ratio, stripe_width, block_grid
        self.decreasing_p = decreasing_p

    def anatomy_masks(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, C, H, W) -> (N, 1, H, W) bool, True where the proxy task removes pixels."""
        n, _, h, w = images.shape
        if self.anatomy == "fundus":
            return random_ray_masks(images, num_rays=self.num_rays, thickness=self.ray_thickness,
                                    blur=self.brightness_blur, generator=generator)
        if self.anatomy == "xray":
            return stripe_masks(n, h, w, ratio=self.mask_ratio, stripe_width=self.stripe_width,
                                device=images.device, generator=generator)
        return block_masks(n, h, w, ratio=self.mask_ratio, grid=self.block_grid, device=images.device,
                           generator=generator)

    @torch.no_grad()
    def proxy_views(self, images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (x'' = B(x) x Mask in x's own range, the masks (N, 1, H, W) bool). The masks are found
        on the original image (the brightest point is the optic disc's before a decreasing curve
        turns it dark)."""
        with torch.autocast(images.device.type, enabled=False):
            images = images.float()
            masks = self.anatomy_masks(images, generator)
            unit, low, span = to_unit_range(images)
            curves = random_intensity_curves(images.shape[0], decreasing_p=self.decreasing_p, device=images.device,
                                             generator=generator)
            translated = curves.apply(unit).masked_fill(masks, 0.0)
            return from_unit_range(translated, low, span), masks

    def embed(self, deepest: torch.Tensor) -> torch.Tensor:
        """The encoder's deepest map (N, C, h, w) -> z = h(GAP(map)), (N, proj_dim)."""
        return self.projector(deepest.mean(dim=(2, 3)))

    def timm_encoder(self) -> TimmEncoder:
        """The pretrained encoder, as timm builds it (trainer.layers.timm_export)."""
        return backbone_as_timm(self.encoder)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        images = batch["image"]
        views, _ = self.proxy_views(images, generator)
        view_features = self.encoder(views)
        restored = self.decoder(view_features)
        # Each of x and x'' is encoded on its own, as the released code does: BatchNorm statistics per kind.
        loss_nce = self.contrastive_loss(self.embed(self.encoder(images)[-1]), self.embed(view_features[-1]))
        loss_rec = F.mse_loss(restored.float(), images.float())
        return {"loss": loss_nce + loss_rec, "loss_nce": loss_nce, "loss_rec": loss_rec}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, seed: int | None = None) -> dict[str, torch.Tensor]:
        """images: (N, C, H, W) -> picture columns, each (N, C, H, W): the image, its proxy view x''
        and the decoder's restoration d(f(x''))."""
        generator = None if seed is None else torch.Generator(device=images.device).manual_seed(seed)
        views, _ = self.proxy_views(images, generator)
        return {"image": images, "view": views, "restored": self.decoder(self.encoder(views))}
