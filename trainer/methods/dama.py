"""DAMA: dual-loss adaptive masked autoencoder (Ly et al., "Student Collaboration Improves
Self-Supervised Learning: Dual-Loss Adaptive Masked Autoencoder for Multiplexed Immunofluorescence
Brain Images Analysis"; paper 004 is its supplement: §1.2, Algorithm 1, Table 2).

Two MAE students (trainer.methods.mae) see the same image:
- student 1 masks a random 80% of the patches, reconstructs them and scores every patch (J_P, MAE's
  per-patch MSE). It sees K = int(L * 0.2) patches (Algorithm 1 line 9, the project's MAE
  masking, trainer.layers.masking): 12 of L = 64 at 128 px;
- student 2's mask is adaptive (Algorithm 1, trainer.layers.adaptive_mask, per sample): it also
  sees K patches, floor(K * overlap_ratio) of them shared with student 1, the others the patches
  student 1 masked and reconstructed best; the ones student 1 reconstructed worst stay masked, so
  student 2 must reconstruct them;
- feature loss (§1.2, "regress feature representations of multiple ViT blocks (Baevski et al.
  2022)... apply only to the visible patches and predict the feature also produced from the visible
  patches of the second network"): student 1's encoded tokens, through a projection head, regress
  data2vec's target, the mean of the parameter-free layer-normed outputs of student 2's last
  K-blocks = 6 blocks, with smooth-L1 of beta = 2 (Table 2). Only patches BOTH students see have
  both a prediction and a target; they are matched by patch position (each student's tokens come
  in its own shuffled order; DAMA's released code compares them slot by slot, which pairs
  different patches).

loss = loss_rec1 + loss_rec2 + feature_weight * loss_feature (equal weights, as the released code).
Stop-gradient: the supplement names none for DAMA (only MoCo-v3's "stop-grad-conv1", Table 5), and
the released two-student forward does not detach the target, so the feature loss trains student 2
as well: the students collaborate. teacher="ema" is the "teacher or momentum network" of §1.2:
student 2 is a copy of student 1 following it by exponential moving average (momentum from
`teacher_momentum` up to 1 on a half cosine over training, MoCo v3's schedule, as the released code's
`--main_m 0.99 --main_m_cos`); it gets no gradient, and its reconstruction loss is reported but not
optimised (it cannot be: no parameter would receive it).

The projection head is Linear(D, 2D), LayerNorm, ReLU, Linear(2D, D), as the released code's
without its closing LayerNorm, ReLU and softmax: layer-normed targets are signed and unbounded.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.layers.adaptive_mask import adaptive_counts, adaptive_mask
from trainer.layers.masking import num_visible, unshuffle_with_mask_tokens
from trainer.layers.patchify import patchify
from trainer.layers.timm_export import TimmEncoder
from trainer.layers.vit_block import init_transformer_weights
from trainer.losses.feature_regression import FeatureRegressionLoss
from trainer.methods.mae import MaskedAutoencoder, reconstruction_images

TEACHERS = ("student", "ema")


class DAMA(nn.Module):
    """batch {"image": (N, in_chans, img_size, img_size), normalised} -> {"loss", "loss_rec1",
    "loss_rec2", "loss_feature"}. Defaults are paper 004's (Table 2, §2.2) with ViT-B/16 students
    and MAE's decoder: mask_ratio 0.8, overlap_ratio 0.5, target_blocks (K) 6, beta 2."""

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
        mask_ratio: float = 0.8,
        overlap_ratio: float = 0.5,
        target_blocks: int = 6,
        beta: float = 2.0,
        feature_weight: float = 1.0,
        norm_pix_loss: bool = True,
        drop_path_rate: float = 0.0,
        teacher: str = "student",
        teacher_momentum: float = 0.99,
    ):
        super().__init__()
        if teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {teacher!r}")
        if not 1 <= target_blocks <= depth:
            raise ValueError(f"target_blocks must be in [1, depth={depth}], got {target_blocks}")
        self.patch_size, self.mask_ratio, self.overlap_ratio = patch_size, mask_ratio, overlap_ratio
        self.target_blocks, self.feature_weight, self.teacher, self.teacher_momentum = (
            target_blocks, feature_weight, teacher, teacher_momentum
        )
        student = dict(
            img_size=img_size, in_chans=in_chans, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth,
            decoder_num_heads=decoder_num_heads, mlp_ratio=mlp_ratio, mask_ratio=mask_ratio,
            norm_pix_loss=norm_pix_loss, drop_path_rate=drop_path_rate,
        )
        self.student1 = MaskedAutoencoder(**student)
        grid = self.student1.encoder.grid_size
        self.len_keep = num_visible(grid[0] * grid[1], mask_ratio)
        overlap, _ = adaptive_counts(grid[0] * grid[1], self.len_keep, overlap_ratio)
        if overlap < 1:
            raise ValueError(
                f"no patch seen by both students (floor({self.len_keep} * {overlap_ratio}) = 0): no feature loss"
            )
        if teacher == "ema":  # starts as student 1 and only ever follows it
            self.student2 = copy.deepcopy(self.student1).requires_grad_(False)
        else:  # same architecture, its own initialisation
            self.student2 = MaskedAutoencoder(**student)
        self.head = nn.Sequential(
            nn.Linear(embed_dim, 2 * embed_dim), nn.LayerNorm(2 * embed_dim), nn.ReLU(inplace=True),
            nn.Linear(2 * embed_dim, embed_dim),
        )
        self.head.apply(init_transformer_weights)
        self.feature_loss = FeatureRegressionLoss(beta=beta)

    def forward_student1(
        self, imgs: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs: (N, C, H, W) -> latent (N, 1 + K, D), mask (N, L), ids_restore (N, L), pred (N, L, p*p*C)."""
        latent, mask, ids_restore = self.student1.forward_encoder(imgs, self.mask_ratio, generator)
        return latent, mask, ids_restore, self.student1.forward_decoder(latent, ids_restore)

    def forward_student2(
        self,
        imgs: torch.Tensor,
        mask1: torch.Tensor,
        patch_loss1: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Algorithm 1 mask from student 1's mask and per-patch loss (N, L) -> block outputs
        [(N, 1 + K, D)] * depth, mask (N, L), ids_restore (N, L), pred (N, L, p*p*C)."""
        adaptive = adaptive_mask(mask1, patch_loss1, self.len_keep, self.overlap_ratio, generator)
        tokens = self.student2.encoder.patch_tokens(imgs)
        ids_keep = adaptive.ids_shuffle[:, : self.len_keep]
        visible = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        latent, hidden = self.student2.encoder.encode_visible(visible)
        pred = self.student2.forward_decoder(latent, adaptive.ids_restore)
        return hidden, adaptive.mask, adaptive.ids_restore, pred

    def feature_targets(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        """Block outputs [(N, T, D)] -> (N, T, D): mean of the last `target_blocks`, each layer-normed
        without parameters (data2vec §3.3 "Training targets")."""
        last = hidden[-self.target_blocks :]
        return sum(F.layer_norm(h.float(), h.shape[-1:]) for h in last) / len(last)

    def forward_feature_loss(
        self,
        latent1: torch.Tensor,
        mask1: torch.Tensor,
        ids_restore1: torch.Tensor,
        hidden2: list[torch.Tensor],
        mask2: torch.Tensor,
        ids_restore2: torch.Tensor,
    ) -> torch.Tensor:
        """Student 1's tokens (N, 1 + K, D) through the head regress student 2's targets (from its
        block outputs, each (N, 1 + K, D)) at the patches both see. Both sides are put back in raster
        order (token of patch l at l) before they are compared; cls tokens are not patches."""
        pred = self.head(latent1[:, 1:])
        target = self.feature_targets(hidden2)[:, 1:]
        blank = pred.new_zeros(1, 1, pred.shape[-1])
        pred = unshuffle_with_mask_tokens(pred, blank, ids_restore1)
        target = unshuffle_with_mask_tokens(target, blank.to(target.dtype), ids_restore2)
        return self.feature_loss(pred, target, (1 - mask1) * (1 - mask2))

    def timm_encoder(self) -> TimmEncoder:
        """The first student's ViT encoder (the one trained by gradient), as timm builds it (trainer.layers.timm_export)."""
        return self.student1.encoder.as_timm()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        imgs = batch["image"]
        target = patchify(imgs, self.patch_size)
        latent1, mask1, ids_restore1, pred1 = self.forward_student1(imgs)
        patch_loss1 = self.student1.loss.per_patch(pred1, target)
        loss_rec1 = (patch_loss1 * mask1).sum() / mask1.sum()
        with torch.no_grad() if self.teacher == "ema" else contextlib.nullcontext():
            hidden2, mask2, ids_restore2, pred2 = self.forward_student2(imgs, mask1, patch_loss1)
            loss_rec2 = self.student2.loss(pred2, target, mask2)
        loss_feature = self.forward_feature_loss(latent1, mask1, ids_restore1, hidden2, mask2, ids_restore2)
        loss = loss_rec1 + self.feature_weight * loss_feature
        if self.teacher == "student":
            loss = loss + loss_rec2
        return {"loss": loss, "loss_rec1": loss_rec1, "loss_rec2": loss_rec2, "loss_feature": loss_feature}

    @torch.no_grad()
    def on_step_end(self, progress: float) -> None:
        """EMA teacher: student2 <- m * student2 + (1 - m) * student1, with m rising from `teacher_momentum`
        to 1 on a half cosine as progress goes from 0 to 1. Nothing to do with two students."""
        if self.teacher != "ema":
            return
        m = 1.0 - (1.0 - self.teacher_momentum) * (1.0 + math.cos(math.pi * progress)) / 2.0
        for teacher, student in zip(self.student2.parameters(), self.student1.parameters()):
            teacher.lerp_(student, 1.0 - m)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, mask_seed: int | None = None) -> dict[str, torch.Tensor]:
        """images: (N, C, H, W) -> picture columns (N, C or 1, H, W): "image", then "s1 mask",
        "s1 masked", "s1 pred", "s1 pred+visible" and the same four for student 2 ("s2 ..."; its
        mask from Algorithm 1). `mask_seed` repeats the same masks each call."""
        generator = None if mask_seed is None else torch.Generator(device=images.device).manual_seed(mask_seed)
        _, mask1, _, pred1 = self.forward_student1(images, generator)
        patch_loss1 = self.student1.loss.per_patch(pred1, patchify(images, self.patch_size))
        _, mask2, _, pred2 = self.forward_student2(images, mask1, patch_loss1, generator)
        norm, eps = self.student1.loss.norm_pix_loss, self.student1.loss.eps
        columns = {"image": images}
        for name, pred, mask in (("s1", pred1, mask1), ("s2", pred2, mask2)):
            pictures = reconstruction_images(images, pred, mask, self.patch_size, norm, eps)
            columns |= {f"{name} {key}": value for key, value in pictures.items() if key != "image"}
        return columns
