import pytest
import torch
import torch.nn.functional as F

from trainer.layers.attention import NystromSelfAttention, SelfAttention
from trainer.layers.linformer_attention import LinformerSelfAttention
from trainer.layers.performer_attention import PerformerSelfAttention
from trainer.layers.patchify import patchify, unpatchify
from trainer.layers.token_duplication import duplicate_tokens
from trainer.methods.catalog import METHODS
from trainer.methods.miram import MIRAM


def tiny(in_chans, img_size=64, **options):
    return METHODS["miram_vit_tiny_patch16"](img_size=img_size, in_chans=in_chans, **options)


@pytest.mark.parametrize("fine_attention", ["sdpa", "explicit", "nystrom", "linformer", "performer"])
@pytest.mark.parametrize("in_chans", [1, 7])
def test_forward_backward_reaches_every_parameter(in_chans, fine_attention):
    torch.manual_seed(0)
    model = tiny(in_chans, fine_attention=fine_attention, num_landmarks=8)
    out = model({"image": torch.randn(2, in_chans, 64, 64)})
    assert set(out) == {"loss", "loss_coarse", "loss_fine"}
    assert all(torch.isfinite(v) for v in out.values())
    assert torch.allclose(out["loss"], (out["loss_coarse"] + out["loss_fine"]) / 2)
    out["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(not b.requires_grad for b in model.buffers())


def test_nystrom_with_more_landmarks_than_tokens_runs():
    model = tiny(1, fine_attention="nystrom", num_landmarks=64)  # 17 fine tokens, padded to 64
    assert torch.isfinite(model({"image": torch.randn(2, 1, 64, 64)})["loss"])


@pytest.mark.parametrize("fine_attention", ["linformer", "performer"])
def test_linear_fine_attention_is_sized_by_num_landmarks_and_the_fine_grid(fine_attention):
    model = tiny(1, img_size=96, fine_attention=fine_attention, num_landmarks=12)  # 6x6 fine grid
    expected = LinformerSelfAttention if fine_attention == "linformer" else PerformerSelfAttention
    assert all(type(b.attn) is SelfAttention for b in model.decoder.blocks)
    for block in model.fine_decoder.blocks:
        assert isinstance(block.attn, expected)
        if fine_attention == "linformer":
            assert block.attn.key_projection.shape == (12, 1 + 36)
        else:
            assert block.attn.random_features.shape == (12, 64 // 2)
    assert torch.isfinite(model({"image": torch.randn(2, 1, 96, 96)})["loss"])


def test_base_fine_decoder_mirrors_the_first_and_only_it_changes_attention():
    model = METHODS["miram_vit_base_patch16"](img_size=224, in_chans=1, fine_attention="nystrom")
    assert model.input_size == 112 and model.grid_size == (7, 7)
    assert model.decoder.grid_size == (7, 7) and model.fine_decoder.grid_size == (14, 14)
    assert len(model.fine_decoder.blocks) == len(model.decoder.blocks) == 8
    assert model.fine_decoder.pos_embed.shape == (1, 1 + 196, 512)
    assert model.decoder.pred.out_features == model.fine_decoder.pred.out_features == 16 * 16
    assert all(type(b.attn) is SelfAttention and b.attn.kernel == "sdpa" for b in model.decoder.blocks)
    assert all(isinstance(b.attn, NystromSelfAttention) for b in model.fine_decoder.blocks)
    assert model.fine_decoder.blocks[0].attn.attn.heads == 16


def test_input_is_the_2x2_area_mean_of_the_image():
    images = torch.randn(2, 3, 64, 64)
    assert torch.allclose(tiny(3).downscale(images), F.avg_pool2d(images, 2), atol=1e-6)


def test_fine_decoder_gets_each_token_copied_onto_its_four_sub_patches():
    torch.manual_seed(0)
    model = tiny(1, img_size=96)  # 3x3 coarse grid, 6x6 fine grid
    seen = {}
    model.decoder.register_forward_hook(lambda m, args, out: seen.update(coarse=args[0]))
    model.fine_decoder.register_forward_hook(lambda m, args, out: seen.update(fine=args[0]))
    model({"image": torch.randn(2, 1, 96, 96)})
    coarse, fine = seen["coarse"], seen["fine"]
    assert coarse.shape == (2, 1 + 9, 64) and fine.shape == (2, 1 + 36, 64)
    assert torch.equal(fine[:, 0], coarse[:, 0])  # cls once, not duplicated
    for i in range(3):
        for j in range(3):
            for a in (0, 1):
                for b in (0, 1):
                    assert torch.equal(fine[:, 1 + (2 * i + a) * 6 + 2 * j + b], coarse[:, 1 + i * 3 + j])


def test_fine_targets_of_a_token_tile_its_own_region_of_the_full_image():
    model = tiny(7, img_size=96)
    p, (h, w) = model.patch_size, model.grid_size
    images = torch.randn(2, 7, 96, 96)
    coarse_target = patchify(model.downscale(images), p)
    fine_target = patchify(images, p)
    owner = duplicate_tokens(torch.arange(h * w)[None], (h, w), k=4)[0]
    for i in range(h):
        for j in range(w):
            region = images[:, :, 2 * p * i : 2 * p * (i + 1), 2 * p * j : 2 * p * (j + 1)]
            tiled = unpatchify(fine_target[:, owner == i * w + j], p, grid_size=(2, 2))
            assert torch.equal(tiled, region)
            # ... and it is the same field of view as the coarse patch the token encodes.
            coarse_patch = unpatchify(coarse_target[:, i * w + j][:, None], p)
            assert torch.allclose(F.avg_pool2d(region, 2), coarse_patch, atol=1e-6)


def test_fine_mask_is_the_coarse_mask_duplicated():
    model = tiny(1, img_size=96)
    _, mask, _ = model.forward_encoder(torch.randn(4, 1, 48, 48), 0.75)
    fine = model.fine_mask(mask)
    assert fine.shape == (4, 36) and fine.sum() == 4 * mask.sum()
    coarse_img = unpatchify(mask[..., None].expand(-1, -1, 256), 16)
    fine_img = unpatchify(fine[..., None].expand(-1, -1, 256), 16)
    assert torch.equal(fine_img, F.interpolate(coarse_img, scale_factor=2, mode="nearest"))


def test_each_scale_loss_is_the_masked_mse_at_that_scale():
    torch.manual_seed(0)
    model = tiny(1, norm_pix_loss=False)
    images = torch.randn(2, 1, 64, 64)
    inputs = model.downscale(images)
    latent, mask, ids_restore = model.forward_encoder(inputs, 0.5)
    pred_coarse, pred_fine = model.forward_decoder(latent, ids_restore)
    loss_coarse, loss_fine = model.forward_loss(inputs, images, pred_coarse, pred_fine, mask)
    fine_mask = duplicate_tokens(mask, model.grid_size)
    expected_coarse = ((pred_coarse - patchify(inputs, 16)) ** 2).mean(-1)[mask.bool()].mean()
    expected_fine = ((pred_fine - patchify(images, 16)) ** 2).mean(-1)[fine_mask.bool()].mean()
    assert torch.allclose(loss_coarse, expected_coarse) and torch.allclose(loss_fine, expected_fine)


def test_reconstruct_returns_both_scales():
    model = tiny(7, img_size=64)
    images = torch.randn(2, 7, 64, 64)
    pictures = model.reconstruct(images, mask_seed=0)
    assert list(pictures) == [
        "image", "mask", "masked", "pred", "pred+visible",
        "fine image", "fine mask", "fine masked", "fine pred", "fine pred+visible",
    ]
    assert pictures["pred"].shape == (2, 7, 32, 32) and pictures["mask"].shape == (2, 1, 32, 32)
    assert pictures["fine pred"].shape == (2, 7, 64, 64) and pictures["fine mask"].shape == (2, 1, 64, 64)
    assert torch.equal(pictures["fine image"], images)
    assert torch.equal(pictures["fine mask"], F.interpolate(pictures["mask"], scale_factor=2, mode="nearest"))


def test_image_size_must_split_into_patches_at_both_scales():
    with pytest.raises(ValueError):
        MIRAM(img_size=48, in_chans=1, patch_size=16)


def test_batch_images_must_have_the_built_size():
    with pytest.raises(ValueError, match="64x64"):
        tiny(1, img_size=64)({"image": torch.randn(1, 1, 32, 32)})
