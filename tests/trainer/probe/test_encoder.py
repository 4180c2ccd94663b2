"""Loading the frozen encoder: an export with its recipe, or a run exported on the fly."""

from __future__ import annotations

import pytest
import torch

from trainer.probe.encoder import ProbeError, load_encoder, random_init


def test_an_export_and_its_run_load_the_same_frozen_encoder(exported_encoder):
    exported = load_encoder(exported_encoder, torch.device("cpu"))
    from_run = load_encoder(exported_encoder.parent / "tiny-cpu", torch.device("cpu"))
    assert (exported.in_chans, exported.img_size) == (from_run.in_chans, from_run.img_size) == (1, 32)
    assert not exported.model.training and not any(p.requires_grad for p in exported.model.parameters())
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported.model(images), from_run.model(images))
    assert exported.feature_dim == exported.model(images).shape[1]


def test_unusable_encoders_are_named(exported_encoder, tmp_path):
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes(exported_encoder.read_bytes())  # without its recipe
    with pytest.raises(ProbeError, match=r"alone\.json: does not exist"):
        load_encoder(alone, torch.device("cpu"))
    (tmp_path / "foreign.json").write_text('{"weights": "elsewhere"}')
    (tmp_path / "foreign.safetensors").write_bytes(exported_encoder.read_bytes())
    with pytest.raises(ProbeError, match="not a medshards encoder recipe"):
        load_encoder(tmp_path / "foreign.safetensors", torch.device("cpu"))
    with pytest.raises(ProbeError, match="does not exist"):
        load_encoder(tmp_path / "no-run", torch.device("cpu"))
    with pytest.raises(ProbeError, match="--best picks a run's checkpoint, and this is one exported encoder"):
        load_encoder(exported_encoder, torch.device("cpu"), best=True)
    with pytest.raises(ProbeError, match=r"none of its 1 checkpoint\(s\) has a val_loss"):  # a run without passes
        load_encoder(exported_encoder.parent / "tiny-cpu", torch.device("cpu"), best=True)


def test_the_random_init_baseline_is_the_same_architecture_without_the_pretrained_weights(exported_encoder):
    pretrained = load_encoder(exported_encoder, torch.device("cpu"))
    a, b, c = random_init(pretrained, seed=0), random_init(pretrained, seed=0), random_init(pretrained, seed=1)
    assert type(a.model) is type(pretrained.model) and a.feature_dim == pretrained.feature_dim
    assert not any(p.requires_grad for p in a.model.parameters()) and not a.model.training
    images = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a.model(images), b.model(images))  # seeded
        assert not torch.allclose(a.model(images), c.model(images))
        assert not torch.allclose(a.model(images), pretrained.model(images))
