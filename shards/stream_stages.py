"""Training stages: from decoded pixels (shards.sample_stages) to batches, composed in order by
shards.stream:

    augment            + "image": (C, S, S), still in stored units (shards.augment)
    with_source        + "source" and "normalisation": the shard set's own per-channel mean, std
    repeat_passes      pass after pass over a reader's shards, for as long as it is read
    interleave         several sources' streams in a given order
    batches            -> {"image": (B, C, S, S) float32, (x - mean) / std, "key", "crop_kind",
                           "source", "labels", "skipped"}
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from shards.augment import Augment
from shards.sample_stages import CountingHandler, Handler, Sample, SampleError


class StreamError(RuntimeError):
    """The stream cannot go on whatever the handler says (e.g. no readable sample at all)."""


def augment(samples: Iterable[Sample], transform: Augment, handler: Handler) -> Iterator[Sample]:
    for sample in samples:
        try:
            sample["image"] = transform(sample.pop("pixels"))
        except Exception as exc:  # e.g. an image too small for a transform; the handler decides
            handler(SampleError(sample["__shard__"], sample["__key__"], exc))
            continue
        yield sample


def with_source(samples: Iterable[Sample], *, source: str, mean: Sequence[float],
                std: Sequence[float]) -> Iterator[Sample]:
    """Tags each sample with its source's name and normalisation: per-channel mean and std in
    stored units, from the card of the shard set the sample came from (never ImageNet's)."""
    norm = (np.asarray(mean, np.float32).reshape(-1, 1, 1),
            (1.0 / np.asarray(std, np.float64)).astype(np.float32).reshape(-1, 1, 1))
    for sample in samples:
        sample["source"] = source
        sample["normalisation"] = norm
        yield sample


def normalise_into(out: np.ndarray, image: np.ndarray, normalisation: tuple[np.ndarray, np.ndarray]) -> None:
    """out (C, S, S) float32 <- (image - mean) / std, image in stored units (uint8/uint16 are
    exact in float32)."""
    mean, scale = normalisation
    np.subtract(image, mean, out=out)
    out *= scale


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty float32 batch; in a DataLoader worker, in shared memory, so handing it to the main
    process copies nothing (the same private call torch's default_collate makes)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    storage = torch.UntypedStorage._new_shared(4 * math.prod(shape))
    return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)


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


def batches(samples: Iterable[Sample], batch_size: int, handler: CountingHandler) -> Iterator[dict[str, Any]]:
    """Whole batches only (the plan gives each reader a multiple of batch_size). Each image is
    normalised straight into the batch tensor as it arrives and dropped, so a batch's worth of
    images is never held twice. "skipped" counts the samples this reader's handler skipped since
    its previous batch."""
    reported = 0
    iterator = iter(samples)
    for first in iterator:
        images = _batch_tensor((batch_size, *first["image"].shape))
        chunk = []
        for out, sample in zip(images.numpy(), itertools.chain([first], itertools.islice(iterator, batch_size - 1))):
            normalise_into(out, sample.pop("image"), sample["normalisation"])
            chunk.append(sample)
        if len(chunk) != batch_size:
            raise StreamError(f"a reader's stream ended {len(chunk)} samples into a batch of {batch_size}")
        yield {
            "image": images,
            "key": [s["__key__"] for s in chunk],
            "crop_kind": [s["meta"].crop_kind for s in chunk],
            "source": [s["source"] for s in chunk],
            "labels": [s["meta"].labels for s in chunk],
            "skipped": handler.skipped - reported,
        }
        reported = handler.skipped
