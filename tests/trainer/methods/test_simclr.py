"""SimCLR (Chen et al. 2020): NT-Xent on projected, pooled encoder features of two augmented views."""

from __future__ import annotations

import pytest
import torch

from trainer.losses.nt_xent import NTXentLoss
from trainer.methods.catalog import METHODS
from trainer.methods.simclr import SimCLR


def tiny(in_chans=1, img_size=64, **options) -> SimCLR:
    torch.manual_seed(0)
    return METHODS["simclr_resnet18_tiny"](img_size=img_size, in_chans=in_chans, **options)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("in_chans", [1, 3, 7])
def test_forward_backward_reaches_every_parameter(in_chans):
    model = tiny(in_chans)
    out = model({"image": torch.randn(4, in_chans, 64, 64)})
    assert set(out) == {"loss"} and out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(p.grad.abs().sum() > 0 for p in model.projector.parameters())


def test_nt_xent_on_pooled_encoder_features_through_the_projector():
    model = tiny(3)
    images = torch.randn(4, 3, 64, 64)
    seen, pooled = [], []
    model.loss.register_forward_hook(lambda m, args, out: seen.append((*args, out)))
    model.encoder.register_forward_hook(lambda m, args, out: pooled.append(out))
    out = model({"image": images}, generator=seeded(1))
    g = seeded(1)  # the same two views, drawn again
    v1, v2 = model.views(images, g), model.views(images, g)
    assert not torch.allclose(v1, v2)
    z1, z2, loss = seen[0]
    assert pooled[0].shape == (8, 128)  # the encoder's global-average-pooled feature of both views
    expected = model.projector(model.encoder(torch.cat([v1, v2])))  # one batch of 2N, as SimCLR
    assert torch.allclose(torch.cat([z1, z2]), expected, atol=1e-5)
    assert z1.shape == (4, 32)
    assert torch.allclose(out["loss"], NTXentLoss(0.1)(z1, z2))


def test_overfits_one_batch():
    model = tiny(1, img_size=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = {"image": torch.randn(8, 1, 32, 32, generator=seeded(2))}
    history = []
    for _ in range(25):
        loss = model(batch, generator=seeded(3))["loss"]  # the same views every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    assert history[-1] < 0.5 * history[0]


def test_simclr_defaults():
    model = METHODS["simclr_resnet18"](img_size=224, in_chans=1)
    assert model.encoder.num_features == 512
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 128)]  # one hidden layer
    assert isinstance(model.projector[-1], torch.nn.BatchNorm1d)
    assert model.loss.temperature == 0.1
    assert model.views.scale == (0.08, 1.0) and model.views.size == 224
