"""trainer/export_encoder.py as a user runs it after pretraining: from a run folder, a checkpoint
folder or a bucket, to a .safetensors that timm loads, and a recipe that says how."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from shards.card import read_card
from trainer.export_encoder import main as export_main
from trainer.layers.timm_export import create_encoder
from trainer.registry import build_method

PROJECT = Path(__file__).resolve().parents[2]
TINY = PROJECT / "trainer" / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def pretrained_run(lesion_shards, tmp_path_factory) -> Path:
    """A one-process tiny MIRAM run of two epochs (a checkpoint after each)."""
    from trainer.pretrain import main as pretrain_main

    base = tmp_path_factory.mktemp("export")
    args = ["--config", str(TINY), f"data.sources=[{{root: {lesion_shards}}}]", f"run.storage_path={base}",
            "run.use_ray=false", "optim.epochs=2", "data.batch_size=4", "run.max_steps_per_epoch=3"]
    assert pretrain_main(args) == 0
    return base / "tiny-cpu"


def test_export_from_a_run_folder_loads_into_timm_as_the_pretrained_encoder(pretrained_run, tmp_path, capsys):
    out = tmp_path / "enc" / "miram.safetensors"
    assert export_main([str(pretrained_run), "--out", str(out)]) == 0
    recipe = json.loads(out.with_suffix(".json").read_text())
    newest = sorted((pretrained_run / "checkpoints").glob("epoch_*"))[-1] / "checkpoint.pt"
    state = torch.load(newest, map_location="cpu", weights_only=True)
    assert recipe["checkpoint"] == str(newest) and (recipe["epoch"], recipe["step"]) == (state["epoch"], state["step"])
    assert recipe["method"] == "miram_vit_tiny_patch16" and recipe["timm_kwargs"]["img_size"] == 32  # MIRAM: half of 64
    card = read_card(Path(state["config"]["data"]["sources"][0]["root"]))
    assert recipe["pretrained_sets"] == [{"root": str(Path(state["config"]["data"]["sources"][0]["root"]).resolve()),
                                          "split": "train"}]
    assert [(s["mean"], s["std"]) for s in recipe["normalisation"]] == [(card["pixel_stats"]["mean"],
                                                                        card["pixel_stats"]["std"])]

    encoder = timm.create_model(recipe["timm_model"], pretrained=False, **recipe["timm_kwargs"]).eval()
    encoder.load_state_dict(load_file(out), strict=True)
    method = build_method(recipe["method"], in_chans=1, img_size=64, **recipe["method_options"]).eval()
    method.load_state_dict(state["model"])
    images = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        ours, _ = method.encoder.encode_visible(method.encoder.patch_tokens(images))
        torch.testing.assert_close(encoder.forward_features(images), ours, rtol=1e-4, atol=1e-5)
    assert str(out) in capsys.readouterr().out


def test_export_from_a_checkpoint_in_a_bucket_equals_the_local_export(pretrained_run, s3_endpoint, tmp_path):
    folder = sorted((pretrained_run / "checkpoints").glob("epoch_*"))[0]
    uri = s3_endpoint.upload(folder, "runs/tiny-cpu/checkpoint_000000")
    assert export_main([uri, "--out", str(tmp_path / "s3.safetensors")]) == 0
    assert export_main([str(folder), "--out", str(tmp_path / "local.safetensors")]) == 0
    assert (tmp_path / "s3.safetensors").read_bytes() == (tmp_path / "local.safetensors").read_bytes()


def test_unusable_locations_are_named_and_nothing_is_written(tmp_path, capsys):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    broken = tmp_path / "broken" / "checkpoint.pt"
    broken.parent.mkdir()
    broken.write_bytes(b"PK\x03\x04 not really a checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    for location, reason in [(empty, "holds no checkpoint.pt"), (tmp_path / "nowhere", "does not exist"),
                             (broken.parent, "cannot be read as a checkpoint"), (foreign, "not a medshards checkpoint")]:
        assert export_main([str(location), "--out", str(tmp_path / "x.safetensors")]) == 2
        err = capsys.readouterr().err
        assert str(location) in err and reason in err, err
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "x.json").exists()


def test_an_unwritable_output_is_named(pretrained_run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert export_main([str(pretrained_run), "--out", str(blocker / "enc.safetensors")]) == 2
    assert f"cannot write {blocker / 'enc.safetensors'}" in capsys.readouterr().err


def test_mlvicx_exports_with_its_context_blocks_and_plain_timm_refuses_them(mlvicx_run, tmp_path):
    out = tmp_path / "mlvicx.safetensors"
    assert export_main([str(mlvicx_run), "--out", str(out)]) == 0
    recipe = json.loads(out.with_suffix(".json").read_text())
    assert recipe["timm_model"] == "resnet18" and recipe["context_blocks"]["after"] == ["act1", "layer1", "layer2",
                                                                                         "layer3", "layer4"]
    weights = load_file(out)
    encoder = create_encoder(recipe["timm_model"], recipe["timm_kwargs"], recipe["context_blocks"]).eval()
    encoder.load_state_dict(weights, strict=True)
    newest = sorted((mlvicx_run / "checkpoints").glob("epoch_*"))[-1] / "checkpoint.pt"
    state = torch.load(newest, map_location="cpu", weights_only=True)
    method = build_method(recipe["method"], in_chans=1, img_size=64, **recipe["method_options"]).eval()
    method.load_state_dict(state["model"])
    images = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        ours = method.encoder.forward_head(method.refined_maps(images)[-1])
        torch.testing.assert_close(encoder(images), ours, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        timm.create_model("resnet18", pretrained=False, **recipe["timm_kwargs"]).load_state_dict(weights, strict=True)
