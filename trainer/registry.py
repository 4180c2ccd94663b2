"""Method registry: an explicit name -> factory table whose names carry the variant
(`miram_vit_base_patch16`), as timm's register_model does. No lookups in module __dict__."""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainer.methods.catalog import METHODS


def method_names() -> list[str]:
    return sorted(METHODS)


def build_method(name: str, **kwargs) -> torch.nn.Module:
    """Build a registered method; kwargs come from the data (in_chans, img_size) and the config."""
    factory: Callable[..., torch.nn.Module] | None = METHODS.get(name)
    if factory is None:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(method_names())}")
    return factory(**kwargs)
