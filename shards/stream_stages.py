"""Training stages: from parsed samples (shards.sample_stages) to batches, composed in order by
shards.stream:

    decode_augmented   "pixels" member -> "image": (C, S, S), still in stored units: the crop
                       drawn from the member's header, only its rectangle decoded, then resized
                       and flipped (shards.augment)
    with_source        + "source" and "normalisation": the shard set's own per-channel mean, std
    repeat_passes      pass after pass over a reader's shards, for as long as it is read
    interleave         several sources' streams in a given order
    batches            -> {"image": (B, C, S, S) in stored units (uint8 / uint16), "pixel_mean" and
                           "pixel_scale": (B, C) float32 numpy (1 / std), "key", "crop_kind", "source",
                           "labels", "skipped"}
    to_device          the batch on the training device, "image" float32 (x - mean) / std

Why normalise on the device and not in the worker: a float32 batch is twice the bytes of 16-bit
pixels (four times 8-bit) to fill in shared memory, hand over, pin and copy to the GPU, and the
worker's float conversion was a tenth of its time; on the GPU it is one fused op on the batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from shards import codecs
from shards.augment import Augment
from shards.batch_ring import shared_batch, tag_slot
from shards.sample_stages import CountingHandler, Handler, Sample, SampleError, check_channels


class StreamError(RuntimeError):
    """The stream cannot go on whatever the handler says (e.g. no readable sample at all)."""


def decode_augmented(samples: Iterable[Sample], transform: Augment, handler: Handler, *,
                     channels: int | None = None) -> Iterator[Sample]:
    """Each sample's image, augmented, decoding only the rectangle its crop keeps. The channel
    count, when given, must be the shard set's (its pixel_stats')."""
    for sample in samples:
        member = sample["__pixels__"]
        try:
            data = sample[member]
            header = codecs.read_pixel_header(member, data)
            check_channels(header.channels, channels)
            crop = transform.draw(header.height, header.width)
            image = transform.apply(codecs.decode_pixels(member, data, crop.region, header), crop)
        except Exception as exc:  # bytes from disk: any failure is this sample's, for the handler
            handler(SampleError(sample["__shard__"], sample["__key__"], exc))
            continue
        yield {"__key__": sample["__key__"], "__shard__": sample["__shard__"], "meta": sample["meta"], "image": image}


def with_source(samples: Iterable[Sample], *, source: str, mean: Sequence[float],
                std: Sequence[float]) -> Iterator[Sample]:
    """Tags each sample with its source's name and normalisation: per-channel mean and std in
    stored units, from the card of the shard set the sample came from (never ImageNet's)."""
    norm = (np.asarray(mean, np.float32), (1.0 / np.asarray(std, np.float64)).astype(np.float32))
    for sample in samples:
        sample["source"] = source
        sample["normalisation"] = norm
        yield sample


def fresh_batch(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, None]:
    """An empty batch of its own: in a DataLoader worker, in new shared memory, so handing it to
    the main process copies nothing; no ring slot (shards.batch_ring reuses buffers instead)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype), None
    return shared_batch(shape, dtype), None


def to_device(batch: dict[str, Any], device: torch.device | str, *, non_blocking: bool = True) -> dict[str, Any]:
    """The batch with its tensors on `device` and "image" normalised there: float32
    (x - mean) * (1 / std) per sample and channel, with each sample's own shard set's statistics
    ("pixel_mean" and "pixel_scale" are consumed). uint8 and uint16 values are exact in float32."""
    moved = {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in batch.items()}
    mean, scale = (torch.from_numpy(moved.pop(k)).to(device, non_blocking=non_blocking)
                   for k in ("pixel_mean", "pixel_scale"))
    image = moved["image"].to(torch.float32)
    moved["image"] = image.sub_(mean[:, :, None, None]).mul_(scale[:, :, None, None])
    return moved


def repeat_passes(make_pass: Callable[[int], Iterator[Sample]], what: str) -> Iterator[Sample]:
    """make_pass(0), make_pass(1), ... for as long as the consumer reads. A pass that yields
    nothing raises: skipping bad samples must not loop forever."""
    for number in itertools.count():
        count = 0
        for sample in make_pass(number):
            count += 1
            yield sample
        if count == 0:
            raise StreamError(f"a whole pass over {what} gave no usable sample")


def interleave(streams: Sequence[Iterator[Sample]], order: Iterable[int]) -> Iterator[Sample]:
    """order: the index of the stream each next sample comes from."""
    for index in order:
        yield next(streams[index])


def batches(samples: Iterable[Sample], batch_size: int, handler: CountingHandler, dtype: torch.dtype,
            new_batch: Callable[[tuple[int, ...], torch.dtype], tuple[torch.Tensor, Any]] = fresh_batch,
            ) -> Iterator[dict[str, Any]]:
    """Whole batches only (the plan gives each reader a multiple of batch_size). Each image is
    copied into the batch tensor (of `dtype`, wide enough for every source's pixels; from
    `new_batch`, which also names the ring slot it occupies, if any) as it arrives and dropped, so
    a batch's worth of images is never held twice. "skipped" counts the samples this reader's
    handler skipped since its previous batch."""
    reported = 0
    iterator = iter(samples)
    for first in iterator:
        channels = first["image"].shape[0]
        images, slot = new_batch((batch_size, *first["image"].shape), dtype)
        mean, scale = np.empty((batch_size, channels), np.float32), np.empty((batch_size, channels), np.float32)
        chunk = []
        rows = zip(images.numpy(), mean, scale)
        batch_samples = itertools.chain([first], itertools.islice(iterator, batch_size - 1))
        for (out, mean_row, scale_row), sample in zip(rows, batch_samples):
            out[...] = sample.pop("image")
            mean_row[:], scale_row[:] = sample["normalisation"]
            chunk.append(sample)
        if len(chunk) != batch_size:
            raise StreamError(f"a reader's stream ended {len(chunk)} samples into a batch of {batch_size}")
        yield tag_slot({
            "image": images,
            # numpy, not tensors: a DataLoader sends every tensor through its own shared-memory
            # segment and file descriptor, which costs more than pickling 2 x B x C floats
            "pixel_mean": mean,
            "pixel_scale": scale,
            "key": [s["__key__"] for s in chunk],
            "crop_kind": [s["meta"].crop_kind for s in chunk],
            "source": [s["source"] for s in chunk],
            "labels": [s["meta"].labels for s in chunk],
            "skipped": handler.skipped - reported,
        }, slot)
        reported = handler.skipped
