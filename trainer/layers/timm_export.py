"""Pretrained encoders handed over to timm, where fine-tuning happens.

Pretraining is half the job: the encoder is then fine-tuned on the few labels, and the tool for
that is timm. Every method's `timm_encoder()` returns a TimmEncoder: the `timm.create_model` name
and keyword arguments that build the same network as a headless timm model (num_classes=0), and
the weights that load into it with strict=True. trainer/export_encoder.py writes them to a
.safetensors file with a JSON recipe beside it.

    encoder = timm.create_model(recipe["timm_model"], pretrained=False, **recipe["timm_kwargs"])
    encoder.load_state_dict(safetensors.torch.load_file("encoder.safetensors"))

ViT encoders (trainer.methods.vit_encoder) already carry timm VisionTransformer's parameter names;
the fixed sin-cos position embedding goes into timm's pos_embed. Convolutional encoders are timm
models made by `timm_backbone`, which remembers how they were made: a features_only ResNet and a
num_classes=0 one hold the same parameters under the same names.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import timm
import torch
from torch import nn


class TimmEncoder(NamedTuple):
    model: str  # a timm.create_model name
    kwargs: dict[str, Any]  # its keyword arguments (pretrained=False is the caller's)
    state_dict: dict[str, torch.Tensor]

    def build(self) -> nn.Module:
        """The timm model with these weights loaded (strict: every parameter and buffer matches)."""
        model = timm.create_model(self.model, pretrained=False, **self.kwargs)
        model.load_state_dict(self.state_dict, strict=True)
        return model


def weights_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the module's state dict: the export stays as it is while training goes on."""
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def timm_backbone(name: str, *, in_chans: int, options: dict[str, Any] | None = None, **extra) -> nn.Module:
    """timm.create_model(name, pretrained=False, in_chans=..., **options, **extra) (extra: e.g.
    features_only, num_classes=0), remembering the headless classifier it exports as."""
    options = dict(options or {})
    model = timm.create_model(name, pretrained=False, in_chans=in_chans, **options, **extra)
    model.timm_recipe = (name, {"in_chans": in_chans, "num_classes": 0, **options})
    return model


def backbone_as_timm(backbone: nn.Module) -> TimmEncoder:
    """A timm_backbone's weights (copied) with the recipe it was made from."""
    name, kwargs = backbone.timm_recipe
    return TimmEncoder(name, dict(kwargs), weights_of(backbone))
