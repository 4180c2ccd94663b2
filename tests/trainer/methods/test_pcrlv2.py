"""PCRLv2 (paper 003): no skip connection, five levels, one level per step, restoration of the
uncorrupted global views (eq. 4), comparison with stop-gradient (eq. 9), local views against both
global views (eq. 10)."""

from __future__ import annotations

import pytest
import torch

from trainer.methods.catalog import METHODS
from trainer.methods.pcrlv2 import PCRLv2


def tiny(in_chans=1, img_size=32, **options) -> PCRLv2:
    """The registry's tiny PCRLv2; at 32 px its levels are 2, 4, 8, 16 and 32 px wide."""
    torch.manual_seed(0)
    return METHODS["pcrlv2_resnet18_tiny"](img_size=img_size, in_chans=in_chans, **options)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grads(module: torch.nn.Module) -> list[bool]:
    return [p.grad is not None for p in module.parameters()]


def test_decoder_sees_only_the_deepest_encoder_stage():
    model = tiny(img_size=64).eval()
    images = torch.randn(2, 1, 64, 64)
    encoder, seen = model.encoder, {}
    record = encoder.layer4.register_forward_hook(lambda m, i, out: seen.setdefault("bottleneck", out))
    clean = model.decoder(model.encoder(images)[-1])
    record.remove()

    def perturb(m, i, out):
        return out + 3.0 * torch.randn_like(out)

    for stage in ("conv1", "maxpool", "layer1", "layer2", "layer3"):
        hook = getattr(encoder, stage).register_forward_hook(perturb)
        changed = model.decoder(model.encoder(images)[-1])  # the perturbation is real ...
        assert not torch.allclose(changed[-1], clean[-1])
        pin = encoder.layer4.register_forward_hook(lambda m, i, out: seen["bottleneck"])
        pinned = model.decoder(model.encoder(images)[-1])  # ... and reaches the decoder only through layer4
        pin.remove()
        hook.remove()
        assert all(torch.equal(a, b) for a, b in zip(pinned, clean)), stage
    hook = encoder.layer4.register_forward_hook(perturb)
    deepest = model.decoder(model.encoder(images)[-1])
    hook.remove()
    assert not any(torch.allclose(a, b) for a, b in zip(deepest, clean))


def test_five_levels_from_stride_16_to_full_resolution():
    model = tiny(in_chans=3, img_size=64).eval()
    images = torch.randn(2, 3, 64, 64)
    widths = (32, 16, 16, 8, 8)
    for level, (side, width) in enumerate(zip((4, 8, 16, 32, 64), widths), start=1):
        features = model.features(images, level)
        assert features.shape == (2, width, side, side)
        assert model.restoration_heads[level - 1](features).shape == (2, 3, side, side)
        assert model.restore(features, level, (64, 64)).shape == (2, 3, 64, 64)
        v, p = model.comparison_heads[level - 1](features)
        assert v.shape == p.shape == (2, width)
    assert model.num_levels == 5


def test_one_level_per_step_and_every_parameter_over_the_five():
    model = tiny()
    batch = {"image": torch.randn(4, 1, 32, 32)}
    reached = set()
    for level in range(1, 6):
        model.zero_grad(set_to_none=True)
        model(batch, level=level, generator=seeded(level))["loss"].backward()
        for i in range(5):
            used = i == level - 1
            assert all(g == used for g in grads(model.restoration_heads[i])), (level, i)
            assert all(g == used for g in grads(model.comparison_heads[i])), (level, i)
            assert all(g == (i < level) for g in grads(model.decoder.levels[i])), (level, i)
        assert all(grads(model.encoder))
        reached |= {n for n, p in model.named_parameters() if p.grad is not None}
    assert reached == {n for n, _ in model.named_parameters()}
    assert PCRLv2.uses_every_parameter is False


def test_out_of_training_the_loss_is_the_mean_over_every_level_and_draws_none():
    """A validation pass scores every level on the same views, so two passes differ only by the
    model; training's rounds of levels go on where they were."""
    model, twin = tiny(level_seed=3).eval(), tiny(level_seed=3)
    batch = {"image": torch.randn(4, 1, 32, 32)}
    with torch.no_grad():
        out = model(batch, generator=seeded(1))
        per_level = [model(batch, level=level, generator=seeded(1)) for level in range(1, 6)]
        assert torch.equal(model(batch, generator=seeded(1))["loss"], out["loss"])
    for name in ("loss", "loss_rec", "loss_cmp", "loss_local"):
        torch.testing.assert_close(out[name], sum(t[name] for t in per_level) / 5)
    assert len({round(t["loss"].item(), 6) for t in per_level}) == 5  # the levels do differ
    assert [model.next_level() for _ in range(10)] == [twin.next_level() for _ in range(10)]


def test_levels_come_in_shuffled_rounds_and_alike_for_equal_seeds():
    a, b, c = tiny(level_seed=3), tiny(level_seed=3), tiny(level_seed=4)
    drawn = [a.next_level() for _ in range(15)]
    for start in (0, 5, 10):
        assert sorted(drawn[start:start + 5]) == [1, 2, 3, 4, 5]
    assert drawn == [b.next_level() for _ in range(15)]
    assert drawn != [c.next_level() for _ in range(15)]
    # forward without `level` trains the next one drawn
    expected = a.next_level()
    b({"image": torch.randn(4, 1, 32, 32)})["loss"].backward()
    assert [all(grads(h)) for h in b.restoration_heads] == [i == expected - 1 for i in range(5)]
    with pytest.raises(ValueError, match="level"):
        a({"image": torch.randn(4, 1, 32, 32)}, level=6)


def test_restoration_targets_are_the_uncorrupted_global_views():
    model = tiny(in_chans=3, img_size=64)
    images = torch.randn(2, 3, 64, 64)
    to_loss, to_encoder = [], []
    model.restoration_loss.register_forward_hook(lambda m, args, out: to_loss.append((*args, out)))
    model.encoder.register_forward_pre_hook(lambda m, args: to_encoder.append(args[0]))
    out = model({"image": images}, level=2, generator=seeded(0))
    views = model.multi_crop(images, seeded(0))  # the same draws, made again
    assert len(to_loss) == 2
    for (pred, target, mse), clean, corrupted, seen in zip(to_loss, views.targets, views.inputs, to_encoder):
        assert torch.equal(target, clean)  # the target is x_m ...
        assert torch.equal(seen, corrupted)  # ... the network sees x'_m
        assert (corrupted - clean).abs().amax() > 0.1
        assert pred.shape == clean.shape == (2, 3, 64, 64)
        assert torch.allclose(mse, ((pred - clean) ** 2).mean())
    assert torch.allclose(out["loss_rec"], to_loss[0][2] + to_loss[1][2])  # eq. 4: both views
    assert to_encoder[2].shape == (6 * 2, 3, 32, 32)  # the local views, at local_size, never restored


def paper_cos(a, b):
    """cos of eq. 7 per sample, averaged over the batch."""
    return sum(float(torch.dot(x, y) / (x.norm() * y.norm())) for x, y in zip(a, b)) / len(a)


def paper_comparison(v, p, v_s, p_s):
    """Eq. 9 at the chosen level: -1/2 [cos(sg(v), f_P(v^s)) + cos(f_P(v), sg(v^s))]."""
    return -0.5 * (paper_cos(v, p_s) + paper_cos(p, v_s))


@pytest.mark.parametrize("num_local_views", [6, 2])
def test_local_views_are_compared_with_both_global_views(num_local_views):
    model = tiny(num_local_views=num_local_views, local_weight=0.5)
    heads, cosines = [], []
    for head in model.comparison_heads:
        head.register_forward_hook(lambda m, args, out: heads.append([t.detach() for t in out]))
    model.comparison_loss.register_forward_hook(lambda m, args, out: cosines.append(out))
    out = model({"image": torch.randn(3, 1, 32, 32)}, level=4, generator=seeded(1))
    assert len(cosines) == 2 + 2 * 2 * num_local_views  # eq. 10: L^C(g1, g2) and L^C(l_k, g_m), two cosines each
    (v1, p1), (v2, p2), (v_local, p_local) = heads
    assert v_local.shape == (num_local_views * 3, 8)
    out = {k: v.detach() for k, v in out.items()}
    assert float(out["loss_cmp"]) == pytest.approx(paper_comparison(v1, p1, v2, p2), abs=1e-5)
    local = 0.0
    for k in range(num_local_views):
        rows = slice(3 * k, 3 * (k + 1))  # local view k of each image
        for v_g, p_g in ((v1, p1), (v2, p2)):
            local += paper_comparison(v_local[rows], p_local[rows], v_g, p_g)
    assert float(out["loss_local"]) == pytest.approx(local, abs=1e-5)
    assert torch.allclose(out["loss"], out["loss_rec"] + out["loss_cmp"] + 0.5 * out["loss_local"])


def test_comparison_reaches_the_network_only_through_the_predictor():
    model = tiny()
    batch = {"image": torch.randn(4, 1, 32, 32)}
    out = model(batch, level=3, generator=seeded(2))
    (out["loss_cmp"] + out["loss_local"]).backward()
    assert all(grads(model.encoder))
    model.zero_grad(set_to_none=True)
    # cut the predictor's input off the graph: the stop-gradient on v leaves no other path
    model.comparison_heads[2].predictor.register_forward_pre_hook(lambda m, args: (args[0].detach(),))
    out = model(batch, level=3, generator=seeded(2))
    (out["loss_cmp"] + out["loss_local"]).backward()
    assert not any(grads(model.encoder)) and not any(grads(model.decoder))
    assert all(grads(model.comparison_heads[2].predictor))


def test_overfits_one_batch():
    model = tiny(num_local_views=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = {"image": torch.randn(4, 1, 32, 32)}
    history = []
    for _ in range(25):
        terms = model(batch, level=5, generator=seeded(0))  # the same views every step
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
    assert history[-1]["loss"] < history[0]["loss"] - 1.0
    assert history[-1]["loss_rec"] < 0.8 * history[0]["loss_rec"]


def test_reconstruct_returns_picture_columns():
    model = tiny(in_chans=7).eval()
    images = torch.randn(2, 7, 32, 32)
    pictures = model.reconstruct(images, seed=3)
    assert list(pictures) == ["global_view", "corrupted", "restored"]
    assert all(p.shape == (2, 7, 32, 32) for p in pictures.values())
    assert not torch.allclose(pictures["global_view"], pictures["corrupted"])
    assert torch.equal(model.reconstruct(images, seed=3)["corrupted"], pictures["corrupted"])


def test_paper_defaults():
    model = METHODS["pcrlv2_resnet18"](img_size=224, in_chans=1)
    assert model.encoder.feature_info.channels()[-1] == 512 and model.encoder.feature_info.reduction()[-1] == 32
    assert [lvl.convs[1][0].out_channels for lvl in model.decoder.levels] == [256, 128, 64, 32, 16]
    assert [h[-1].out_channels for h in model.restoration_heads] == [1] * 5
    assert [tuple(h.predictor[0].weight.shape) for h in model.comparison_heads][0] == (512, 256)
    assert (model.num_local_views, model.local_size, model.global_scale, model.local_scale) == (6, 224, (0.3, 1.0), (0.05, 0.3))
    with pytest.raises(ValueError, match="stride"):
        METHODS["pcrlv2_resnet18"](img_size=100, in_chans=1)

