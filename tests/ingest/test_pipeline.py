"""ingest.pipeline's pieces that every source shares."""

from __future__ import annotations

import numpy as np

from ingest.pipeline import EncodedSample
from ingest.pixel_moments import pixel_moments
from shards import schema


def _meta(split: str) -> schema.SampleMeta:
    return schema.SampleMeta(key=f"k_{split}", source="test", patient="p", split=split, crop_kind="whole",
                             crop_box=(0, 0, 4, 3), source_size=(3, 4), height=3, width=4, channels=1, dtype="uint16",
                             labels={}, source_fingerprint="0" * 32)


def test_only_train_samples_carry_pixel_sums():
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    train = EncodedSample.of(_meta("train"), {schema.PIXELS_PNG: b"x"}, pixels)
    assert (train.channel_sums, train.channel_sq_sums, train.pixels) == pixel_moments(pixels)
    assert train.channel_sums == [float(pixels.sum())] and train.pixels == 12
    for split in ("val", "test"):
        held_out = EncodedSample.of(_meta(split), {schema.PIXELS_PNG: b"x"}, pixels)
        assert (held_out.channel_sums, held_out.channel_sq_sums, held_out.pixels) == ([], [], 0)
        assert held_out.members == {schema.PIXELS_PNG: b"x"} and held_out.meta.split == split
