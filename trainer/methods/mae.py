"""MAE: masked autoencoder pretraining of a ViT (He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022).

A random 75% of the patches is removed (§3 "Masking"); the encoder sees only the visible ones
("MAE encoder"); a light decoder gets the encoded tokens plus a shared learned mask token at every
removed position, all with fixed sin-cos positions ("MAE decoder"), and predicts the pixels of every
patch; the loss is the MSE on the removed patches, optionally on per-patch normalised pixels
("Reconstruction target"). Everything is in units of the image as the batch holds it: `in_chans`
and `img_size` come from the data, and the target is the input itself, not an RGB/ImageNet view.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.layers.masking import unshuffle_with_mask_tokens
from trainer.layers.patchify import patchify, unpatchify
from trainer.layers.pixel_decoder import PixelDecoder
from trainer.layers.timm_export import TimmEncoder
from trainer.losses.masked_reconstruction import MaskedReconstructionLoss, patch_mean_std
from trainer.methods.vit_encoder import MaskedViTEncoder


class MaskedAutoencoder(nn.Module):
    """batch {"image": (N, in_chans, img_size, img_size) float, normalised} -> {"loss": scalar}.

    Defaults are ViT-B/16 with MAE's decoder (512 wide, 8 blocks, 16 heads).
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
    ):
        super().__init__()
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        self.encoder = MaskedViTEncoder(
            img_size=img_size,
            in_chans=in_chans,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
        )
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder = PixelDecoder(
            embed_dim=decoder_embed_dim,
            depth=decoder_depth,
            num_heads=decoder_num_heads,
            grid_size=self.encoder.grid_size,
            patch_size=patch_size,
            out_chans=in_chans,
            mlp_ratio=mlp_ratio,
        )
        self.loss = MaskedReconstructionLoss(norm_pix_loss=norm_pix_loss)
        nn.init.xavier_uniform_(self.decoder_embed.weight)
        nn.init.zeros_(self.decoder_embed.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs: (N, C, H, W) -> latent (N, 1 + K, D), mask (N, L), ids_restore (N, L)."""
        return self.encoder(imgs, mask_ratio, generator)

    def decoder_tokens(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent: (N, 1 + K, D) -> (N, 1 + L, decoder_embed_dim): projected to the decoder width,
        mask tokens at the removed positions, unshuffled to raster order, cls first."""
        x = self.decoder_embed(latent)
        patches = unshuffle_with_mask_tokens(x[:, 1:], self.mask_token, ids_restore)
        return torch.cat([x[:, :1], patches], dim=1)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """-> pred (N, L, p*p*C) for every patch, visible ones included."""
        return self.decoder(self.decoder_tokens(latent, ids_restore))

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """imgs: (N, C, H, W), pred: (N, L, p*p*C), mask: (N, L) -> MSE on the removed patches."""
        return self.loss(pred, patchify(imgs, self.patch_size), mask)

    def timm_encoder(self) -> TimmEncoder:
        """The pretrained ViT encoder, as timm builds it (trainer.layers.timm_export)."""
        return self.encoder.as_timm()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        imgs = batch["image"]
        latent, mask, ids_restore = self.forward_encoder(imgs, self.mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return {"loss": self.forward_loss(imgs, pred, mask)}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask_seed: int | None = None) -> dict[str, torch.Tensor]:
        """images: (N, C, H, W) -> picture columns, each (N, C or 1, H, W): "image", "mask" (1 =
        removed), "masked", "pred", "pred+visible". `mask_seed` repeats the same masks each call."""
        generator = None if mask_seed is None else torch.Generator(device=images.device).manual_seed(mask_seed)
        latent, mask, ids_restore = self.forward_encoder(images, self.mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return reconstruction_images(images, pred, mask, self.patch_size, self.loss.norm_pix_loss, self.loss.eps)


def reconstruction_images(
    images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix_loss: bool, eps: float
) -> dict[str, torch.Tensor]:
    """Predictions at one scale as images. images: (N, C, H, W), pred: (N, L, p*p*C), mask: (N, L).

    With norm_pix_loss the prediction lives in per-patch standardised units; it is mapped back with
    the true patch's mean and std, as MAE's visualisation does (so "pred" borrows each patch's
    brightness and contrast from the image and shows only the predicted structure).
    """
    target = patchify(images, patch_size)
    if norm_pix_loss:
        mean, std = patch_mean_std(target, eps)
        pred = pred * std + mean
    pred_img = unpatchify(pred.to(images.dtype), patch_size)
    mask_img = unpatchify(mask[..., None].expand(-1, -1, patch_size**2).to(images.dtype), patch_size)
    return {
        "image": images,
        "mask": mask_img,
        "masked": images * (1 - mask_img),
        "pred": pred_img,
        "pred+visible": images * (1 - mask_img) + pred_img * mask_img,
    }
