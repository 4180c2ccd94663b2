"""Every method's pretrained encoder, handed to timm, is the same network: the timm model built
from its recipe (MLVICX's with its context blocks inserted) takes its weights with strict=True and
computes the same features."""

from __future__ import annotations

import pytest
import timm
import torch

from trainer.layers.timm_export import create_encoder
from trainer.registry import build_method, method_names

TINY = [name for name in method_names() if "tiny" in name]


def _method_features(name: str, method: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The features the method's own encoder computes on whole, unmasked images."""
    if name.startswith(("mae", "miram", "dama")):
        encoder = method.student1.encoder if name.startswith("dama") else method.encoder
        latent, _ = encoder.encode_visible(encoder.patch_tokens(images))
        return latent
    if name.startswith(("tower", "pcrlv2")):  # features_only: the deepest map
        return method.encoder(images)[-1]
    if name.startswith("mlvicx"):  # y of embed(): the pooled last refined map
        return method.encoder.forward_head(method.refined_maps(images)[-1])
    return method.encoder(images)  # pooled, headless


def _timm_features(name: str, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    if name.startswith(("mae", "miram", "dama", "tower", "pcrlv2")):
        return model.forward_features(images)
    return model(images)


@pytest.mark.parametrize("in_chans", [1, 7])
@pytest.mark.parametrize("name", TINY)
def test_the_exported_encoder_is_the_pretrained_one_in_timm(name: str, in_chans: int):
    torch.manual_seed(0)
    method = build_method(name, in_chans=in_chans, img_size=64).eval()
    with torch.no_grad():  # weights unlike any fresh initialisation, BatchNorm statistics included
        for key, tensor in method.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
                if key.endswith("running_var"):
                    tensor.abs_()
    exported = method.timm_encoder()
    model = exported.build().eval()  # strict load: raises on any missing or unexpected key
    size = method.input_size if name.startswith("miram") else 64  # MIRAM's encoder sees the half-size input
    images = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        ours, theirs = _method_features(name, method, images), _timm_features(name, model, images)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)


def test_the_export_is_a_copy():
    method = build_method("mae_vit_tiny_patch16", in_chans=1, img_size=32)
    exported = method.timm_encoder()
    with torch.no_grad():
        method.encoder.norm.weight.add_(1.0)
    assert not torch.equal(exported.state_dict["norm.weight"], method.encoder.norm.weight)


def test_miram_vit_base_exports_as_timm_vit_b16_at_its_input_size():
    """The paper's model (ViT-B/16, 112 px in for 224 px targets) becomes timm's ViT-B/16 at 112."""
    exported = build_method("miram_vit_base_patch16", in_chans=1, img_size=224).timm_encoder()
    model = exported.build()
    assert (exported.kwargs["img_size"], exported.kwargs["embed_dim"], exported.kwargs["depth"]) == (112, 768, 12)
    assert model.pos_embed.shape == (1, 1 + 7 * 7, 768) and model.num_features == 768


def test_mlvicx_exports_as_timm_resnet_with_its_context_blocks_in_line():
    """The blocks sit in timm's own module tree: the ResNet keeps timm's parameter names, the blocks
    add keys, so a plain timm ResNet refuses the weights instead of dropping the blocks."""
    method = build_method("mlvicx_resnet18", in_chans=1, img_size=64)
    exported = method.timm_encoder()
    model = exported.build()
    plain = timm.create_model("resnet18", pretrained=False, **exported.kwargs)
    assert type(model) is type(plain) and model.num_features == 512
    assert set(plain.state_dict()) < set(exported.state_dict)
    added = sorted({key.rsplit(".", 2)[0] for key in set(exported.state_dict) - set(plain.state_dict())})
    assert added == ["act1.1", "layer1.2", "layer2.2", "layer3.2", "layer4.2"]
    with pytest.raises(RuntimeError, match="Unexpected key"):
        plain.load_state_dict(exported.state_dict, strict=True)
    model.reset_classifier(3)  # timm's fine-tuning API still works on the built encoder
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def test_a_context_block_after_a_level_the_model_lacks_is_refused():
    spec = {"after": ["layer5"], "reduction": None, "spatial_kernel": 7}
    with pytest.raises(ValueError, match="no feature level 'layer5'.*act1, layer1"):
        create_encoder("resnet18", {"num_classes": 0}, spec)
