"""TOWER (paper 001): a U-Net restores x from x'' = Bezier(x) x Mask (eq. 5), and InfoNCE pulls the
pooled, projected encoder features of x and x'' together (eq. 4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.losses.info_nce import InfoNCELoss
from trainer.methods.catalog import METHODS
from trainer.methods.tower import TOWER


def tiny(in_chans=1, img_size=64, **options) -> TOWER:
    torch.manual_seed(0)
    return METHODS["tower_unet_resnet18_tiny"](img_size=img_size, in_chans=in_chans, **options)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fundus_like(n: int, channels: int = 3, size: int = 64) -> torch.Tensor:
    """Standardised noise with a bright disc (an optic disc) at a different place in each image."""
    rows = torch.arange(size, dtype=torch.float32)[:, None]
    cols = torch.arange(size, dtype=torch.float32)[None, :]
    images = torch.randn(n, channels, size, size, generator=seeded(0)) * 0.3
    for i in range(n):
        r, c = 12 + 9 * i, 50 - 7 * i
        images[i] += 3 * torch.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 18)
    return images


@pytest.mark.parametrize("in_chans", [1, 3, 7])
def test_forward_backward_reaches_every_parameter(in_chans):
    model = tiny(in_chans)
    out = model({"image": torch.randn(4, in_chans, 64, 64)})
    assert set(out) == {"loss", "loss_nce", "loss_rec"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    assert torch.allclose(out["loss"], out["loss_nce"] + out["loss_rec"])  # footnote 9: L_Con + L_Gen
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(p.grad.abs().sum() > 0 for p in [*model.decoder.parameters(), *model.projector.parameters()])


def test_info_nce_on_pooled_encoder_features_through_the_projector():
    model = tiny(3)
    images = fundus_like(4)
    seen = []
    model.contrastive_loss.register_forward_hook(lambda m, args, out: seen.append((*args, out)))
    out = model({"image": images}, generator=seeded(1))
    views, _ = model.proxy_views(images, seeded(1))  # the same draws, made again
    anchors, positives, loss = seen[0]
    # eq. 4 anchors are the images, positives their views: z = h(GAP(deepest encoder map))
    assert torch.allclose(anchors, model.projector(model.encoder(images)[-1].mean(dim=(2, 3))), atol=1e-5)
    assert torch.allclose(positives, model.projector(model.encoder(views)[-1].mean(dim=(2, 3))), atol=1e-5)
    assert anchors.shape == (4, 32)
    assert model.projector[0].in_features == model.encoder.feature_info.channels()[-1]  # pooled, not flattened
    assert torch.allclose(out["loss_nce"], InfoNCELoss(0.1)(anchors, positives))


def test_the_decoder_restores_the_original_from_the_proxy_view():
    model = tiny(3)
    images = fundus_like(4)
    to_encoder = []
    model.encoder.register_forward_pre_hook(lambda m, args: to_encoder.append(args[0]))
    out = model({"image": images}, generator=seeded(2))
    views, masks = model.proxy_views(images, seeded(2))
    assert torch.equal(to_encoder[0], views) and torch.equal(to_encoder[1], images)
    restored = model.decoder(model.encoder(views))
    assert restored.shape == images.shape
    assert torch.allclose(out["loss_rec"], F.mse_loss(restored, images), atol=1e-5)  # eq. 5, averaged


@pytest.mark.parametrize("anatomy", ["fundus", "xray", "other"])
def test_proxy_views_are_a_monotone_translation_then_a_mask(anatomy):
    model = tiny(3, anatomy=anatomy)
    images = fundus_like(6)
    views, masks = model.proxy_views(images, seeded(3))
    assert views.shape == images.shape and masks.shape == (6, 1, 64, 64)
    low = images.amin(dim=(1, 2, 3))
    high = images.amax(dim=(1, 2, 3))
    directions = set()
    for x, v, m, lo, hi in zip(images, views, masks[:, 0], low, high):
        assert (v[:, m] == lo).all()  # x'' = x' x Mask: removed pixels are 0 in [0, 1], the image's minimum
        assert (v >= lo - 1e-5).all() and (v <= hi + 1e-5).all()
        kept_x, kept_v = x[:, ~m].flatten(), v[:, ~m].flatten()
        order = kept_x.argsort()
        steps = kept_v[order].diff()
        increasing = bool((steps >= -1e-5).all())
        assert increasing or (steps <= 1e-5).all()  # one monotone map of intensities per image
        directions.add(increasing)
        assert (kept_v - kept_x).abs().max() > 0.05 * (hi - lo)  # and not the identity
    assert directions == {True, False}  # increasing and decreasing curves both occur (p = 1/2 each)


def test_the_anatomy_option_picks_the_mask():
    images = fundus_like(4)
    rays = tiny(3, anatomy="fundus").anatomy_masks(images, seeded(4))[:, 0]
    for i, mask in enumerate(rays):
        assert mask[12 + 9 * i, 50 - 7 * i]  # rays start at the disc, the brightest point
    stripes = tiny(3, anatomy="xray", mask_ratio=0.25).anatomy_masks(images, seeded(4))[:, 0]
    assert torch.equal(stripes, stripes[:, :, :1].expand_as(stripes))  # full-width rows
    assert torch.allclose(stripes.float().mean(dim=(1, 2)), torch.full((4,), 0.25))
    blocks = tiny(3, anatomy="other", block_grid=8).anatomy_masks(images, seeded(4))[:, 0]
    cells = blocks.reshape(4, 8, 8, 8, 8)
    assert (cells.all(dim=(2, 4)) | ~cells.any(dim=(2, 4))).all()
    assert torch.allclose(blocks.float().mean(dim=(1, 2)), torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="anatomy"):
        tiny(anatomy="ct")


def test_overfits_one_batch():
    model = tiny(1, img_size=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = {"image": fundus_like(4, channels=1, size=32)}
    history = []
    for _ in range(25):
        terms = model(batch, generator=seeded(5))  # the same views every step
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["loss_rec"] < 0.7 * history[0]["loss_rec"]
    assert history[-1]["loss_nce"] < history[0]["loss_nce"]


def test_reconstruct_returns_picture_columns():
    model = tiny(in_chans=7).eval()
    images = torch.randn(2, 7, 64, 64)
    pictures = model.reconstruct(images, seed=3)
    assert list(pictures) == ["image", "view", "restored"]
    assert all(p.shape == (2, 7, 64, 64) for p in pictures.values())
    assert torch.equal(pictures["image"], images) and not torch.allclose(pictures["view"], images)
    assert torch.equal(model.reconstruct(images, seed=3)["view"], pictures["view"])


def test_paper_defaults_and_what_fine_tuning_loads():
    model = METHODS["tower_unet_resnet50"](img_size=224, in_chans=3)
    assert model.encoder.feature_info.channels() == [64, 256, 512, 1024, 2048]
    assert [b.convs[1][0].out_channels for b in model.decoder.blocks] == [256, 128, 64, 32, 16]
    assert model.decoder.head.out_channels == 3
    assert [m.out_features for m in model.projector if isinstance(m, torch.nn.Linear)] == [2048, 128]
    assert model.contrastive_loss.temperature == 0.1
    assert (model.anatomy, model.num_rays, model.mask_ratio) == ("fundus", 80, 0.5)
    prefixes = {key.split(".")[0] for key in model.state_dict()}
    assert prefixes == {"encoder", "decoder", "projector"}
    with pytest.raises(ValueError, match="stride"):
        METHODS["tower_unet_resnet50"](img_size=100, in_chans=1)
