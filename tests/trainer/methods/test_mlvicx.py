import pytest
import torch
from timm.optim import create_optimizer_v2
from torch import nn

from trainer.layers.context_bottleneck import ContextBottleneck
from trainer.methods.catalog import METHODS
from trainer.methods.mlvicx import MLVICX


def tiny(in_chans=1, img_size=64, **options) -> MLVICX:
    return METHODS["mlvicx_resnet18_tiny"](img_size=img_size, in_chans=in_chans, **options)


def test_each_stage_reads_the_refined_map_of_the_stage_before():
    torch.manual_seed(0)
    model = tiny().train()
    net = model.encoder
    raw, refined, read = {}, {}, {}
    hooks = []
    # What each level's backbone part outputs, what its block outputs, and what the next part reads.
    for k, module in enumerate([net.act1, net.layer1, net.layer2, net.layer3, net.layer4]):
        hooks.append(module.register_forward_hook(lambda m, i, o, k=k: raw.__setitem__(k, o)))
    for k, block in enumerate(model.context_blocks):
        hooks.append(block.register_forward_hook(lambda m, i, o, k=k: refined.__setitem__(k, o)))
    for k, module in enumerate([net.maxpool, net.layer2, net.layer3, net.layer4, net.global_pool]):
        hooks.append(module.register_forward_pre_hook(lambda m, i, k=k: read.__setitem__(k, i[0])))
    with torch.no_grad():
        model.embed(torch.randn(2, 1, 64, 64))
    for h in hooks:
        h.remove()
    for k in range(5):
        assert read[k] is refined[k], f"level {k + 1} does not read block {k}'s output"
        assert not torch.allclose(refined[k], raw[k]), f"block {k} left its map unchanged"
    assert [tuple(refined[k].shape[1:]) for k in range(5)] == [(64, 32, 32), (16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]


def test_the_stages_are_the_whole_timm_backbone():
    torch.manual_seed(1)
    model = tiny(in_chans=3).eval()
    model.context_blocks = nn.ModuleList(nn.Identity() for _ in model.context_blocks)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.refined_maps(images)[-1], model.encoder.forward_features(images))


def test_multilevel_embedding_reads_all_five_refined_maps():
    torch.manual_seed(2)
    model = tiny()
    refined, projected = {}, {}
    hooks = [block.register_forward_hook(lambda m, i, o, k=k: refined.__setitem__(k, o))
             for k, block in enumerate(model.context_blocks)]
    hooks += [conv.register_forward_pre_hook(lambda m, i, k=k: projected.__setitem__(k, i[0]))
              for k, conv in enumerate(model.level_projections)]
    with torch.no_grad():
        z, m = model.embed(torch.randn(3, 1, 64, 64))
    for h in hooks:
        h.remove()
    assert all(projected[k] is refined[k] for k in range(5))
    assert z.shape == m.shape == (3, 64)
    maps = [torch.randn(3, c, s, s) for c, s in zip((64, 16, 32, 64, 128), (32, 16, 8, 4, 2))]
    u = model.compound(maps)
    assert u.shape == (3, 5 * 8 * 2 * 2)  # 5 levels x 8 channels x 2 x 2 grid
    # The order the text describes: resize every map to the stride-4 grid (16 at 64), then project,
    # concatenate, pool to 2 x 2 and flatten.
    with torch.no_grad():
        resized = [torch.nn.functional.interpolate(y, size=(16, 16), mode="bilinear", align_corners=False) for y in maps]
        cat = torch.cat([conv(y) for conv, y in zip(model.level_projections, resized)], dim=1)
        pooled = cat.reshape(3, 40, 2, 8, 2, 8).mean(dim=(3, 5))
    assert torch.allclose(u, pooled.flatten(1), atol=1e-5)


def test_one_backward_reaches_every_parameter_including_the_multilevel_projections():
    torch.manual_seed(3)
    model = tiny(in_chans=7).train()
    out = model({"image": torch.randn(4, 7, 64, 64)})
    assert all(torch.is_tensor(v) and v.ndim == 0 for v in out.values())
    assert torch.isfinite(out["loss"])
    assert out["loss"].item() == pytest.approx((out["loss_global"] + out["loss_multilevel"]).item(), rel=1e-6)
    out["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    # Weights of the heads and blocks get a non-zero gradient (the expanders' last BatchNorm shifts cancel in
    # every term; timm zero-initialises each residual block's last BatchNorm, so the encoder's
    # residual convolutions start with a zero gradient).
    for n, p in model.named_parameters():
        if n.startswith(("level_projections", "context_blocks", "multilevel_expander", "global_expander")) and p.ndim > 1:
            assert p.grad.abs().sum() > 0, n


def test_every_module_exists_after_init_and_the_optimizer_trains_them_all():
    torch.manual_seed(4)
    model = tiny().train()
    names = [n for n, _ in model.named_parameters()]
    optimizer = create_optimizer_v2(model, "lars", lr=0.5, weight_decay=1e-5, momentum=0.9)  # before any forward
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model.parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images = torch.randn(4, 1, 64, 64)
    for _ in range(3):
        loss = model({"image": images})["loss"]
        assert torch.isfinite(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert [n for n, _ in model.named_parameters()] == names  # a forward creates nothing
    for n, p in model.named_parameters():
        if n.startswith(("level_projections", "context_blocks")):
            assert not torch.equal(p, before[n]), f"{n} did not train"


def test_loss_falls_when_fitting_one_batch():
    torch.manual_seed(5)
    model = tiny(img_size=32).train()
    images = torch.randn(8, 1, 32, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        # The same two views every step: one fixed objective to fit.
        loss = model({"image": images}, generator=torch.Generator().manual_seed(0))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_base_variant_follows_the_paper():
    with torch.device("meta"):  # shapes only, no weights to initialise
        model = METHODS["mlvicx_resnet18"](img_size=224, in_chans=1)
    assert model.encoder.conv1.in_channels == 1
    blocks = list(model.context_blocks)
    assert all(isinstance(b, ContextBottleneck) for b in blocks)
    assert [b.channel_conv.in_channels for b in blocks] == [64, 64, 128, 256, 512]
    assert model.level_size == 56
    for head, width in ((model.global_expander, 512), (model.multilevel_expander, 5 * 128 * 4 * 4)):
        linears = [m for m in head if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(width, 2048), (2048, 2048), (2048, 2048)]
        assert isinstance(head[-1], nn.BatchNorm1d) and head[-1].affine and linears[-1].bias is None
    assert model.views[0].scale == (0.08, 1.0) and (model.views[0].blur, model.views[1].blur) == (1.0, 0.1)
    assert (model.loss.sim_coeff, model.loss.std_coeff, model.loss.cov_coeff, model.loss.gamma) == (25.0, 25.0, 1.0, 1.0)


def test_context_reduction_gives_the_released_codes_bottleneck():
    model = tiny(context_reduction=2)
    convs = [m for m in model.context_blocks[0].channel_conv if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(64, 32), (32, 64)]


def test_a_backbone_without_resnet_levels_is_refused():
    with pytest.raises(ValueError, match="ResNet"):
        MLVICX(img_size=64, in_chans=1, encoder="efficientnet_b0")
