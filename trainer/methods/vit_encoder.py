"""The ViT encoder shared by the masked-image methods (MAE, He et al. 2022, §3 "MAE encoder": a ViT
applied only to the visible, unmasked patches, with a cls token and fixed 2D sin-cos positions).

Parameter names follow timm's VisionTransformer (patch_embed, cls_token, pos_embed, blocks, norm),
so the pretrained encoder loads into a timm ViT for fine-tuning.
"""

from __future__ import annotations

import torch
from timm.layers import LayerNorm, PatchEmbed
from torch import nn

from trainer.layers.masking import random_masking
from trainer.layers.pos_embed import sincos_pos_embed_2d
from trainer.layers.timm_export import TimmEncoder, weights_of
from trainer.layers.vit_block import Block, init_transformer_weights


class MaskedViTEncoder(nn.Module):
    """imgs: (N, C, H, W) -> latent (N, 1 + K, D) for the cls token and the K visible patches,
    mask (N, L) (1 = removed) and ids_restore (N, L); see trainer.layers.masking."""

    def __init__(
        self,
        *,
        img_size: int,
        in_chans: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        # timm's VisionTransformer with the same shape: cls token, LayerNorm eps 1e-6, GELU, qkv bias
        self.timm_kwargs = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                                depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, num_classes=0,
                                global_pool="token")
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, self.grid_size, cls_token=True)[None])
        rates = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth rule (Huang et al. 2016)
        self.blocks = nn.ModuleList(
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path=rate) for rate in rates
        )
        self.norm = LayerNorm(embed_dim)
        self.apply(init_transformer_weights)
        # MAE initialises the patch projection like a Linear layer (xavier on the flattened kernel).
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)

    def as_timm(self) -> TimmEncoder:
        """This encoder as timm's VisionTransformer ("vit_base_patch16_224" with every size given,
        so only the family comes from the name). Its forward_features on whole images is
        encode_visible(patch_tokens(images)): every patch kept, none masked."""
        return TimmEncoder("vit_base_patch16_224", dict(self.timm_kwargs), weights_of(self))

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        masked = random_masking(self.patch_tokens(imgs), mask_ratio, generator)
        latent, _ = self.encode_visible(masked.visible)
        return latent, masked.mask, masked.ids_restore

    def patch_tokens(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, C, H, W) -> (N, L, D): every patch embedded, with its position, raster order."""
        return self.patch_embed(imgs) + self.pos_embed[:, 1:]

    def encode_visible(self, visible: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """visible: (N, K, D) patch tokens (from patch_tokens, any subset and order) -> latent
        (N, 1 + K, D) after the final norm, cls first, and each block's output (N, 1 + K, D), before
        the final norm (data2vec-style targets average the last ones)."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(visible.shape[0], -1, -1)
        x = torch.cat([cls, visible], dim=1)
        hidden = []
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        return self.norm(x), hidden
