"""Batch buffers that DataLoader workers reuse instead of allocating shared memory per batch.

A DataLoader worker hands a batch tensor to the main process through shared memory. Made fresh
for every batch, that memory costs more than the batch's contents: allocating a 6 MB segment,
faulting its pages in and passing its file descriptor took ~150 us per 224 px sample of CPU time
here, a quarter of a 16-bit PNG decode. So the main process makes `slots` segments per worker
before the workers start (they inherit them when forked, or receive them once when spawned), a
worker fills its slots in turn and sends only the slot's number with the batch, and the main
process (RingLoader) copies every batch out of its slot as it arrives -- one memcpy, into pinned
memory when asked, which the DataLoader's own pinning would have done anyway -- and marks the slot
free in a small table both sides share. (Until the slots were made up front, each worker made its
own and sent the slot's tensor with every batch: the main process then received a descriptor
over a socket and looked the segment up again for each batch: 4% of the stream's rate here.)

Why a copy and not the slot itself: a consumer may keep a batch (a list of batches, a picture
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
    """`slots` reusable shared-memory batches of one shape per worker, and the table of which are
    busy; made in the main process before the workers start, which then share the memory."""

    def __init__(self, workers: int, slots: int, shape: tuple[int, ...], dtype: torch.dtype, *,
                 wait_s: float = 300.0):
        if workers < 1 or slots < 2:
            raise ValueError(f"a ring needs workers >= 1 and slots >= 2, got {workers}, {slots}")
        self.slots, self.shape, self.dtype, self.wait_s = slots, tuple(shape), dtype, wait_s
        self.busy = torch.zeros((workers, slots), dtype=torch.int32).share_memory_()
        self.buffers = [[shared_batch(self.shape, dtype) for _ in range(slots)] for _ in range(workers)]
        self._next = 0  # in a worker: its next slot

    def take(self, worker: int, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, tuple[int, int]]:
        """In a worker: its next free buffer, marked busy, and the slot to send in its place."""
        if tuple(shape) != self.shape or dtype != self.dtype:
            raise ValueError(f"a batch of {tuple(shape)} {dtype} in a ring of {self.shape} {self.dtype}")
        slot, self._next = self._next, (self._next + 1) % self.slots
        deadline = time.monotonic() + self.wait_s
        while self.busy[worker, slot]:
            if time.monotonic() > deadline:
                raise RingTimeout(f"worker {worker}: batch buffer {slot} was not given back within {self.wait_s:.0f} s; "
                                  "iterate the loader make_loader returns (it copies batches out and frees buffers)")
            time.sleep(0.0005)
        self.busy[worker, slot] = 1
        return self.buffers[worker][slot], (worker, slot)

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

    @property
    def dataset(self):
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            slot = batch.pop(_SLOT, None)
            if slot is not None:
                image = self.ring.buffers[slot[0]][slot[1]]
                own = torch.empty(image.shape, dtype=image.dtype, pin_memory=self.pin_memory)
                # numpy's memcpy, not Tensor.copy_: torch splits a large copy over its intra-op
                # threads, whose OpenMP spin-wait afterwards burnt as much CPU as the copy, taken
                # from the workers; and its copy of the "barebones" uint16 dtype is a scalar loop.
                np.copyto(own.numpy(), image.numpy())
                self.ring.release(*slot)
                batch["image"] = own
            elif self.pin_memory:
                batch["image"] = batch["image"].pin_memory()
            yield batch


def tag_slot(batch: dict[str, Any], slot: tuple[int, int] | None) -> dict[str, Any]:
    """A worker's batch as it is sent: with a ring slot, the slot's number goes in place of the
    image, which stays in the slot (RingLoader reads it there)."""
    if slot is not None:
        batch[_SLOT] = slot
        del batch["image"]
    return batch
