"""The frozen encoder a probe reads features from.

Either what trainer/export_encoder.py wrote (ENCODER.safetensors with ENCODER.json beside it),
or a run folder, checkpoint folder or checkpoint.pt, exported here in memory the same way. The
encoder is the headless timm model of the recipe (num_classes=0: forward gives pooled features).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from trainer.export_encoder import ExportError, encoder_and_recipe, find_checkpoint, load_checkpoint, recipe_path
from trainer.layers.timm_export import TimmEncoder, create_encoder


class ProbeError(ValueError):
    """The probe cannot run on these inputs; says which file or label and why."""


@dataclass
class Encoder:
    model: nn.Module  # timm, headless, in eval mode
    recipe: dict[str, Any]
    in_chans: int
    img_size: int  # the side its inputs are resized to (a ViT's fixed input size)
    source: str  # what it was loaded from

    @property
    def feature_dim(self) -> int:
        return int(self.model.num_features)


def _read_exported(path: Path) -> tuple[TimmEncoder, dict[str, Any]]:
    recipe_file = recipe_path(path)
    try:
        weights = path.read_bytes()
        recipe = json.loads(recipe_file.read_text())
    except FileNotFoundError as exc:
        raise ProbeError(f"{exc.filename}: does not exist (an exported encoder is a .safetensors with its "
                         f".json recipe beside it, as trainer/export_encoder.py writes them)") from exc
    except (OSError, ValueError) as exc:
        raise ProbeError(f"{recipe_file}: cannot be read as an encoder recipe ({exc})") from exc
    if not isinstance(recipe, dict) or recipe.get("format") != "medshards-encoder":
        raise ProbeError(f"{recipe_file}: not a medshards encoder recipe (no \"format\": \"medshards-encoder\")")
    try:
        state_dict = load_safetensors(weights)
    except SafetensorError as exc:
        raise ProbeError(f"{path}: cannot be read as safetensors ({exc})") from exc
    return TimmEncoder(recipe["timm_model"], dict(recipe["timm_kwargs"]), state_dict, recipe.get("context_blocks")), recipe


def load_encoder(location: str | Path, device: torch.device, best: bool = False) -> Encoder:
    """The encoder at `location` (see the module docstring), on `device`, in eval mode; with
    `best`, a run's checkpoint with the lowest val_loss."""
    location = str(location)
    if best and location.endswith(".safetensors"):
        raise ProbeError(f"{location}: --best picks a run's checkpoint, and this is one exported encoder")
    if location.endswith(".safetensors"):
        timm_encoder, recipe = _read_exported(Path(location))
    else:
        try:
            checkpoint = find_checkpoint(location, best=best)
            timm_encoder, recipe = encoder_and_recipe(load_checkpoint(checkpoint), str(checkpoint))
        except ExportError as exc:
            raise ProbeError(str(exc)) from exc
        location = str(checkpoint)
    try:
        model = timm_encoder.build()
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # weights or a recipe that do not fit
        raise ProbeError(f"{location}: its weights do not load into {recipe['timm_model']} as its recipe "
                         f"builds it ({exc})") from exc
    kwargs = timm_encoder.kwargs
    img_size = kwargs.get("img_size", recipe["pretrained_on"]["img_size"])
    in_chans = kwargs.get("in_chans", recipe["pretrained_on"]["in_chans"])
    return Encoder(_frozen(model, device), recipe, int(in_chans), int(img_size), location)


def _frozen(model: nn.Module, device: torch.device) -> nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # frozen: MLVICX §IV-B's "frozen" protocol
    return model.to(device).eval()


def random_init(encoder: Encoder, seed: int) -> Encoder:
    """The same timm model with timm's own random initialisation (seeded) and no pretrained
    weights: the baseline that tells what pretraining added."""
    torch.manual_seed(seed)
    model = create_encoder(encoder.recipe["timm_model"], encoder.recipe["timm_kwargs"], encoder.recipe.get("context_blocks"))
    device = next(encoder.model.parameters()).device
    return Encoder(_frozen(model, device), encoder.recipe, encoder.in_chans, encoder.img_size, "random initialisation")
