"""Batch buffers that DataLoader workers reuse instead of allocating shared memory per batch.

A DataLoader worker hands a batch tensor to the main process through shared memory. Made fresh
for every batch, that memory costs more than the batch's contents: allocating a 6 MB segment,
faulting its pages in and passing its file descriptor took ~150 us per 224 px sample of CPU time
here, a quarter of a 16-bit PNG decode. So each worker keeps `slots` segments and cycles through
them, and the main process (RingLoader) copies every batch out of its segment as it arrives --
one memcpy, into pinned memory when asked, which the DataLoader's own pinning would have done
anyway -- and marks the segment free in a small table both sides share.

Why a copy and not the segment itself: a consumer may keep a batch (a list of batches, a picture
drawn later); a batch that still pointed into a ring slot would change under it when the slot came
round again. The copy is the batch's own memory.

A worker that finds its next slot still marked busy waits (the main process frees a slot as soon
as it receives the batch, and the DataLoader keeps at most `prefetch_factor` batches per worker in
flight, so `slots = prefetch_factor + 2` never waits in practice), and gives up with an error
after `wait_s`, rather than hang, if nothing frees it (a DataLoader not driven through RingLoader).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

_SLOT = "__ring_slot__"


class RingTimeout(RuntimeError):
    """A worker waited too long for a batch buffer the main process never gave back."""


def shared_batch(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor in shared memory (the private call torch's default_collate makes)."""
    storage = torch.UntypedStorage._new_shared(dtype.itemsize * math.prod(shape))
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


class BatchRing:
    """`slots` reusable shared-memory batches per worker, and the table of which are busy. Made in
    the main process before the workers start; each worker makes its own buffers on first use."""

    def __init__(self, workers: int, slots: int, *, wait_s: float = 300.0):
        if workers < 1 or slots < 2:
            raise ValueError(f"a ring needs workers >= 1 and slots >= 2, got {workers}, {slots}")
        self.slots, self.wait_s = slots, wait_s
        self.busy = torch.zeros((workers, slots), dtype=torch.int32).share_memory_()
        self._buffers: list[torch.Tensor] = []  # in a worker: its own segments
        self._next = 0

    def __getstate__(self) -> dict[str, Any]:  # a spawned worker starts with no buffers of its own
        return {**self.__dict__, "_buffers": [], "_next": 0}

    def take(self, worker: int, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, tuple[int, int]]:
        """In a worker: its next free buffer of this shape, marked busy, and the slot to send with it."""
        if not self._buffers or self._buffers[0].shape != shape or self._buffers[0].dtype != dtype:
            self._buffers = [shared_batch(shape, dtype) for _ in range(self.slots)]
        slot, self._next = self._next, (self._next + 1) % self.slots
        deadline = time.monotonic() + self.wait_s
        while self.busy[worker, slot]:
            if time.monotonic() > deadline:
                raise RingTimeout(f"worker {worker}: batch buffer {slot} was not given back within {self.wait_s:.0f} s; "
                                  "iterate the loader make_loader returns (it copies batches out and frees buffers)")
            time.sleep(0.0005)
        self.busy[worker, slot] = 1
        return self._buffers[slot], (worker, slot)

    def start_epoch(self, worker: int) -> None:
        """In a worker, as it starts an epoch: none of its earlier batches is in use any more. Each
        was copied out by RingLoader before being handed on, or was dropped unread by the
        DataLoader when a cut-short epoch's iterator was reset (and would otherwise stay busy)."""
        self.busy[worker].zero_()

    def release(self, worker: int, slot: int) -> None:
        self.busy[worker, slot] = 0


class RingLoader:
    """Iterates a DataLoader whose batches may sit in a BatchRing slot: copies "image" out (into
    pinned memory when pin_memory), frees the slot, yields the batch. len() and .dataset are the
    DataLoader's."""

    def __init__(self, loader: torch.utils.data.DataLoader, ring: BatchRing | None, *, pin_memory: bool = False):
        self.loader, self.ring, self.pin_memory = loader, ring, pin_memory
        # The last tensor seen in each slot, kept so its mapping stays: torch then finds the segment
        # in its cache when the slot comes round again, instead of mapping it anew and faulting in
        # every page (which made the copy out 8x slower than a memcpy).
        self._mapped: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def dataset(self):
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            slot = batch.pop(_SLOT, None)
            if slot is not None:
                image = batch["image"]
                own = torch.empty(image.shape, dtype=image.dtype, pin_memory=self.pin_memory)
                # numpy's memcpy, not Tensor.copy_: torch splits a large copy over its intra-op
                # threads, whose OpenMP spin-wait afterwards burnt as much CPU as the copy, taken
                # from the workers; and its copy of the "barebones" uint16 dtype is a scalar loop.
                np.copyto(own.numpy(), image.numpy())
                self._mapped[slot] = image
                self.ring.release(*slot)
                batch["image"] = own
            elif self.pin_memory:
                batch["image"] = batch["image"].pin_memory()
            yield batch


def tag_slot(batch: dict[str, Any], slot: tuple[int, int] | None) -> dict[str, Any]:
    """Mark a worker's batch with the ring slot its image occupies (RingLoader reads it)."""
    if slot is not None:
        batch[_SLOT] = slot
    return batch
