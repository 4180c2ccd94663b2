"""MIRAM: masked image reconstruction across multiple scales (Vo et al., paper 000, §II-A, Fig. 2).

MAE (He et al. 2022) with a second, fine-scale decoder that reconstructs the image at twice the
height and width. The batch holds the high-resolution crop (e.g. 224); the encoder sees it
downscaled by 2 (e.g. 112, §IV-A-1: "the original size of 112 x 112, ... 224 x 224 ... twice the
size"). Downscaling is area interpolation: for a factor of 2 it is the exact mean of each 2x2 pixel
block, so the coarse target is the box-filtered fine target with no leakage across patch borders
(an antialiased bilinear kernel would spread each coarse pixel over a 4x4 fine footprint).

Where the fine decoder's tokens come from (eq. 3-6): the full token sequence of eq. 3 (encoded
visible tokens plus mask tokens, deshuffled) is what eq. 4 feeds to Decoder_1 and what eq. 5
duplicates for Decoder_2; Fig. 2 likewise branches both decoders from the same tokens. So the
duplication is applied to decoder 1's input, not its output: both decoders share decoder_embed and
the mask token, and each has its own blocks, norm, head and fixed sin-cos positions (the fine one on
the 2x grid). "Our second decoder has the same architecture as the first decoder" (§II-A-2): same
depth, width and heads. Each duplicated copy of coarse token (i, j) sits at fine position
(2i + a, 2j + b), a, b in {0, 1} (trainer.layers.token_duplication); the cls token goes in once.

Loss (§II-B, eq. 7): the MAE loss per scale on that scale's removed patches (a fine patch is removed
iff its coarse patch is), and the equally weighted mean of the scales. §II-A-3 / §IV-C: linear
attention replaces softmax attention in the fine decoder only (the paper tries Linformer, Performer
and Nystromformer; Nystromformer does best, Table V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.layers.masking import unshuffle_with_mask_tokens
from trainer.layers.patchify import patchify
from trainer.layers.pixel_decoder import PixelDecoder
from trainer.layers.timm_export import TimmEncoder
from trainer.layers.token_duplication import duplicate_tokens
from trainer.losses.masked_reconstruction import MaskedReconstructionLoss
from trainer.methods.mae import reconstruction_images
from trainer.methods.vit_encoder import MaskedViTEncoder

DUPLICATES = 4  # k of eq. 5: one copy per quarter of a patch doubles height and width


class MIRAM(nn.Module):
    """batch {"image": (N, in_chans, img_size, img_size), normalised} ->
    {"loss": mean of the scales, "loss_coarse": at img_size / 2, "loss_fine": at img_size}.

    `img_size` is the size of the batch's images (the fine scale); the encoder works at
    img_size / 2 (`input_size`), which must be a multiple of patch_size. Defaults are ViT-B/16
    with MAE's decoder, twice. `fine_attention`, in the fine decoder only (the coarse decoder always
    uses "sdpa"): "sdpa" or "explicit" (exact softmax), or a linear one of §II-A-3 / Table V,
    sized by `num_landmarks`: "nystrom" (landmarks), "linformer" (projected length k; built for
    the fine grid's 1 + 4L tokens) or "performer" (random features m).
    """

    def __init__(
        self,
        *,
        img_size: int,
        in_chans: int,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        drop_path_rate: float = 0.0,
        fine_attention: str = "sdpa",
        num_landmarks: int = 64,
    ):
        super().__init__()
        if img_size % (2 * patch_size):
            raise ValueError(f"img_size {img_size} must be a multiple of 2 * patch_size ({2 * patch_size})")
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        self.input_size = img_size // 2
        self.encoder = MaskedViTEncoder(
            img_size=self.input_size,
            in_chans=in_chans,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
        )
        self.grid_size = self.encoder.grid_size
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        decoder_kwargs = dict(
            embed_dim=decoder_embed_dim,
            depth=decoder_depth,
            num_heads=decoder_num_heads,
            patch_size=patch_size,
            out_chans=in_chans,
            mlp_ratio=mlp_ratio,
        )
        self.decoder = PixelDecoder(grid_size=self.grid_size, attention="sdpa", **decoder_kwargs)
        fine_grid = (2 * self.grid_size[0], 2 * self.grid_size[1])
        self.fine_decoder = PixelDecoder(
            grid_size=fine_grid, attention=fine_attention, num_landmarks=num_landmarks, **decoder_kwargs
        )
        self.loss = MaskedReconstructionLoss(norm_pix_loss=norm_pix_loss)
        nn.init.xavier_uniform_(self.decoder_embed.weight)
        nn.init.zeros_(self.decoder_embed.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def downscale(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, 2H, 2W) -> (N, C, H, W): the encoder's input and the coarse target."""
        expected = (2 * self.input_size, 2 * self.input_size)
        if tuple(images.shape[-2:]) != expected:
            raise ValueError(f"MIRAM built for {expected[0]}x{expected[1]} images, got {tuple(images.shape[-2:])}")
        return F.interpolate(images, scale_factor=0.5, mode="area")

    def forward_encoder(
        self, inputs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """inputs: (N, C, H, W) at input_size -> latent (N, 1 + K, D), mask (N, L), ids_restore (N, L)."""
        return self.encoder(inputs, mask_ratio, generator)

    def decoder_tokens(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent: (N, 1 + K, D) -> (N, 1 + L, decoder_embed_dim), the full sequence of eq. 3."""
        x = self.decoder_embed(latent)
        patches = unshuffle_with_mask_tokens(x[:, 1:], self.mask_token, ids_restore)
        return torch.cat([x[:, :1], patches], dim=1)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> pred_coarse (N, L, p*p*C) on the input grid, pred_fine (N, 4L, p*p*C) on the 2x grid."""
        tokens = self.decoder_tokens(latent, ids_restore)
        pred_coarse = self.decoder(tokens)  # eq. 4
        duplicated = duplicate_tokens(tokens[:, 1:], self.grid_size, k=DUPLICATES)  # eq. 5
        pred_fine = self.fine_decoder(torch.cat([tokens[:, :1], duplicated], dim=1))  # eq. 6
        return pred_coarse, pred_fine

    def fine_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """mask: (N, L) -> (N, 4L) on the 2x grid: each fine patch takes its coarse patch's value."""
        return duplicate_tokens(mask, self.grid_size, k=DUPLICATES)

    def forward_loss(
        self,
        inputs: torch.Tensor,
        images: torch.Tensor,
        pred_coarse: torch.Tensor,
        pred_fine: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs: (N, C, H, W), images: (N, C, 2H, 2W) -> (loss_coarse, loss_fine), eq. 7 per scale."""
        loss_coarse = self.loss(pred_coarse, patchify(inputs, self.patch_size), mask)
        loss_fine = self.loss(pred_fine, patchify(images, self.patch_size), self.fine_mask(mask))
        return loss_coarse, loss_fine

    def timm_encoder(self) -> TimmEncoder:
        """The pretrained ViT encoder, as timm builds it (trainer.layers.timm_export)."""
        return self.encoder.as_timm()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = batch["image"]
        inputs = self.downscale(images)
        latent, mask, ids_restore = self.forward_encoder(inputs, self.mask_ratio)
        pred_coarse, pred_fine = self.forward_decoder(latent, ids_restore)
        loss_coarse, loss_fine = self.forward_loss(inputs, images, pred_coarse, pred_fine, mask)
        return {"loss": (loss_coarse + loss_fine) / 2, "loss_coarse": loss_coarse, "loss_fine": loss_fine}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask_seed: int | None = None) -> dict[str, torch.Tensor]:
        """images: (N, C, 2H, 2W) -> picture columns: "image", "mask", "masked", "pred",
        "pred+visible" at the input scale (N, ., H, W), then the same five prefixed "fine " at
        (N, ., 2H, 2W). `mask_seed` repeats the same masks each call."""
        generator = None if mask_seed is None else torch.Generator(device=images.device).manual_seed(mask_seed)
        inputs = self.downscale(images)
        latent, mask, ids_restore = self.forward_encoder(inputs, self.mask_ratio, generator)
        pred_coarse, pred_fine = self.forward_decoder(latent, ids_restore)
        norm, eps = self.loss.norm_pix_loss, self.loss.eps
        coarse = reconstruction_images(inputs, pred_coarse, mask, self.patch_size, norm, eps)
        fine = reconstruction_images(images, pred_fine, self.fine_mask(mask), self.patch_size, norm, eps)
        return {**coarse, **{f"fine {name}": image for name, image in fine.items()}}
