"""Training stages: from read samples (shards.sample_stages, or shards.indexed_read) to batches,
composed in order by shards.stream:

    decode_augmented   the pixel member -> its batch row (BatchRows), still in stored units: the
                       crop drawn from the member's header, only its rectangle decoded, resized
                       and flipped into the row, or (for GPU training) left at its own size for
                       the device when enlarged (shards.device_crops) + "row", "resize_from", "flip"
    with_source        + "source" and "normalisation": the shard set's own per-channel mean, std
    repeat_passes      pass after pass over a reader's shards, for as long as it is read
    interleave         several sources' streams in a given order
    batches            -> {"image": (B, C, S, S) in stored units (uint8 / uint16), "pixel_mean" and
                           "pixel_scale": (B, C) float32 numpy (1 / std), "resize_from": (B, 2)
                           int32 and "flip": (B,) bool numpy, "key", "crop_kind", "source",
                           "skipped", and "labels" unless a stream is made without them}
    to_device          the batch on the training device, "image" float32 (x - mean) / std, every
                       crop resized and flipped there

Why normalise on the device and not in the worker: a float32 batch is twice the bytes of 16-bit
pixels (four times 8-bit) to fill in shared memory, hand over, pin and copy to the GPU, and the
worker's float conversion was a tenth of its time; on the GPU it is one fused op on the batch.
Why resize and flip there too, for GPU training: shards.device_crops.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from shards import codecs, schema
from shards.augment import Augment
from shards.batch_ring import shared_batch, tag_slot
from shards.device_crops import finish_crops, repeat_edges
from shards.sample_stages import CountingHandler, Handler, Sample, SampleError, check_channels


class StreamError(RuntimeError):
    """The stream cannot go on whatever the handler says (e.g. no readable sample at all)."""


class BatchRows:
    """The batch tensor being filled: decode_augmented decodes each sample straight into the row
    `batches` takes next (the two run in step: a sample is decoded when `batches` pulls it, and
    nothing between them buffers samples), so a sample's pixels are written once, from its member
    into the batch. new_batch: makes the (B, C, S, S) tensor of `dtype` and names its ring slot."""

    def __init__(self, batch_size: int, dtype: torch.dtype,
                 new_batch: Callable[[tuple[int, ...], torch.dtype], tuple[torch.Tensor, Any]]):
        self.batch_size, self.dtype, self.new_batch = batch_size, dtype, new_batch
        self.images: torch.Tensor | None = None
        self.slot: Any = None
        self._rows: np.ndarray | None = None
        self.filled = 0

    def next_row(self, shape: tuple[int, int, int]) -> tuple[int, np.ndarray]:
        """(index, row) of the row the next sample goes into, in a new batch when none is open."""
        if self.images is None:
            self.images, self.slot = self.new_batch((self.batch_size, *shape), self.dtype)
            self._rows = self.images.numpy()
        if self._rows.shape[1:] != shape:
            raise StreamError(f"a sample of shape {shape} in a batch of {tuple(self._rows.shape[1:])}")
        return self.filled, self._rows[self.filled]

    def take_row(self) -> int:
        index, self.filled = self.filled, self.filled + 1
        return index

    def take_batch(self) -> tuple[torch.Tensor, Any]:
        images, slot = self.images, self.slot
        self.images, self.slot, self._rows, self.filled = None, None, None, 0
        return images, slot


def decode_augmented(samples: Iterable[Sample], transform: Augment, handler: Handler, rows: BatchRows, *,
                     channels: int | None = None, resize_on_device: bool = False) -> Iterator[Sample]:
    """Each sample's crop, drawn from its member's header, decoded into its batch row (only the
    crop's rectangle is decoded) and augmented there; + "row", "resize_from" and "flip". With
    resize_on_device, a crop the augmentation enlarges or keeps is decoded straight into the row
    at its own size and left for the device to resize and flip (shards.device_crops): the
    setting for GPU training; on a CPU, OpenCV in the workers resizes faster than torch in the
    training process. The channel count, when given, must be the shard set's (its pixel_stats')."""
    size = transform.image_size
    for sample in samples:
        member = sample["__pixels__"]
        try:
            data = sample[member]
            header = codecs.read_pixel_header(member, data)
            check_channels(header.channels, channels)
            crop = transform.draw(header.height, header.width)
            index, row = rows.next_row((header.channels, size, size))
            if resize_on_device and transform.on_device(crop):
                (h, w), flip = (crop.height, crop.width), crop.flip
                grey_png = member == schema.PIXELS_PNG and header.channels == 1
                out = row[0, :h, :w] if grey_png else row[:, :h, :w].transpose(1, 2, 0)
                codecs.decode_pixels(member, data, crop.region, header, out=out)
                repeat_edges(row, h, w)
            else:  # finished here: the row is the augmented image
                pixels = codecs.decode_pixels(member, data, crop.region, header)
                np.copyto(row, transform.apply(pixels, crop), casting="safe")  # the batch may be wider
                (h, w), flip = (size, size), False
        except Exception as exc:  # bytes from disk: any failure is this sample's, for the handler
            handler(SampleError(sample["__shard__"], sample["__key__"], exc))
            continue
        yield {"__key__": sample["__key__"], "__shard__": sample["__shard__"], "crop_kind": sample["crop_kind"],
               "meta": sample.get("meta"), "row": index, "resize_from": (h, w), "flip": flip}


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
    """The batch with its tensors on `device` and "image" finished there: float32
    (x - mean) * (1 / std) per sample and channel, with each sample's own shard set's statistics,
    and each crop left at its own size resized and flipped (shards.device_crops). "pixel_mean",
    "pixel_scale", "resize_from" and "flip" are consumed. uint8 and uint16 values are exact in
    float32."""
    moved = {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in batch.items()}
    mean, scale = (torch.from_numpy(moved.pop(k)).to(device, non_blocking=non_blocking)
                   for k in ("pixel_mean", "pixel_scale"))
    image = moved["image"].to(torch.float32)
    image = image.sub_(mean[:, :, None, None]).mul_(scale[:, :, None, None])
    moved["image"] = finish_crops(image, moved.pop("resize_from"), moved.pop("flip"))  # decided on the host
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


def batches(samples: Iterable[Sample], handler: CountingHandler, rows: BatchRows, *,
            labels: bool = True) -> Iterator[dict[str, Any]]:
    """Whole batches only (the plan gives each reader a multiple of batch_size), of the rows
    decode_augmented filled. "skipped" counts the samples this reader's handler skipped since its
    previous batch. With labels, "labels" holds each sample's (its "meta" must be there)."""
    reported = 0
    batch_size = rows.batch_size
    iterator = iter(samples)
    for first in iterator:
        channels = len(first["normalisation"][0])
        mean, scale = np.empty((batch_size, channels), np.float32), np.empty((batch_size, channels), np.float32)
        resize_from, flip = np.empty((batch_size, 2), np.int32), np.empty(batch_size, np.bool_)
        chunk = []
        for sample in itertools.chain([first], itertools.islice(iterator, batch_size - 1)):
            index = rows.take_row()
            if sample["row"] != index:
                raise StreamError(f"sample {sample['__key__']} was decoded into row {sample['row']}, not {index}")
            mean[index], scale[index] = sample["normalisation"]
            resize_from[index], flip[index] = sample["resize_from"], sample["flip"]
            chunk.append(sample)
        if len(chunk) != batch_size:
            raise StreamError(f"a reader's stream ended {len(chunk)} samples into a batch of {batch_size}")
        images, slot = rows.take_batch()
        batch = {
            "image": images,
            # numpy, not tensors: a DataLoader sends every tensor through its own shared-memory
            # segment and file descriptor, which costs more than pickling a few numbers a sample
            "pixel_mean": mean,
            "pixel_scale": scale,
            "resize_from": resize_from,
            "flip": flip,
            "key": [s["__key__"] for s in chunk],
            "crop_kind": [s["crop_kind"] for s in chunk],
            "source": [s["source"] for s in chunk],
            "skipped": handler.skipped - reported,
        }
        if labels:
            batch["labels"] = [s["meta"].labels for s in chunk]
        yield tag_slot(batch, slot)
        reported = handler.skipped
