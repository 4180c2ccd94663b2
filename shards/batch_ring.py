"""Batch buffers that DataLoader workers reuse instead of allocating shared memory per batch.

A DataLoader worker hands a batch tensor to the main process through shared memory. Made fresh
for every batch, that memory costs more than the batch's contents: allocating a 6 MB segment,
faulting its pages in and passing its file descriptor took ~150 us per 224 px sample of CPU time
here, a quarter of a 16-bit PNG decode. So the main process makes `slots` segments per worker
before the workers start (they inherit them when forked, or receive them once when spawned), a
worker fills its free slots in turn and sends only the slot's number with the batch, and the main
process (RingLoader) hands the batch on and marks the slot free again in a small table both sides
share. (Until the slots were made up front, each worker made its own and sent the slot's tensor
with every batch: the main process then received a descriptor over a socket and looked the
segment up again for each batch: 4% of the stream's rate here.)

Handing a batch on, RingLoader either lends the slot or copies the batch out of it:
- **Lent** (the default without pin_memory): the batch's "image" is the slot's memory itself, and
  the slot stays the consumer's until nothing refers to that memory any more -- the batch, a view
  of it, a numpy array made from it: torch counts every one of them (its storage use count, read
  before each batch is fetched). A consumer may so keep a batch as long as it likes; it never
  changes under it. At most `lend` slots of a worker are lent at once: a batch that would pass
  that is copied out (a consumer that keeps every batch, `list(loader)`, gets copies after the
  first few), so a worker always has free slots. Lending saves the main process one memcpy a batch
  (measured here: the two-worker stream 1.05x faster, median of 8 alternating pairs, with 2 cores
  shared by the workers and the main process).
- **Copied** (with pin_memory, or where this torch does not give the count): one memcpy, into
  pinned memory when asked -- which the DataLoader's own pinning would have done anyway -- and the
  slot is free at once.

A worker that finds no free slot waits (the DataLoader keeps at most `prefetch_factor` batches per
worker in flight, so `slots = prefetch_factor + 2 + lend` never waits in practice), and gives up
with an error after `wait_s`, rather than hang, if nothing frees one (a DataLoader not driven
through RingLoader).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

_SLOT = "__ring_slot__"
# A batch that carries, instead of samples, the exception a worker ended on (shards.stream sends a
# bad sample's SampleError so): torch re-raises a worker's error by calling its class with the
# traceback's text, and a class that takes more than a message became a RuntimeError of that text.
RAISED_IN_WORKER = "__raised_in_worker__"
# Slot states in BatchRing.busy.
FREE, FILLED, LENT = 0, 1, 2
# Slots of a worker that may be lent at once: the batch a `for` loop holds while it asks for the
# next, and one more (a consumer that keeps the batch before, say, to overlap copies).
LEND = 2


def _counts_every_reference(use_count) -> bool:
    """Whether use_count(storage) rises by one for each tensor, view and numpy array over a
    storage and falls back when they go: what lending relies on, checked once on this torch."""
    if use_count is None:
        return False
    buffer = torch.zeros(4, dtype=torch.int16)
    storage = buffer.untyped_storage()
    idle = use_count(storage._cdata)
    held = [buffer.view(2, 2), buffer[1:], buffer.detach(), buffer.numpy()]
    counted = use_count(storage._cdata) == idle + len(held)
    del held
    return counted and use_count(storage._cdata) == idle


# How many references torch counts to a storage (every tensor, view or numpy array over it). torch
# keeps it in torch._C; where it is missing or does not count as lending needs, every batch is copied.
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)
if not _counts_every_reference(_storage_use_count):
    _storage_use_count = None


class RingTimeout(RuntimeError):
    """A worker waited too long for a batch buffer the main process never gave back."""


class SharedMemoryError(RuntimeError):
    """The batch buffers do not fit in the machine's (or container's) shared memory."""


SHM_FOLDER = "/dev/shm"  # where Linux keeps POSIX shared memory: a container's is 64 MB unless given more


def shared_batch(shape: tuple[int, ...], dtype: torch.dtype, *, total: tuple[int, int] | None = None) -> torch.Tensor:
    """An empty tensor in shared memory (the private call torch's default_collate makes). total:
    (workers, slots) when the batch is one of a ring's, for the error's arithmetic."""
    nbytes = dtype.itemsize * math.prod(shape)
    try:
        storage = torch.UntypedStorage._new_shared(nbytes)
    except RuntimeError as exc:
        if "No space left" not in str(exc) and "shared memory" not in str(exc):
            raise
        raise SharedMemoryError(_shared_memory_advice(nbytes, total, exc)) from exc
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def _shared_memory_advice(nbytes: int, total: tuple[int, int] | None, exc: Exception) -> str:
    """What did not fit, what is free, and what to change (torch says only "No space left on device")."""
    if total is None:
        need = f"a batch buffer of {nbytes / 1e6:.1f} MB"
    else:
        workers, slots = total
        need = (f"the loader's batch buffers, {workers * slots * nbytes / 1e6:.0f} MB ({workers} worker(s) x {slots} "
                f"batches of {nbytes / 1e6:.1f} MB)")
    try:  # its size, not what is free: the buffers made before this one are still held here
        size = f" ({SHM_FOLDER} holds {shutil.disk_usage(SHM_FOLDER).total / 1e6:.0f} MB in all)"
    except OSError:
        size = ""
    return (f"{need} do not fit in shared memory{size}: {exc}. Give the process more shared memory (docker run "
            f"--shm-size=16g; on Kubernetes a memory-backed emptyDir on {SHM_FOLDER}, as infra/kuberay does), or "
            "lower data.num_workers or data.batch_size")


class BatchRing:
    """`slots` reusable shared-memory batches of one shape per worker, and the table of which are
    in use (FILLED by a worker, or LENT to the consumer); made in the main process before the
    workers start, which then share the memory. At most `lend` slots of a worker are lent."""

    def __init__(self, workers: int, slots: int, shape: tuple[int, ...], dtype: torch.dtype, *,
                 lend: int = 0, wait_s: float = 300.0):
        if workers < 1 or slots < 2 or not 0 <= lend < slots:
            raise ValueError(f"a ring needs workers >= 1, slots >= 2 and 0 <= lend < slots, got {workers}, {slots}, "
                             f"lend={lend}")
        self.slots, self.shape, self.dtype, self.lend, self.wait_s = slots, tuple(shape), dtype, lend, wait_s
        self.busy = torch.zeros((workers, slots), dtype=torch.int32).share_memory_()
        self.buffers = [[shared_batch(self.shape, dtype, total=(workers, slots)) for _ in range(slots)]
                        for _ in range(workers)]
        self._next = 0  # in a worker: where it looks for a free slot first

    def take(self, worker: int, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, tuple[int, int]]:
        """In a worker: its next free buffer (in turn, passing over those in use), marked FILLED,
        and the slot to send in its place."""
        if tuple(shape) != self.shape or dtype != self.dtype:
            raise ValueError(f"a batch of {tuple(shape)} {dtype} in a ring of {self.shape} {self.dtype}")
        deadline = time.monotonic() + self.wait_s
        while True:
            for turn in range(self.slots):
                slot = (self._next + turn) % self.slots
                if self.busy[worker, slot] == FREE:
                    self._next = (slot + 1) % self.slots
                    self.busy[worker, slot] = FILLED
                    return self.buffers[worker][slot], (worker, slot)
            if time.monotonic() > deadline:
                raise RingTimeout(f"worker {worker}: no batch buffer was given back within {self.wait_s:g} s "
                                  f"(all {self.slots} in use); iterate the loader make_loader returns "
                                  "(it hands batches on and frees buffers)")
            time.sleep(0.0005)

    def start_epoch(self, worker: int) -> None:
        """In a worker, as it starts an epoch: its FILLED slots are free again. Each was handed on
        by RingLoader (which marks it FREE or LENT) or was dropped unread by the DataLoader when a
        cut-short epoch's iterator was reset (and would otherwise stay in use). LENT ones stay
        the consumer's: it may still hold the last batch of the epoch before."""
        row = self.busy[worker]
        row.masked_fill_(row == FILLED, FREE)

    def release(self, worker: int, slot: int) -> None:
        self.busy[worker, slot] = FREE


class RingLoader:
    """Iterates a DataLoader whose batches may sit in a BatchRing slot: lends the slot or copies
    "image" out of it (see the module's docstring), and yields the batch. len() and .dataset are
    the DataLoader's. `lend` may be turned off (every batch copied, as with pin_memory)."""

    def __init__(self, loader: torch.utils.data.DataLoader, ring: BatchRing | None, *, pin_memory: bool = False):
        self.loader, self.ring, self.pin_memory = loader, ring, pin_memory
        self.lend = bool(ring is not None and ring.lend and not pin_memory and _storage_use_count is not None)
        self._lent: list[tuple[tuple[int, int], torch.UntypedStorage, int]] = []  # slot, its storage, its idle count

    @property
    def dataset(self):
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = iter(self.loader)
        while True:
            self._give_back()  # before waiting on the workers, which may need those slots
            try:
                batch = next(batches)
            except StopIteration:
                return
            if RAISED_IN_WORKER in batch:
                raise batch[RAISED_IN_WORKER]
            slot = batch.pop(_SLOT, None)
            if slot is not None:
                batch["image"] = self._hand_on(slot)
            elif self.pin_memory:
                batch["image"] = batch["image"].pin_memory()
            yield batch
            del batch  # not held here while lent slots are given back: only the consumer's hold counts

    def _hand_on(self, slot: tuple[int, int]) -> torch.Tensor:
        """The slot's batch image: the slot's memory itself, lent, or a copy (the slot freed)."""
        image = self.ring.buffers[slot[0]][slot[1]]
        if self.lend and sum(lent[0] == slot[0] for lent, _, _ in self._lent) < self.ring.lend:
            storage = image.untyped_storage()
            idle = _storage_use_count(storage._cdata)  # the ring's tensor and `storage` itself
            self.ring.busy[slot] = LENT
            self._lent.append((slot, storage, idle))
            return image.view(image.shape)
        own = torch.empty(image.shape, dtype=image.dtype, pin_memory=self.pin_memory)
        # numpy's memcpy, not Tensor.copy_: torch splits a large copy over its intra-op
        # threads, whose OpenMP spin-wait afterwards burnt as much CPU as the copy, taken
        # from the workers; and its copy of the "barebones" uint16 dtype is a scalar loop.
        np.copyto(own.numpy(), image.numpy())
        self.ring.release(*slot)
        return own

    def _give_back(self) -> None:
        """Frees every lent slot that nothing refers to any more."""
        still = []
        for slot, storage, idle in self._lent:
            if _storage_use_count(storage._cdata) > idle:
                still.append((slot, storage, idle))
            else:
                self.ring.release(*slot)
        self._lent = still


def tag_slot(batch: dict[str, Any], slot: tuple[int, int] | None) -> dict[str, Any]:
    """A worker's batch as it is sent: with a ring slot, the slot's number goes in place of the
    image, which stays in the slot (RingLoader reads it there)."""
    if slot is not None:
        batch[_SLOT] = slot
        del batch["image"]
    return batch
