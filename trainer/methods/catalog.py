"""Name -> factory for every SSL method; names carry the variant (timm's register_model).

Every factory takes the data's `img_size` (side of the batch's square images) and `in_chans`, and
the method's options as keyword arguments. ViT methods (MAE, MIRAM, DAMA): "base" is ViT-B/16 (768
wide, 12 blocks, 12 heads) with MAE's decoder (512 wide, 8 blocks, 16 heads; He et al. 2022 §A.1),
norm_pix_loss on (MAE Table 1c). Convolutional methods (TOWER, MLVICX, PCRLv2 and the SimCLR /
SimSiam / VICReg baselines) name their timm ResNet. Every family has a "tiny" variant for CPU smoke
runs (tests/trainer/test_registry.py builds each one for 1, 3 and 7 channels).
"""

from __future__ import annotations

import functools
from typing import Callable

from torch import nn

from trainer.methods.dama import DAMA
from trainer.methods.mae import MaskedAutoencoder
from trainer.methods.miram import MIRAM
from trainer.methods.mlvicx import MLVICX
from trainer.methods.pcrlv2 import PCRLv2
from trainer.methods.simclr import SimCLR
from trainer.methods.simsiam import SimSiam
from trainer.methods.tower import TOWER
from trainer.methods.vicreg import VICReg

BASE = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
TINY = dict(patch_size=16, embed_dim=64, depth=2, num_heads=2, decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2)
RESNET18_QUARTER = dict(channels=(16, 32, 64, 128))  # ResNet-18's stages at a quarter width (timm's 7x7 stem stays 64)


# Each entry is the method's class with its size fixed; img_size, in_chans and the method's
# options (mask_ratio, norm_pix_loss, drop_path_rate; MIRAM also fine_attention, num_landmarks)
# are the caller's keyword arguments. For MIRAM, img_size is the fine scale (the batch's images,
# e.g. 224); its encoder sees img_size / 2.
METHODS: dict[str, Callable[..., nn.Module]] = {
    "dama_vit_base_patch16": functools.partial(DAMA, **BASE),
    "dama_vit_tiny_patch16": functools.partial(DAMA, **TINY, target_blocks=2),  # K <= depth
    "mae_vit_base_patch16": functools.partial(MaskedAutoencoder, **BASE),
    "mae_vit_tiny_patch16": functools.partial(MaskedAutoencoder, **TINY),
    "miram_vit_base_patch16": functools.partial(MIRAM, **BASE),
    "miram_vit_tiny_patch16": functools.partial(MIRAM, **TINY),
    "mlvicx_resnet18": functools.partial(MLVICX, encoder="resnet18"),
    "mlvicx_resnet18_tiny": functools.partial(MLVICX, encoder="resnet18", encoder_options=RESNET18_QUARTER, level_channels=8, level_grid=2, expander_dim=64),
    "pcrlv2_resnet18": functools.partial(PCRLv2, encoder="resnet18"),
    "pcrlv2_resnet18_tiny": functools.partial(PCRLv2, encoder="resnet18", encoder_options=RESNET18_QUARTER, decoder_channels=(32, 16, 16, 8, 8), local_size=32),
    "simclr_resnet18": functools.partial(SimCLR, encoder="resnet18"),
    "simclr_resnet18_tiny": functools.partial(SimCLR, encoder="resnet18", encoder_options=RESNET18_QUARTER, proj_hidden_dim=64, proj_dim=32),
    "simsiam_resnet18": functools.partial(SimSiam, encoder="resnet18"),
    "simsiam_resnet18_tiny": functools.partial(SimSiam, encoder="resnet18", encoder_options=RESNET18_QUARTER, proj_dim=64, pred_dim=16),
    "tower_unet_resnet18_tiny": functools.partial(TOWER, encoder="resnet18", encoder_options=RESNET18_QUARTER, decoder_channels=(32, 16, 16, 8, 8), proj_hidden_dim=64, proj_dim=32),
    "tower_unet_resnet50": functools.partial(TOWER, encoder="resnet50"),
    "vicreg_resnet18": functools.partial(VICReg, encoder="resnet18"),
    "vicreg_resnet18_tiny": functools.partial(VICReg, encoder="resnet18", encoder_options=RESNET18_QUARTER, expander_dim=64),
}
