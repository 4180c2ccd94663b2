"""SimSiam: the paper's heads, the symmetric loss of the two views, stop-gradient, and it learns."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.methods.catalog import METHODS
from trainer.methods.simsiam import SimSiam


def tiny(in_chans=1, img_size=32, **options) -> SimSiam:
    torch.manual_seed(0)
    return METHODS["simsiam_resnet18_tiny"](img_size=img_size, in_chans=in_chans, **options)


def grads(module: nn.Module) -> list[bool]:
    return [p.grad is not None for p in module.parameters()]


def test_paper_heads():
    model = METHODS["simsiam_resnet18"](img_size=224, in_chans=1)
    linears = [m for m in model.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 2048), (2048, 2048), (2048, 2048)]
    norms = [m for m in model.projector if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 3 and isinstance(model.projector[-1], nn.BatchNorm1d) and not model.projector[-1].affine
    linears = [m for m in model.predictor if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 512), (512, 2048)]
    assert isinstance(model.predictor[-1], nn.Linear) and model.predictor[-1].bias is not None  # no BN, no ReLU at the end
    assert model.views.size == 224 and model.views.scale == (0.2, 1.0)


def test_loss_is_the_symmetric_negative_cosine_of_each_prediction_and_the_other_projection():
    model = tiny(in_chans=3)
    outputs = []
    model.projector.register_forward_hook(lambda m, args, out: outputs.append(("z", out.detach())))
    model.predictor.register_forward_hook(lambda m, args, out: outputs.append(("p", out.detach())))
    out = model({"image": torch.randn(6, 3, 32, 32)}, generator=torch.Generator().manual_seed(0))
    assert [kind for kind, _ in outputs] == ["z", "p", "z", "p"]
    (_, z1), (_, p1), (_, z2), (_, p2) = outputs

    def d(p, z):  # SimSiam eq. 1 per sample, averaged
        return -sum(float(a @ b / (a.norm() * b.norm())) for a, b in zip(p, z)) / len(p)

    assert float(out["loss"].detach()) == pytest.approx(0.5 * d(p1, z2) + 0.5 * d(p2, z1), abs=1e-5)
    assert set(out) == {"loss"}


def test_gradients_reach_the_encoder_only_through_the_predictor():
    model = tiny()
    batch = {"image": torch.randn(4, 1, 32, 32)}
    model(batch, generator=torch.Generator().manual_seed(1))["loss"].backward()
    assert all(grads(model.encoder)) and all(grads(model.projector))
    model.zero_grad(set_to_none=True)
    # cut the predictor's input off the graph: with the targets z detached, nothing is left
    model.predictor.register_forward_pre_hook(lambda m, args: (args[0].detach(),))
    model(batch, generator=torch.Generator().manual_seed(1))["loss"].backward()
    assert not any(grads(model.encoder)) and not any(grads(model.projector))
    assert all(grads(model.predictor))


def test_overfits_one_batch():
    model = tiny()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = {"image": torch.randn(8, 1, 32, 32)}
    history = []
    for _ in range(25):
        loss = model(batch, generator=torch.Generator().manual_seed(0))["loss"]  # the same views every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    assert -1.0 <= min(history) and max(history) <= 1.0
    assert sum(history[-5:]) / 5 < sum(history[:5]) / 5 - 0.4
