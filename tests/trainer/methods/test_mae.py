import pytest
import torch

from trainer.layers.patchify import patchify, unpatchify
from trainer.methods.catalog import METHODS
from trainer.methods.mae import MaskedAutoencoder


def tiny(in_chans, img_size=32, **options):
    return METHODS["mae_vit_tiny_patch16"](img_size=img_size, in_chans=in_chans, **options)


@pytest.mark.parametrize("in_chans", [1, 7])
def test_forward_backward_reaches_every_parameter(in_chans):
    torch.manual_seed(0)
    model = tiny(in_chans, img_size=48)
    out = model({"image": torch.randn(2, in_chans, 48, 48)})
    assert set(out) == {"loss"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
    assert all(not b.requires_grad for b in model.buffers())
    assert not [name for name, _ in model.named_parameters() if "pos_embed" in name]


def test_base_has_vit_b_encoder_and_mae_decoder():
    model = METHODS["mae_vit_base_patch16"](img_size=224, in_chans=1)
    assert isinstance(model, MaskedAutoencoder)
    assert len(model.encoder.blocks) == 12 and model.encoder.cls_token.shape[-1] == 768
    assert model.encoder.blocks[0].attn.num_heads == 12
    assert len(model.decoder.blocks) == 8 and model.mask_token.shape[-1] == 512
    assert model.decoder.blocks[0].attn.num_heads == 16
    assert model.decoder.pred.out_features == 16 * 16 * 1


def test_encoder_sees_only_the_visible_patches():
    torch.manual_seed(0)
    model = tiny(3, img_size=64).eval()
    images = torch.randn(2, 3, 64, 64)
    latent, mask, _ = model.forward_encoder(images, 0.75, torch.Generator().manual_seed(5))
    assert latent.shape == (2, 1 + 4, 64) and mask.sum(dim=1).tolist() == [12.0, 12.0]
    mask_img = unpatchify(mask[..., None].expand(-1, -1, 16 * 16), 16)
    scrambled = images + 100 * torch.randn_like(images) * mask_img  # change removed pixels only
    latent2, mask2, _ = model.forward_encoder(scrambled, 0.75, torch.Generator().manual_seed(5))
    assert torch.equal(mask, mask2)
    assert torch.allclose(latent, latent2, atol=1e-6)


def test_loss_is_the_masked_patch_mse_of_the_decoder_output():
    torch.manual_seed(0)
    model = tiny(1, norm_pix_loss=False)
    images = torch.randn(3, 1, 32, 32)
    latent, mask, ids_restore = model.forward_encoder(images, 0.5)
    pred = model.forward_decoder(latent, ids_restore)
    assert pred.shape == (3, 4, 16 * 16)
    per_patch = ((pred - patchify(images, 16)) ** 2).mean(dim=-1)
    expected = per_patch[mask.bool()].mean()
    assert torch.allclose(model.forward_loss(images, pred, mask), expected)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_reconstruct_returns_picture_columns(norm_pix_loss):
    model = tiny(7, img_size=48, norm_pix_loss=norm_pix_loss)
    images = torch.randn(2, 7, 48, 48)
    pictures = model.reconstruct(images, mask_seed=3)
    assert list(pictures) == ["image", "mask", "masked", "pred", "pred+visible"]
    assert pictures["mask"].shape == (2, 1, 48, 48)
    for name in ("image", "masked", "pred", "pred+visible"):
        assert pictures[name].shape == (2, 7, 48, 48)
    visible = pictures["mask"].expand_as(images) == 0
    assert torch.equal(pictures["pred+visible"][visible], images[visible])
    assert pictures["mask"].mean().item() == pytest.approx(7 / 9)  # round(9 * 0.25) = 2 kept of 9
    assert torch.equal(model.reconstruct(images, mask_seed=3)["mask"], pictures["mask"])
