"""trainer/linear_probe.py as a user runs it after pretraining and export: every sample read
once, a multi-class and a multi-label task, label fractions by patient, clear refusals."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from trainer.layers.context_bottleneck import ContextBottleneck
from trainer.linear_probe import main
from trainer.probe.encoder import load_encoder

FAST = ["--epochs", "5", "--warmup-epochs", "1", "--no-progress"]


def probe(encoder, shards, tmp_path, name, *extra) -> dict:
    out = tmp_path / f"{name}.json"
    assert main([str(encoder), "--data", str(shards), *FAST, "--out", str(out), *extra]) == 0
    report = json.loads(out.read_text())
    report.pop("seconds")
    return report


def test_a_categorical_label_is_probed_on_every_sample_of_every_split(exported_encoder, lesion_shards, tmp_path, capsys):
    report = probe(exported_encoder, lesion_shards, tmp_path, "class4", "--label", "class4", "--crop-kinds", "lesion")
    rows = [r for r in pq.read_table(lesion_shards / "manifest.parquet").to_pylist() if r["crop_kind"] == "lesion"]
    per_split = Counter(r["split"] for r in rows)
    assert {s: report[s]["samples_read"] for s in ("train", "val", "test")} == per_split
    train = [r for r in rows if r["split"] == "train"]
    assert report["classes"] == sorted({r["labels"]["class4"] for r in train})
    assert report["train"]["samples"] == len(train) and report["train"]["patients"] == len({r["patient"] for r in train})
    test = report["test"]
    assert test["samples"] + test["left_out"]["unseen_value"] == per_split["test"]
    assert sum(c["samples"] for c in test["per_class"].values()) == test["samples"]
    assert 0 <= test["accuracy"] <= 1 and report["train"]["loss_last_epoch"] < report["train"]["loss_first_epoch"]
    assert report["val"]["patients_seen_in_pretraining"] == report["test"]["patients_seen_in_pretraining"] == 0
    assert f"report: {tmp_path / 'class4.json'}" in capsys.readouterr().out

    again = probe(exported_encoder, lesion_shards, tmp_path, "again", "--label", "class4", "--crop-kinds", "lesion")
    assert again == report  # deterministic
    from_run = probe(exported_encoder.parent / "tiny-cpu", lesion_shards, tmp_path, "run", "--label", "class4",
                     "--crop-kinds", "lesion")
    assert {k: v for k, v in from_run.items() if k != "encoder"} == {k: v for k, v in report.items() if k != "encoder"}
    every = probe(exported_encoder, lesion_shards, tmp_path, "every", "--label", "class4")  # random crops: no class4
    randoms = sum(1 for r in pq.read_table(lesion_shards / "manifest.parquet").to_pylist()
                  if r["split"] == "train" and r["crop_kind"] == "random")
    assert every["train"]["left_out"]["unlabelled"] == randoms > 0 and every["train"]["samples"] == len(train)


def test_the_random_init_baseline_is_probed_on_the_same_samples(exported_encoder, lesion_shards, tmp_path, capsys):
    report = probe(exported_encoder, lesion_shards, tmp_path, "baseline", "--label", "malignant", "--crop-kinds", "lesion",
                   "--random-init-baseline")
    baseline = report["random_init"]
    for split in ("train", "val", "test"):
        assert baseline[split]["samples_read"] == report[split]["samples_read"]
    assert baseline["train"]["samples"] == report["train"]["samples"]
    assert baseline["train"]["loss_first_epoch"] != report["train"]["loss_first_epoch"]  # other features
    assert "test, random-init encoder: AUC" in capsys.readouterr().out


def test_a_label_fraction_takes_that_share_of_the_training_patients(exported_encoder, lesion_shards, tmp_path):
    full = probe(exported_encoder, lesion_shards, tmp_path, "full", "--label", "pathology", "--eval-splits", "test")
    half = probe(exported_encoder, lesion_shards, tmp_path, "half", "--label", "pathology", "--eval-splits", "test",
                 "--label-fraction", "0.5", "--seed", "3")
    patients = full["train"]["patients_labelled"]
    assert half["train"]["patients"] == math.ceil(patients / 2) and half["train"]["samples"] < full["train"]["samples"]
    assert "val" not in half and half["test"]["samples_read"] == full["test"]["samples_read"]


@pytest.fixture(scope="module")
def nih_shards(tmp_path_factory) -> Path:
    """NIH ChestX-ray14-shaped shards: 14 boolean findings a sample, 1-channel like the encoder."""
    from ingest.pipeline import run_job
    from ingest.sample_data.nih_cxr14 import make_nih_sample
    from ingest.sources import nih_cxr14

    base = tmp_path_factory.mktemp("nih-probe")
    root = make_nih_sample(base / "download", patients=12, seed=3, image_size=128).root
    run_job(nih_cxr14.build_job(root=root, out=base / "shards", size=64, progress=False))
    return base / "shards"


def test_binary_findings_are_a_multilabel_task_with_a_mean_auc(exported_encoder, nih_shards, tmp_path):
    report = probe(exported_encoder, nih_shards, tmp_path, "findings", "--label", "all-binary")
    assert report["task"] == "multilabel" and len(report["labels"]) >= 14 and "no_finding" in report["labels"]
    test = report["test"]
    known = [m["auc"] for m in test["per_label"].values() if m["auc"] is not None]
    assert known and test["auc"] == pytest.approx(sum(known) / len(known))
    two = probe(exported_encoder, nih_shards, tmp_path, "two", "--label", "Effusion,no_finding")
    assert two["labels"] == ["Effusion", "no_finding"] and set(two["test"]["per_label"]) == {"Effusion", "no_finding"}


def test_unusable_inputs_are_named_and_nothing_is_written(exported_encoder, lesion_shards, tmp_path, capsys):
    out = tmp_path / "never.json"
    cases = [
        ([str(exported_encoder), "--data", str(lesion_shards), "--label", "nope"], "label nope not in this set's"),
        ([str(exported_encoder), "--data", str(lesion_shards), "--label", "class4", "--eval-splits", "train"],
         "includes the training split"),
        ([str(exported_encoder), "--data", str(tmp_path), "--label", "class4"], "no dataset card"),
        ([str(tmp_path / "nothing.safetensors"), "--data", str(lesion_shards), "--label", "class4"], "does not exist"),
        ([str(exported_encoder), "--data", str(lesion_shards), "--label", "class4", "--crop-kinds", "cell"], "no 'train' samples"),
        ([str(exported_encoder), "--data", str(lesion_shards), "--label", "class4", "--crop-kinds", "lesions"],
         "--crop-kinds lesions: each must be one of"),
    ]
    for args, reason in cases:
        assert main([*args, *FAST, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert reason in err, err
    assert not out.exists()


def test_a_bad_sample_stops_the_probe_by_name_or_is_skipped_and_counted(exported_encoder, lesion_shards,
                                                                         with_a_broken_png, tmp_path, capsys):
    shard, key = with_a_broken_png(lesion_shards, tmp_path / "shards")
    args = [str(exported_encoder), "--data", str(tmp_path / "shards"), "--label", "class4", *FAST]
    assert main([*args, "--out", str(tmp_path / "stop.json")]) == 1
    err = capsys.readouterr().err
    assert f"{shard}: sample {key}: PNG member does not decode" in err and "shards verify" in err
    with pytest.warns(UserWarning, match=rf"skipping a bad sample: .*{key}"):
        assert main([*args, "--bad-samples", "skip", "--out", str(tmp_path / "skip.json")]) == 0
    report = json.loads((tmp_path / "skip.json").read_text())
    assert report["train"]["skipped_samples"] == 1 and not (tmp_path / "stop.json").exists()


def test_a_shard_set_in_a_bucket_probes_as_it_does_on_disk(exported_encoder, lesion_shards, s3_endpoint, tmp_path):
    uri = s3_endpoint.upload(lesion_shards, "shards/cbis-probe")
    remote = probe(exported_encoder, uri, tmp_path, "s3", "--label", "pathology", "--crop-kinds", "lesion")
    local = probe(exported_encoder, lesion_shards, tmp_path, "local", "--label", "pathology", "--crop-kinds", "lesion")
    assert remote.pop("data") == uri and local.pop("data") == str(lesion_shards)
    assert remote == local


def test_an_mlvicx_run_is_probed_with_its_context_blocks(mlvicx_run, lesion_shards, tmp_path):
    """MLVICX's own evaluation (§IV-B) on its own encoder: the ResNet with the blocks in line,
    and a random-init baseline of that same architecture."""
    report = probe(mlvicx_run, lesion_shards, tmp_path, "mlvicx", "--label", "malignant", "--crop-kinds", "lesion",
                   "--random-init-baseline")
    assert report["method"] == "mlvicx_resnet18_tiny" and report["test"]["samples_read"] > 0
    frozen = load_encoder(mlvicx_run, torch.device("cpu"))
    assert isinstance(frozen.model.layer4[-1], ContextBottleneck) and frozen.feature_dim == 128  # quarter width
    assert report["train"]["loss_last_epoch"] < report["train"]["loss_first_epoch"]
    assert report["random_init"]["train"]["loss_first_epoch"] != report["train"]["loss_first_epoch"]


def test_scored_patients_the_encoder_was_pretrained_on_are_counted_and_warned_of(exported_encoder, lesion_shards,
                                                                                tmp_path, capsys):
    """An encoder pretrained on the split it is scored on (here its recipe says so: the test split;
    in practice another set's train split holding the same patients, split by a separate job)."""
    import shutil

    encoder = tmp_path / "enc.safetensors"
    shutil.copy(exported_encoder, encoder)
    recipe = json.loads(exported_encoder.with_suffix(".json").read_text())
    recipe["pretrained_sets"] = [{"root": str(lesion_shards), "split": "test"}, {"root": str(tmp_path / "gone"), "split": "train"}]
    encoder.with_suffix(".json").write_text(json.dumps(recipe))
    report = probe(encoder, lesion_shards, tmp_path, "seen", "--label", "class4", "--crop-kinds", "lesion",
                   "--random-init-baseline")
    test_patients = {r["patient"] for r in pq.read_table(lesion_shards / "manifest.parquet").to_pylist()
                     if r["split"] == "test" and r["crop_kind"] == "lesion"}
    assert report["test"]["patients_seen_in_pretraining"] == len(test_patients) > 0
    assert report["val"]["patients_seen_in_pretraining"] == 0
    assert "patients_seen_in_pretraining" not in report["random_init"]["test"]
    assert report["pretraining_sets_unreadable"][0].startswith(str(tmp_path / "gone"))
    said = capsys.readouterr().out
    assert f"warning: {len(test_patients)} of the test split's patients were in the encoder's pretraining data" in said
    del recipe["pretrained_sets"]  # exported before recipes said: nothing counted
    encoder.with_suffix(".json").write_text(json.dumps(recipe))
    old = probe(encoder, lesion_shards, tmp_path, "old", "--label", "class4", "--crop-kinds", "lesion")
    assert "patients_seen_in_pretraining" not in old["test"]
