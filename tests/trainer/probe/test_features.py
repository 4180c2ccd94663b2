"""The probe's features are the exported encoder's, of each stored image resized and normalised
as pretraining did: checked against a forward pass built by hand from the files."""

from __future__ import annotations

import json
import tarfile

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import timm
import torch
from safetensors.torch import load_file

from shards.card import read_card
from trainer.probe.encoder import Encoder, ProbeError, load_encoder
from trainer.probe.features import split_features


def test_features_equal_a_forward_pass_built_by_hand(exported_encoder, lesion_shards):
    encoder = load_encoder(exported_encoder, torch.device("cpu"))
    got = split_features([encoder], str(lesion_shards), "test", batch_size=3, progress=False)
    manifest = pq.read_table(lesion_shards / "manifest.parquet").to_pylist()
    test_rows = [r for r in manifest if r["split"] == "test"]
    assert sorted(got.keys) == sorted(r["key"] for r in test_rows) and len(set(got.keys)) == len(got.keys)
    assert got.features[0].shape == (len(test_rows), encoder.feature_dim) and got.skipped == 0

    recipe = json.loads(exported_encoder.with_suffix(".json").read_text())
    model = timm.create_model(recipe["timm_model"], pretrained=False, **recipe["timm_kwargs"]).eval()
    model.load_state_dict(load_file(exported_encoder))
    stats = read_card(lesion_shards)["pixel_stats"]
    side = recipe["timm_kwargs"]["img_size"]
    row = next(r for r in test_rows if r["key"] == got.keys[-1])
    with tarfile.open(lesion_shards / row["shard"]) as tar:
        png = tar.extractfile(f"{row['key']}.png").read()
    pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels.dtype == np.uint16 and pixels.shape[0] > side  # a 16-bit crop, shrunk by area averaging
    small = cv2.resize(pixels, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    x = torch.from_numpy((small - stats["mean"][0]) / stats["std"][0])[None, None]
    with torch.no_grad():
        expected = model(x)[0]
    torch.testing.assert_close(got.features[0][-1], expected, rtol=1e-4, atol=1e-4)
    assert got.patients[-1] == row["patient"] and got.labels[-1]
    assert all(row["labels"][name] == value for name, value in got.labels[-1].items())


def test_a_set_with_other_channels_than_the_encoder_is_named(lesion_shards):
    resnet = timm.create_model("resnet18", pretrained=False, in_chans=3, num_classes=0).eval()
    encoder = Encoder(resnet, {}, in_chans=3, img_size=32, source="resnet18")
    with pytest.raises(ProbeError, match="1-channel images, but the encoder was pretrained on 3 channels"):
        split_features([encoder], str(lesion_shards), "train", progress=False)
