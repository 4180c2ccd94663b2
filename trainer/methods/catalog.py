"""Name -> factory for the masked-image methods; names carry the variant (timm's register_model).

Every factory takes the data's `img_size` (side of the batch's square images) and `in_chans`, and
the method's options as keyword arguments. "base" is ViT-B/16 (768 wide, 12 blocks, 12 heads) with
MAE's decoder (512 wide, 8 blocks, 16 heads; He et al. 2022 §A.1); "tiny" (64/2/2, decoder 64/1/2)
is for CPU smoke runs. norm_pix_loss defaults on, MAE's recommended target (Table 1c).
"""

from __future__ import annotations

import functools
from typing import Callable

from torch import nn

from trainer.methods.mae import MaskedAutoencoder
from trainer.methods.miram import MIRAM

BASE = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
TINY = dict(patch_size=16, embed_dim=64, depth=2, num_heads=2, decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2)


# Each entry is the method's class with its size fixed; img_size, in_chans and the method's
# options (mask_ratio, norm_pix_loss, drop_path_rate; MIRAM also fine_attention, num_landmarks)
# are the caller's keyword arguments. For MIRAM, img_size is the fine scale (the batch's images,
# e.g. 224); its encoder sees img_size / 2.
METHODS: dict[str, Callable[..., nn.Module]] = {
    "mae_vit_base_patch16": functools.partial(MaskedAutoencoder, **BASE),
    "mae_vit_tiny_patch16": functools.partial(MaskedAutoencoder, **TINY),
    "miram_vit_base_patch16": functools.partial(MIRAM, **BASE),
    "miram_vit_tiny_patch16": functools.partial(MIRAM, **TINY),
}
