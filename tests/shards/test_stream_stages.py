"""The stream's decode-and-augment stages: decoding only a crop's rectangle straight into its batch
row, then finishing the batch on the device, gives the image that augmenting the whole decoded
member on the CPU gives (to its rounding), for PNG and .npy members, for crops resized in the
worker and crops left to the device alike; bad members and a wrong channel count go to the
handler with their shard and key, and the next good sample takes their row."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from shards import codecs, sample_stages as reading
from shards.augment import Augment
from shards.stream_stages import BatchRows, batches, decode_augmented, fresh_batch, to_device, with_source


def sample(key: str, pixels: np.ndarray) -> dict:
    member, data = codecs.encode_pixels(pixels)
    return {"__key__": key, "__shard__": "set/train/shard-000000.tar", "__pixels__": member, member: data,
            "crop_kind": "whole", "meta": SimpleNamespace(labels={})}  # what parse_meta gives, as far as batches reads


def run_stages(samples, augment, channels, batch_size, *, dtype=torch.uint16, handler=None, new_batch=fresh_batch,
               resize_on_device=True):
    handler = handler or reading.CountingHandler(reading.raise_sample_error)
    rows = BatchRows(batch_size, dtype, new_batch)
    decoded = decode_augmented(samples, augment, handler, rows, channels=channels, resize_on_device=resize_on_device)
    tagged = with_source(decoded, source="toy", mean=[0.0] * channels, std=[1.0] * channels)
    return list(batches(tagged, handler, rows))


@pytest.mark.parametrize("resize_on_device", [True, False])
@pytest.mark.parametrize("shape,dtype", [((60, 45), np.uint16), ((60, 45, 3), np.uint8), ((60, 45, 7), np.uint16)])
def test_decoding_the_crop_into_its_row_and_finishing_on_the_device_gives_the_augmented_image(shape, dtype,
                                                                                             resize_on_device):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype) for _ in range(24)]
    channels = 1 if len(shape) == 2 else shape[2]
    made = run_stages([sample(f"k{i}", im) for i, im in enumerate(images)], Augment("mae", 32, seed=4), channels, 8,
                      resize_on_device=resize_on_device)
    whole = Augment("mae", 32, seed=4)
    assert [k for b in made for k in b["key"]] == [f"k{i}" for i in range(24)]
    sizes = np.concatenate([b["resize_from"] for b in made])
    if resize_on_device:  # both paths: crops shrunk (finished in the worker: 32 x 32), crops left to the device
        assert (sizes == 32).all(axis=1).any() and (sizes < 32).all(axis=1).any()
    else:  # every row finished in the worker, flips included
        assert (sizes == 32).all() and not any(b["flip"].any() for b in made)
    finished = torch.cat([to_device(b, "cpu")["image"] for b in made]).numpy()
    for image, got, size in zip(images, finished, sizes):
        expected = whole(image).astype(np.float64)
        assert got.shape == (channels, 32, 32)
        if (size == 32).all():  # resized as on the CPU, flipped on the device: exactly
            np.testing.assert_array_equal(got, expected)
        else:  # enlarged on the device at OpenCV's positions: OpenCV's result before its rounding
            np.testing.assert_allclose(got, expected, rtol=0, atol=1.0)


def test_what_the_buffer_held_before_does_not_reach_the_image():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 65536, size=(40, 30), dtype=np.uint16) for _ in range(16)]

    def filled_with(value):
        def new_batch(shape, dtype):
            return torch.full(shape, value, dtype=dtype), None
        return new_batch

    results = []
    for value in (0, 65535):
        made = run_stages([sample(f"k{i}", im) for i, im in enumerate(images)], Augment("mae", 48, seed=2), 1, 4,
                          new_batch=filled_with(value))
        assert all((b["resize_from"] < 48).all() for b in made)  # every crop is enlarged: all on the device
        results.append(torch.cat([to_device(b, "cpu")["image"] for b in made]))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


def test_an_8_bit_set_fills_a_16_bit_batch_exactly():
    images = [np.random.default_rng(i).integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for i in range(4)]
    made = run_stages([sample(f"k{i}", im) for i, im in enumerate(images)], Augment("none", 16), 3, 4)
    assert made[0]["image"].dtype == torch.uint16
    for stored, image in zip(made[0]["image"].numpy(), images):
        np.testing.assert_array_equal(stored, image.transpose(2, 0, 1))


def test_bad_members_and_channel_counts_go_to_the_handler_and_the_next_sample_takes_the_row():
    good = [np.full((20, 20), 1000 * (i + 1), np.uint16) for i in range(3)]
    broken = sample("k1", good[1])
    broken["png"] = broken["png"][:60]
    samples = [sample("k0", good[0]), broken, sample("k2", np.zeros((20, 20, 3), np.uint8)), sample("k3", good[2])]
    handler = reading.CountingHandler(reading.warn_and_skip)
    with pytest.warns(UserWarning) as caught:
        made = run_stages(samples, Augment("none", 20), 1, 2, handler=handler)
    assert [b["key"] for b in made] == [["k0", "k3"]] and handler.skipped == 2 and made[0]["skipped"] == 2
    np.testing.assert_array_equal(made[0]["image"][1, 0].numpy(), good[2])
    messages = [str(w.message) for w in caught]
    assert "shard-000000.tar: sample k1: PNG member does not decode" in messages[0]
    assert "sample k2: 3 channels; the shard set's pixel_stats have 1" in messages[1]
