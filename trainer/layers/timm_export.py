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

MLVICX's encoder is a timm ResNet with a context-bottleneck block after the stem and after each
stage, in line (paper 002, §III-A-1). It exports as that timm ResNet with the blocks inserted in
its own module tree (`context_blocks`, see insert_context_blocks): the object stays timm's ResNet
(forward_features, forward_head, reset_classifier work), the ResNet's parameters keep timm's names,
and the blocks' parameters are extra keys, so a plain timm model refuses the weights (strict=True)
rather than silently dropping the blocks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import timm
import torch
from torch import nn

from trainer.layers.context_bottleneck import ContextBottleneck


class TimmEncoder(NamedTuple):
    model: str  # a timm.create_model name
    kwargs: dict[str, Any]  # its keyword arguments (pretrained=False is the caller's)
    state_dict: dict[str, torch.Tensor]
    context_blocks: dict[str, Any] | None = None  # see insert_context_blocks; None for plain timm models

    def build(self) -> nn.Module:
        """The timm model with these weights loaded (strict: every parameter and buffer matches)."""
        model = create_encoder(self.model, self.kwargs, self.context_blocks)
        model.load_state_dict(self.state_dict, strict=True)
        return model


def create_encoder(name: str, kwargs: dict[str, Any], context_blocks: dict[str, Any] | None = None) -> nn.Module:
    """timm.create_model(name, pretrained=False, **kwargs), with the context blocks inserted when
    the recipe has them; randomly initialised."""
    model = timm.create_model(name, pretrained=False, **kwargs)
    if context_blocks is not None:
        insert_context_blocks(model, context_blocks)
    return model


def insert_context_blocks(model: nn.Module, spec: dict[str, Any]) -> list[ContextBottleneck]:
    """Put a ContextBottleneck after each module spec["after"] names (timm feature_info module
    names: a ResNet's "act1", "layer1" .. "layer4"), sized from feature_info, in line: a stage (an
    nn.Sequential) gets the block appended, so its blocks keep their names ("layer1.0.conv1") and
    the new one is "layer1.2"; any other module becomes nn.Sequential(module, block) ("act1.1",
    the stem's activation holds no parameters). timm's forward then runs exactly what MLVICX's
    refined_maps does. spec: {"after": [...], "reduction": int | None, "spatial_kernel": int}.
    Returns the new blocks in spec["after"]'s order."""
    channels = {info["module"]: info["num_chs"] for info in getattr(model, "feature_info", [])}
    blocks = []
    for name in spec["after"]:
        if name not in channels:
            raise ValueError(f"{type(model).__name__} has no feature level {name!r} for a context block "
                             f"(its levels: {', '.join(channels) or 'none'})")
        block = ContextBottleneck(channels[name], reduction=spec["reduction"], spatial_kernel=spec["spatial_kernel"])
        module = getattr(model, name)
        if isinstance(module, nn.Sequential):
            module.append(block)
        else:
            setattr(model, name, nn.Sequential(module, block))
        blocks.append(block)
    return blocks


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
