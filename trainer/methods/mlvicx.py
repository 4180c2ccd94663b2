"""MLVICX: multi-level variance-covariance exploration (Singh, Gorade & Mishra, IEEE JBHI 2024;
paper 002). VICReg (trainer.methods.vicreg) on a ResNet whose intermediate maps are refined in-line
by context-bottleneck blocks, with a second VICReg loss on an embedding of all those maps.

- Siamese, weights shared (Fig. 1): both views v, v' go through the same encoder and heads.
- Context-bottleneck blocks (§III-A-1, eq. 1-2; trainer.layers.context_bottleneck) after the stem
  (conv1/bn1/act1, stride 2) and after each of the four stages (strides 4-32): the five levels of
  timm's feature_info, where the authors' code also puts them. Each block's refined map ŷ_p is what
  the next stage reads ("the refined intermediate representations are processed by subsequent layers
  of the encoder"), so the blocks change the global representation too.
- Global embedding: y = average pool of the last refined map; z = g(y), g a 3-layer expander.
- Multi-level embedding (§III-A-1, Fig. 1): every ŷ_p is projected by its own 1x1 convolution to
  `level_channels` channels and resized bilinearly to one grid (`level_size`, default the stride-4
  grid, 56 at 224) -- "a pre-processing step ... to ensure consistency in terms of h and w" -- then
  the five are concatenated along the channels ("(||) represents the concatenation of multi-level
  intermediate feature maps", Fig. 1) into u (5 level_channels, level_size, level_size). u is
  average-pooled to a `level_grid` x `level_grid` grid and flattened, as the authors' code does
  before its head, and m = h(u), h a 3-layer expander. (The released code sums the projected maps
  instead of concatenating them, and creates the 1x1 convolutions lazily inside forward, after the
  optimizer was built, so they never train; here every module exists after __init__.) The 1x1
  projection runs before the resize: both are linear and bilinear weights sum to one, so the order
  does not change u, and the deep maps are projected at their own, smaller size.
- Expanders (§IV-C): three linear layers of 2048 with BatchNorm and ReLU between them, and a
  BatchNorm (affine, no ReLU) after the last, as the released Projection_MLP and Projection_CONV
  end (VICReg's own expander ends with the bare linear; trainer.layers.projection_head).
- Loss (§III-B, eq. 3-8): L = L_G + lambda L_L, L_G = VICReg(Z, Z'), L_L = VICReg(M, M'), with
  VICReg's coefficients 25/25/1 and threshold 1 (trainer.losses.vicreg). The paper gives no value
  for the balance factor lambda; 1 is the authors' code (loss += vicreg(m, m')).
- Views: VICReg's, as in the authors' code (trainer.methods.vicreg.asymmetric_views; §III-A lists
  flips, crops, blur, colour jitter, rotation and solarisation without parameters; the released
  code has no rotation and its solarisation has no grey-image analogue here).
Optimiser and schedule (LARS, batch 64, 300 epochs; §IV-C) are in trainer/configs/mlvicx_cxr.yaml.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.layers.context_bottleneck import ContextBottleneck
from trainer.layers.projection_head import ProjectionHead
from trainer.layers.timm_export import TimmEncoder, create_encoder, insert_context_blocks, timm_backbone, weights_of
from trainer.losses.vicreg import VICRegLoss
from trainer.methods.vicreg import asymmetric_views

CONTEXT_KERNEL = 7  # eq. 2's spatial convolution, 7 x 7


class MLVICX(nn.Module):
    """batch {"image": (N, in_chans, img_size, img_size), standardised} -> {"loss", "loss_global",
    "loss_multilevel", and the unweighted VICReg terms of each: "loss_{inv,var,cov}_{global,multilevel}"}."""

    def __init__(
        self,
        *,
        img_size: int,
        in_chans: int,
        encoder: str = "resnet18",
        encoder_options: dict | None = None,
        context_reduction: int | None = None,
        level_channels: int = 128,
        level_size: int | None = None,
        level_grid: int = 4,
        expander_dim: int = 2048,
        multilevel_weight: float = 1.0,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        blur: tuple[float, float] = (1.0, 0.1),
    ):
        super().__init__()
        self.encoder = timm_backbone(encoder, in_chans=in_chans, options=encoder_options, num_classes=0)
        modules = [info["module"] for info in self.encoder.feature_info]
        if modules != ["act1", "layer1", "layer2", "layer3", "layer4"]:
            raise ValueError(f"{encoder}: expected a ResNet (stem act1, layer1..layer4), got levels {modules}")
        channels = [info["num_chs"] for info in self.encoder.feature_info]
        self.context_reduction = context_reduction
        self.context_blocks = nn.ModuleList(ContextBottleneck(c, reduction=context_reduction, spatial_kernel=CONTEXT_KERNEL)
                                            for c in channels)
        self.level_projections = nn.ModuleList(nn.Conv2d(c, level_channels, kernel_size=1) for c in channels)
        self.level_size = level_size or img_size // self.encoder.feature_info[1]["reduction"]
        self.level_grid = level_grid
        multilevel_width = len(channels) * level_channels * level_grid**2
        # §IV-C: three linear layers "augmented with ReLU activation functions and batch normalization";
        # the released expanders (Projection_MLP, Projection_CONV) end with a BatchNorm1d as well.
        self.global_expander = ProjectionHead((self.encoder.num_features, expander_dim, expander_dim, expander_dim),
                                              last_bn=True, last_bn_affine=True)
        self.multilevel_expander = ProjectionHead((multilevel_width, expander_dim, expander_dim, expander_dim),
                                                  last_bn=True, last_bn_affine=True)
        self.multilevel_weight = multilevel_weight
        self.views = asymmetric_views(img_size, crop_scale, blur)
        self.loss = VICRegLoss(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff)

    def stages(self) -> list[nn.Module]:
        """The encoder cut at its five levels: stem (conv1, bn1, act1), maxpool + layer1, layer2..4."""
        net = self.encoder
        return [nn.Sequential(net.conv1, net.bn1, net.act1), nn.Sequential(net.maxpool, net.layer1),
                net.layer2, net.layer3, net.layer4]

    def refined_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, C, H, W) -> [ŷ_0 .. ŷ_4], ŷ_p (N, c_p, H / 2^(p+1), W / 2^(p+1)): each stage reads the
        previous stage's refined map."""
        maps, x = [], images
        for stage, block in zip(self.stages(), self.context_blocks):
            x = block(stage(x))
            maps.append(x)
        return maps

    def compound(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """[ŷ_p] -> u pooled and flattened, (N, 5 level_channels level_grid^2)."""
        size = (self.level_size, self.level_size)
        levels = [F.interpolate(project(y), size=size, mode="bilinear", align_corners=False)
                  for project, y in zip(self.level_projections, maps)]
        u = torch.cat(levels, dim=1)
        return F.adaptive_avg_pool2d(u, self.level_grid).flatten(1)

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) -> (z = g(y), m = h(u)), each (N, expander_dim)."""
        maps = self.refined_maps(images)
        y = self.encoder.forward_head(maps[-1])  # timm's global average pool of the last refined map
        return self.global_expander(y), self.multilevel_expander(self.compound(maps))

    def timm_encoder(self) -> TimmEncoder:
        """The pretrained encoder: the timm ResNet with its five context-bottleneck blocks in line
        (trainer.layers.timm_export.insert_context_blocks), so timm's forward is y of embed(): the
        global average pool of the last refined map. The level projections and expanders stay in
        the checkpoint: they serve only the pretraining losses."""
        name, kwargs = self.encoder.timm_recipe
        spec = {"after": [info["module"] for info in self.encoder.feature_info],
                "reduction": self.context_reduction, "spatial_kernel": CONTEXT_KERNEL}
        model = create_encoder(name, kwargs)
        model.load_state_dict(self.encoder.state_dict(), strict=True)
        for block, trained in zip(insert_context_blocks(model, spec), self.context_blocks, strict=True):
            block.load_state_dict(trained.state_dict(), strict=True)
        return TimmEncoder(name, dict(kwargs), weights_of(model), spec)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        images = batch["image"]
        # Each view is encoded on its own, as the authors' code does: BatchNorm statistics per view.
        (z1, m1), (z2, m2) = (self.embed(view(images, generator)) for view in self.views)
        global_terms, multilevel_terms = self.loss.terms(z1, z2), self.loss.terms(m1, m2)
        loss_global, loss_multilevel = self.loss.total(global_terms), self.loss.total(multilevel_terms)
        out = {"loss": loss_global + self.multilevel_weight * loss_multilevel,
               "loss_global": loss_global, "loss_multilevel": loss_multilevel}
        for level, terms in (("global", global_terms), ("multilevel", multilevel_terms)):
            out |= {f"loss_inv_{level}": terms.invariance, f"loss_var_{level}": terms.variance,
                    f"loss_cov_{level}": terms.covariance}
        return out
