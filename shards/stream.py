"""Stream shard sets into training: mixed sources, split by rank and DataLoader worker, seeded
shuffles that change every epoch, safe decoding, augmentation, per-set normalisation, batches.

    loader, steps = make_loader([StreamSource(Path("shards/cbis"), crop_kinds=("lesion",), weight=0.75),
                                 StreamSource(Path("shards/cbis"), crop_kinds=("random",), weight=0.25,
                                              name="cbis-random")],
                                batch_size=64, image_size=224, rank=rank, world_size=world_size,
                                num_workers=8, seed=0, augment="mae")
    for epoch in range(epochs):
        loader.dataset.set_epoch(epoch)
        for batch in loader:        # exactly `steps` batches on every rank
            batch = to_device(batch, "cuda")
            batch["image"]          # (B, C, 224, 224) float32, normalised with each set's own stats

Batches leave the workers in stored units (uint8 / uint16, with each sample's mean and 1 / std);
to_device normalises them on the training device (see shards.stream_stages for why), and, with
resize_on_device (GPU training), resizes and flips the crops the workers left at their own size.

Which rank and worker reads what, and what an epoch covers: shards.stream_plan. The stages a
sample goes through: shards.sample_stages, then shards.stream_stages. Error policy: `handler`
(raise_sample_error, the default, or warn_and_skip; skips are counted in each batch's
"skipped"). Ray is not imported here: the trainer passes its rank and world size in.
"""

from __future__ import annotations

import functools
import random
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards import indexed_read, sample_stages as reading, schema, storage, stream_stages as stages
from shards.sample_stages import BAD_SAMPLE_HANDLERS, SampleError, raise_sample_error, warn_and_skip
from shards.stream_stages import StreamError, to_device
from shards.augment import Augment
from shards.batch_ring import LEND, RAISED_IN_WORKER, BatchRing, RingLoader
from shards.card import card_digest, read_card
from shards.heap import keep_buffers_in_heap
from shards.stream_plan import EpochPlan, ReaderPlan, ShardSpan, StreamPlanError, plan_epoch

__all__ = ["BAD_SAMPLE_HANDLERS", "OpenSource", "SampleError", "ShardStream", "StreamError", "StreamLoader", "StreamPlanError", "StreamSource",
           "make_loader", "open_source", "pixel_stats", "raise_sample_error", "to_device",
           "warn_and_skip"]

_BATCH_DTYPES = {"uint8": torch.uint8, "uint16": torch.uint16}
# Members a batch needs; a mask is checked by name but not read.
_READ = (schema.PIXELS_PNG, schema.PIXELS_NPY, schema.META_JSON)


@dataclass(frozen=True)
class StreamSource:
    """One shard set's split in a mix. root: a folder or a URI (s3://..., see shards.storage);
    crop_kinds None takes every sample; name (shown in each batch's "source") defaults to the
    card's source."""

    root: str | Path
    split: str = "train"
    weight: float = 1.0
    crop_kinds: tuple[str, ...] | None = None
    name: str | None = None


@dataclass(frozen=True)
class OpenSource:
    """A StreamSource resolved against its card: its shards and its normalisation."""

    name: str
    shards: tuple[ShardSpan, ...]
    crop_kinds: frozenset[str] | None
    weight: float
    mean: tuple[float, ...]  # per channel, stored units (card pixel_stats)
    std: tuple[float, ...]
    dtype: str  # stored pixels: "uint8" or "uint16"
    index: indexed_read.ShardIndex | None = None  # None: read through the tar (see open_source)
    card_digest: str = ""  # shards.card.card_digest of the card it was opened from: which make of the set
    root: str = ""  # the set's folder or URI

    @property
    def channels(self) -> int:
        return len(self.mean)


def pixel_stats(card: dict[str, Any], root: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel from the card, checked."""
    stats = card.get("pixel_stats") or {}
    mean, std = stats.get("mean"), stats.get("std")
    if not isinstance(mean, list) or not isinstance(std, list) or not mean or len(mean) != len(std):
        raise ValueError(f"{root}: dataset.json has no per-channel pixel_stats mean/std lists; "
                         f"run `shards stats {root}` to compute them")
    if not all(np.isfinite(mean)) or not all(s > 0 and np.isfinite(s) for s in std):
        raise ValueError(f"{root}: pixel_stats mean {mean} / std {std} must be finite with std > 0")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _samples_per_shard(root: str, split: str, crop_kinds: frozenset[str]) -> Counter:
    table = storage.read_parquet(storage.join(root, schema.MANIFEST_FILE), columns=["shard", "split", "crop_kind"])
    return Counter(row["shard"] for row in table.to_pylist()
                   if row["split"] == split and row["crop_kind"] in crop_kinds)


def open_source(source: StreamSource | OpenSource, *, by_index: bool = True) -> OpenSource:
    """The source's shards, sample counts and normalisation from its card; with by_index, and a
    local set whose manifest has member spans, each shard's samples by where they lie
    (shards.indexed_read), checked against the card's counts. A source opened already is taken as
    it is (without its index for by_index=False): a caller that plans several streams over the
    same sources reads each card and manifest once."""
    if isinstance(source, OpenSource):
        return source if by_index or source.index is None else replace(source, index=None)
    root = storage.shard_root(source.root)
    card = read_card(root)
    if source.split not in card["splits"]:
        raise ValueError(f"{root}: no {source.split!r} split (has {sorted(card['splits'])})")
    kinds = None if source.crop_kinds is None else frozenset(source.crop_kinds)
    if kinds is not None and (not kinds or not kinds <= set(schema.CROP_KINDS)):
        raise ValueError(f"crop_kinds {source.crop_kinds} must be a non-empty subset of {schema.CROP_KINDS}")
    records = card["splits"][source.split]["shards"]
    index = indexed_read.shard_index(root, source.split, kinds) if by_index else None
    counts = None if kinds is None or index is not None else _samples_per_shard(root, source.split, kinds)
    shards = []
    for record in records:
        rel = Path(record["path"])
        if rel.parent != Path(source.split) or not rel.match(schema.SHARD_GLOB):  # stay inside the set
            raise ValueError(f"{root}: dataset.json lists shard {record['path']!r} outside {source.split}/")
        location = storage.join(root, record["path"])
        if index is not None:
            samples = len(index.get(location, ()))
            if kinds is None and samples != record["samples"]:
                raise ValueError(f"{root}: the manifest lists {samples} samples in {record['path']}, dataset.json "
                                 f"{record['samples']}: the set is damaged (run `shards verify {root}`)")
        else:
            samples = record["samples"] if counts is None else counts[record["path"]]
        shards.append(ShardSpan(location, samples))
    mean, std = pixel_stats(card, root)
    dtype = card["pixel_stats"].get("dtype", "uint16")
    if dtype not in _BATCH_DTYPES:
        raise ValueError(f"{root}: pixel_stats dtype {dtype!r} is not one of {sorted(_BATCH_DTYPES)}")
    return OpenSource(name=source.name or card["source"], shards=tuple(shards), crop_kinds=kinds,
                      weight=float(source.weight), mean=mean, std=std, dtype=dtype, index=index,
                      card_digest=card_digest(card), root=str(root))


def distinct_names(sources: Sequence[OpenSource]) -> list[OpenSource]:
    """The sources, those whose names collide (two sets of one ingest source, cbis-lesion and
    cbis-random; one set twice, for its lesion and its random crops) named further by their
    folder, then by their crop kinds: "cbis-ddsm:cbis-lesion", "cbis-ddsm:cbis:lesion". Each
    batch's "source" and the checkpoint's per-source normalisation go by these names."""
    sources = list(sources)
    qualifiers = (lambda s: storage.base_name(s.root), lambda s: "+".join(sorted(s.crop_kinds or ("all",))))
    for qualify in qualifiers:
        counts = Counter(s.name for s in sources)
        if len(counts) == len(sources):
            break
        sources = [replace(s, name=f"{s.name}:{qualify(s)}") if counts[s.name] > 1 else s for s in sources]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"sources need distinct names, got {names}: name each one (data.sources[].name)")
    return sources


class ShardStream(IterableDataset):
    """An epoch of whole batches for one rank; with a DataLoader of `num_workers` workers (which
    must match) every rank gets exactly `steps_per_epoch` batches. Call set_epoch(e) before each
    epoch: the epoch lives in shared memory, so persistent DataLoader workers see it too.
    labels: each batch carries its samples' "labels" (from their json members; pretraining
    needs none, and reads faster without). by_index: read local sets whose manifest has member
    spans at those spans (shards.indexed_read); False reads every set through its tars."""

    def __init__(self, sources: Sequence[StreamSource | OpenSource], *, batch_size: int, image_size: int,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, seed: int = 0, augment: str = "mae",
                 shuffle_buffer: int = 1000, samples_per_epoch: int | None = None,
                 handler: reading.Handler = raise_sample_error, resize_on_device: bool = False,
                 labels: bool = True, by_index: bool = True):
        if not 0 <= rank < world_size:
            raise StreamPlanError(f"rank {rank} is not in [0, world_size {world_size})")
        if seed < 0 or shuffle_buffer < 1:
            raise ValueError(f"seed {seed} must be >= 0 and shuffle_buffer {shuffle_buffer} >= 1")
        self.sources = distinct_names([open_source(s, by_index=by_index) for s in sources])
        channels = {s.name: s.channels for s in self.sources}
        if len(set(channels.values())) != 1:
            raise ValueError(f"sources in one stream need one channel count, got {channels}")
        Augment(augment, image_size)  # unknown name or bad size: fail here, not in a worker
        self.channels = self.sources[0].channels
        # One batch tensor holds every source's pixels: 8-bit values fit a 16-bit batch exactly.
        self.dtype = max((_BATCH_DTYPES[s.dtype] for s in self.sources), key=lambda dtype: dtype.itemsize)
        self.batch_size, self.image_size, self.augment = batch_size, image_size, augment
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.seed, self.shuffle_buffer, self.samples_per_epoch = seed, shuffle_buffer, samples_per_epoch
        self.handler, self.resize_on_device, self.labels = handler, resize_on_device, labels
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.ring: BatchRing | None = None  # set by make_loader, whose RingLoader gives slots back
        self.steps_per_epoch = self.plan(0).steps_per_epoch  # raises here if no plan is possible

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def plan(self, epoch: int | None = None) -> EpochPlan:
        return plan_epoch([s.shards for s in self.sources], [s.weight for s in self.sources],
                          batch_size=self.batch_size, world_size=self.world_size, num_workers=self.num_workers,
                          seed=self.seed, epoch=self.epoch if epoch is None else epoch,
                          samples_per_epoch=self.samples_per_epoch, names=[s.name for s in self.sources])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != max(self.num_workers, 1):
            raise StreamPlanError(f"planned for num_workers={self.num_workers}, running in {workers} "
                                  f"(give the DataLoader the same num_workers, or use make_loader)")
        if info is not None:
            keep_buffers_in_heap()
        epoch = self.epoch
        new_batch = stages.fresh_batch
        if info is not None and self.ring is not None:
            self.ring.start_epoch(worker)
            new_batch = functools.partial(self.ring.take, worker)
        batches = self.reader_batches(self.plan(epoch).reader(self.rank, worker), epoch, new_batch)
        try:
            yield from batches
        except SampleError as exc:
            if info is None:
                raise
            yield {RAISED_IN_WORKER: exc}  # to the main process whole, which RingLoader raises (see RAISED_IN_WORKER)

    def reader_batches(self, reader: ReaderPlan, epoch: int,
                       new_batch=stages.fresh_batch) -> Iterator[dict[str, Any]]:
        """One reader's epoch: its sources' samples in a seeded order, in whole batches."""
        seeds = np.random.SeedSequence(self.seed, spawn_key=(epoch, reader.rank, reader.worker))
        augment_seed, mix_seed, *source_seeds = (int(child.generate_state(1)[0])
                                                  for child in seeds.spawn(2 + len(self.sources)))
        handler = reading.CountingHandler(self.handler)
        augment = Augment(self.augment, self.image_size, seed=augment_seed)
        rows = stages.BatchRows(self.batch_size, self.dtype, new_batch)
        streams = [islice(self._source_samples(source, shards, random.Random(seed), augment, handler, rows), quota)
                   for source, shards, quota, seed in zip(self.sources, reader.shards, reader.quotas, source_seeds)]
        order = np.repeat(np.arange(len(streams)), reader.quotas)
        np.random.default_rng(mix_seed).shuffle(order)
        yield from stages.batches(stages.interleave(streams, order.tolist()), handler, rows, labels=self.labels)

    def _source_samples(self, source: OpenSource, shards: tuple[ShardSpan, ...], rng: random.Random,
                        augment: Augment, handler: reading.Handler,
                        rows: stages.BatchRows) -> Iterator[dict[str, Any]]:
        """One source's samples for one reader, pass after pass over its shards (a new shard order
        each pass after the first, which the plan shuffled)."""
        def one_pass(number: int) -> Iterator[dict[str, Any]]:
            paths = [s.path for s in shards]
            if number:
                rng.shuffle(paths)
            if source.index is not None:  # the same samples in the same order as through the tar
                samples = indexed_read.indexed_samples(paths, source.index)
                samples = reading.shuffle(samples, self.shuffle_buffer, rng)
                samples = indexed_read.read_indexed(samples, source.index, handler, labels=self.labels)
            else:
                samples = reading.tar_samples(paths, handler, read=_READ)
                samples = reading.parse_meta(samples, handler)
                samples = reading.select_crop_kinds(samples, source.crop_kinds)
                samples = reading.shuffle(samples, self.shuffle_buffer, rng)
            samples = stages.decode_augmented(samples, augment, handler, rows, channels=source.channels,
                                              resize_on_device=self.resize_on_device)
            return stages.with_source(samples, source=source.name, mean=source.mean, std=source.std)

        return stages.repeat_passes(one_pass, f"{source.name}'s shards {[storage.name_of(s.path) for s in shards]}")


def _as_made(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch as the worker made it (the DataLoader's default here walks every label dict)."""
    return batch


class StreamLoader(NamedTuple):
    """make_loader's result: unpacks as (loader, steps_per_epoch)."""

    loader: RingLoader
    steps_per_epoch: int


def pinning_available() -> bool:
    """Whether this machine has an accelerator to pin host memory for (torch.accelerator, from
    torch 2.6; CUDA before it)."""
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


def make_loader(sources: Sequence[StreamSource | OpenSource], *, batch_size: int, image_size: int,
                rank: int = 0, world_size: int = 1, num_workers: int = 0, seed: int = 0, augment: str = "mae",
                shuffle_buffer: int = 1000, samples_per_epoch: int | None = None,
                handler: reading.Handler = raise_sample_error, pin_memory: bool = False,
                prefetch_factor: int | None = None, resize_on_device: bool = False, labels: bool = True,
                by_index: bool = True) -> StreamLoader:
    """A loader over a ShardStream (batches are made in the DataLoader workers, in buffers they
    reuse: shards.batch_ring), and the number of batches every rank gets per epoch. Call
    loader.dataset.set_epoch(e) before each epoch. Workers persist across epochs (the epoch
    reaches them through shared memory). Every batch's "image" is yours to keep: a worker's buffer
    lent until nothing refers to it, or its own copy (pinned when pin_memory; shards.batch_ring);
    to_device finishes it. resize_on_device (for GPU training): the
    workers leave the crops the augmentation enlarges to to_device (shards.device_crops).
    labels, by_index: see ShardStream. pin_memory without an accelerator is ignored with a
    warning, as torch's DataLoader does."""
    if pin_memory and not pinning_available():
        warnings.warn("make_loader: pin_memory=True, but there is no accelerator to pin memory for; "
                      "batches are not pinned", stacklevel=2)
        pin_memory = False
    if num_workers:
        # One worker is one core's work, so OpenCV's thread pool only gets in the way; and it must go
        # before the fork: a worker that inherits the parent's live pool deadlocks in OpenCV.
        cv2.setNumThreads(1)
    dataset = ShardStream(sources, batch_size=batch_size, image_size=image_size, rank=rank, world_size=world_size,
                          num_workers=num_workers, seed=seed, augment=augment, shuffle_buffer=shuffle_buffer,
                          samples_per_epoch=samples_per_epoch, handler=handler, resize_on_device=resize_on_device,
                          labels=labels, by_index=by_index)
    prefetch = (prefetch_factor or 2) if num_workers else None
    if num_workers:
        shape = (batch_size, dataset.channels, image_size, image_size)
        lend = 0 if pin_memory else LEND  # pinned batches are copies: no slot is ever lent
        dataset.ring = BatchRing(num_workers, prefetch + 2 + lend, shape, dataset.dtype, lend=lend)
    # A generator of its own: the DataLoader draws its workers' base seed when it starts them (the
    # first epoch, or the first after a resume), and from torch's global one that draw shifted
    # every random mask the training step drew after it; the stream seeds itself per epoch anyway.
    loader = DataLoader(dataset, batch_size=None, collate_fn=_as_made, num_workers=num_workers,
                        persistent_workers=num_workers > 0, prefetch_factor=prefetch,
                        generator=torch.Generator().manual_seed(seed))
    return StreamLoader(RingLoader(loader, dataset.ring, pin_memory=pin_memory), dataset.steps_per_epoch)
