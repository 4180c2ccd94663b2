"""The stream's decode-and-augment stage: decoding only a crop's rectangle gives exactly the image
that augmenting the whole decoded member gives, for PNG and .npy members; bad members and a
wrong channel count go to the handler with their shard and key."""

from __future__ import annotations

import numpy as np
import pytest

from shards import codecs, sample_stages as reading
from shards.augment import Augment
from shards.stream_stages import decode_augmented


def sample(key: str, pixels: np.ndarray) -> dict:
    member, data = codecs.encode_pixels(pixels)
    return {"__key__": key, "__shard__": "set/train/shard-000000.tar", "meta": None, "__pixels__": member,
            member: data}


@pytest.mark.parametrize("shape,dtype", [((60, 45), np.uint16), ((60, 45, 3), np.uint8), ((60, 45, 7), np.uint16)])
def test_decoding_the_crop_alone_gives_the_augmented_whole_image(shape, dtype):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype) for _ in range(12)]
    channels = 1 if len(shape) == 2 else shape[2]
    out = list(decode_augmented([sample(f"k{i}", im) for i, im in enumerate(images)], Augment("mae", 32, seed=4),
                                reading.raise_sample_error, channels=channels))
    whole = Augment("mae", 32, seed=4)
    assert [s["__key__"] for s in out] == [f"k{i}" for i in range(12)]
    for image, got in zip(images, out):
        assert got["image"].shape == (channels, 32, 32) and "pixels" not in got
        np.testing.assert_array_equal(got["image"], whole(image))


def test_bad_members_and_channel_counts_go_to_the_handler():
    good = np.zeros((20, 20), np.uint16)
    broken = sample("k1", good)
    broken["png"] = broken["png"][:60]
    samples = [sample("k0", good), broken, sample("k2", np.zeros((20, 20, 3), np.uint8)), sample("k3", good)]
    handler = reading.CountingHandler(reading.warn_and_skip)
    with pytest.warns(UserWarning) as caught:
        kept = list(decode_augmented(samples, Augment("none", 20), handler, channels=1))
    assert [s["__key__"] for s in kept] == ["k0", "k3"] and handler.skipped == 2
    messages = [str(w.message) for w in caught]
    assert "shard-000000.tar: sample k1: PNG member does not decode" in messages[0]
    assert "sample k2: 3 channels; the shard set's pixel_stats have 1" in messages[1]
