"""The U-Net decoder over a timm features_only pyramid: full-resolution output, skips at every
encoder stride below the deepest."""

from __future__ import annotations

import pytest
import timm
import torch

from trainer.layers.unet import UNetDecoder

QUARTER = dict(channels=(16, 32, 64, 128))


def resnet_unet(in_chans: int, out_chans: int | None = None) -> tuple[torch.nn.Module, UNetDecoder]:
    torch.manual_seed(0)
    encoder = timm.create_model("resnet18", pretrained=False, in_chans=in_chans, features_only=True, **QUARTER)
    decoder = UNetDecoder(encoder_channels=encoder.feature_info.channels(), encoder_reductions=encoder.feature_info.reduction(),
                          channels=(32, 16, 16, 8, 8), out_chans=out_chans or in_chans)
    return encoder.eval(), decoder.eval()


@pytest.mark.parametrize("in_chans", [1, 3, 7])
def test_output_has_the_input_shape(in_chans):
    encoder, decoder = resnet_unet(in_chans)
    images = torch.randn(2, in_chans, 64, 96)
    assert decoder(encoder(images)).shape == images.shape


def test_skips_at_strides_16_to_2_and_none_at_full_resolution():
    _, decoder = resnet_unet(3)
    assert decoder.skip_indices == [3, 2, 1, 0, None]  # layer3, layer2, layer1, act1, -
    widths = [block.convs[0][0].in_channels for block in decoder.blocks]
    assert widths == [128 + 64, 32 + 32, 16 + 16, 16 + 64, 8]  # upsampled + skip channels
    assert decoder.head.out_channels == 3


def test_perturbing_a_shallow_encoder_feature_changes_the_output():
    encoder, decoder = resnet_unet(1)
    features = encoder(torch.randn(2, 1, 64, 64))
    decoder.train()  # batch statistics keep every level's signal at unit scale in an untrained decoder
    clean = decoder(features)
    for i in range(len(features) - 1):  # every skip reaches the output without passing the bottleneck
        perturbed = list(features)
        perturbed[i] = features[i] + 3 * features[i].std() * torch.randn_like(features[i])
        assert (decoder(perturbed) - clean).abs().mean() > 0.01 * clean.std(), i
    # the stride-2 map reaches the output locally, beside the deepest map: a local change stays local
    decoder.eval()
    clean = decoder(features)
    perturbed = list(features)
    perturbed[0] = features[0].clone()
    perturbed[0][..., :4, :4] += 5.0
    difference = (decoder(perturbed) - clean).abs().sum(dim=(0, 1))
    assert difference[:8, :8].sum() > 0 and difference[32:, 32:].sum() == 0


def test_encoders_without_a_stride_2_map_get_skip_less_final_blocks():
    decoder = UNetDecoder(encoder_channels=(8, 16, 24, 32), encoder_reductions=(4, 8, 16, 32),
                          channels=(16, 12, 8, 8, 4), out_chans=2)
    features = [torch.randn(1, c, 64 // r, 64 // r) for c, r in zip((8, 16, 24, 32), (4, 8, 16, 32))]
    assert decoder.skip_indices == [2, 1, 0, None, None]
    assert decoder(features).shape == (1, 2, 64, 64)


def test_every_parameter_trains():
    encoder, decoder = resnet_unet(3)
    encoder.train(), decoder.train()
    decoder(encoder(torch.randn(2, 3, 32, 32))).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())
    assert all(p.grad is not None for p in encoder.parameters())  # timm zero-inits each block's last BN


def test_rejects_widths_that_do_not_reach_full_resolution():
    with pytest.raises(ValueError, match="needs 5 decoder widths"):
        UNetDecoder(encoder_channels=(8, 16), encoder_reductions=(16, 32), channels=(8, 8, 8), out_chans=1)
    with pytest.raises(ValueError, match="powers of two"):
        UNetDecoder(encoder_channels=(8, 16), encoder_reductions=(12, 24), channels=(8,), out_chans=1)
