import pytest
import torch
from timm.optim import Lars, create_optimizer_v2
from torch import nn

from trainer.losses.vicreg import VICRegLoss
from trainer.methods.catalog import METHODS
from trainer.methods.vicreg import VICReg


def tiny(in_chans=1, img_size=64, **options) -> VICReg:
    return METHODS["vicreg_resnet18_tiny"](img_size=img_size, in_chans=in_chans, **options)


def test_loss_is_vicreg_on_the_two_expanded_views():
    torch.manual_seed(0)
    model = tiny(in_chans=3).train()
    images = torch.randn(4, 3, 64, 64)
    out = model({"image": images}, generator=torch.Generator().manual_seed(7))
    assert set(out) == {"loss", "loss_inv", "loss_var", "loss_cov"} and all(v.ndim == 0 for v in out.values())
    generator = torch.Generator().manual_seed(7)
    views = [view(images, generator) for view in model.views]
    expected = VICRegLoss()(model.embed(views[0]), model.embed(views[1]))
    assert torch.allclose(out["loss"], expected)
    weighted = 25 * out["loss_inv"] + 25 * out["loss_var"] + out["loss_cov"]
    assert out["loss"].item() == pytest.approx(weighted.item(), rel=1e-5)


def test_views_differ_and_blur_is_asymmetric_as_in_vicreg():
    model = tiny()
    assert (model.views[0].blur, model.views[1].blur) == (1.0, 0.1)
    images = torch.randn(4, 1, 64, 64)
    v1, v2 = (view(images) for view in model.views)
    assert v1.shape == v2.shape == images.shape and not torch.allclose(v1, v2)


def test_lars_from_timm_trains_the_model_for_three_steps():
    torch.manual_seed(1)
    model = tiny().train()
    optimizer = create_optimizer_v2(model, "lars", lr=0.5, weight_decay=1e-6, momentum=0.9)
    assert isinstance(optimizer, Lars)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    # Biases and norms get no weight decay and, in timm's Lars, no trust-ratio scaling (VICReg's exclusion).
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 1e-6]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images = torch.randn(4, 1, 64, 64)
    for _ in range(3):
        loss = model({"image": images})["loss"]
        assert torch.isfinite(loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "encoder.conv1.weight" in changed and "expander.0.weight" in changed


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


def test_base_variant_has_vicregs_8192_expander():
    with torch.device("meta"):  # shapes only, no weights to initialise
        model = METHODS["vicreg_resnet18"](img_size=224, in_chans=1)
    linears = [m for m in model.expander if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 8192), (8192, 8192), (8192, 8192)]
    assert [type(m) for m in model.expander][-1] is nn.Linear  # no BatchNorm or ReLU after the last layer
    assert model.encoder.conv1.in_channels == 1 and model.views[0].scale == (0.08, 1.0)
