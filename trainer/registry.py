"""Method registry: an explicit name -> factory table whose names carry the variant
(`miram_vit_base_patch16`), as timm's register_model does. No lookups in module __dict__."""

from __future__ import annotations

import inspect
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


_FROM_DATA = ("in_chans", "img_size")  # given by the data, not by model.options


def unknown_options(name: str, options: dict) -> tuple[list[str], list[str]]:
    """(the options that method `name` does not take, the ones it does), read from its factory's
    signature without building it: a config whose model.options were written for another method
    is refused before a run starts, not as a traceback in every worker."""
    accepted = [p for p in inspect.signature(METHODS[name]).parameters if p not in _FROM_DATA]
    return sorted(set(options) - set(accepted)), accepted


def model_config_error(name: str, options: dict) -> str | None:
    """What is wrong with a config's model.name and model.options, checked without building the
    model (for pretrain and cluster.submit, before a run starts); None when nothing is."""
    if name not in METHODS:
        return f"model.name: {name!r} is not one of {method_names()}"
    unknown, accepted = unknown_options(name, options)
    if unknown:
        return f"model.options: {', '.join(map(repr, unknown))} not taken by {name}; its options: {', '.join(accepted)}"
    return None
