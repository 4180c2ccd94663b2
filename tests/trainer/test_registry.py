"""Every registered method at tiny size: forward and backward on CPU for 1, 3 and 7 channels, a
finite loss, and a finite gradient on every trainable parameter (timm's test_model_backward)."""

from __future__ import annotations

import pytest
import torch

from trainer.registry import build_method, method_names, unknown_options

TINY = [name for name in method_names() if "tiny" in name]
# A method whose step trains only part of it (PCRLv2: one pyramid level per step) must still reach
# every parameter within a few steps.
MAX_STEPS_FOR_FULL_COVERAGE = 12


def test_every_method_has_a_tiny_variant():
    families = {name.split("_")[0] for name in method_names()}
    assert families == {name.split("_")[0] for name in TINY}


def test_unknown_method_is_named():
    with pytest.raises(KeyError, match="registered"):
        build_method("no_such_method")


def test_options_another_method_takes_are_named_without_building_the_model():
    options = {"mask_ratio": 0.75, "fine_attention": "nystrom", "num_landmarks": 64}
    assert unknown_options("miram_vit_base_patch16", options)[0] == []
    unknown, accepted = unknown_options("mae_vit_base_patch16", options)
    assert unknown == ["fine_attention", "num_landmarks"]
    assert "mask_ratio" in accepted and "in_chans" not in accepted and "img_size" not in accepted
    with pytest.raises(TypeError, match="fine_attention"):  # what building it would have said, in every worker
        build_method("mae_vit_tiny_patch16", in_chans=1, img_size=32, **options)


@pytest.mark.parametrize("in_chans", [1, 3, 7])
@pytest.mark.parametrize("name", TINY)
def test_tiny_method_forward_backward(name: str, in_chans: int):
    torch.manual_seed(0)
    model = build_method(name, img_size=64, in_chans=in_chans).train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    reached: set[str] = set()
    steps = 1 if getattr(model, "uses_every_parameter", True) else MAX_STEPS_FOR_FULL_COVERAGE
    for step in range(steps):
        torch.manual_seed(step)
        model.zero_grad(set_to_none=True)
        terms = model({"image": torch.randn(4, in_chans, 64, 64)})
        assert terms["loss"].ndim == 0 and torch.isfinite(terms["loss"]), f"{name}: loss {terms['loss']}"
        assert all(torch.is_tensor(v) and v.ndim == 0 for v in terms.values()), f"{name}: terms must be 0-dim tensors"
        terms["loss"].backward()
        for n, p in params.items():
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient on {n}"
                reached.add(n)
        if len(reached) == len(params):
            break
    missing = sorted(set(params) - reached)
    assert not missing, f"{name}: no gradient on {missing[:8]}{' ...' if len(missing) > 8 else ''}"
