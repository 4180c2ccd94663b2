"""Reusable batch buffers: made by the main process before the workers start, which share their
memory; a worker cycles through its free slots, waits when none is free, and says so when nothing
ever frees one; a new epoch frees what a cut-short one left behind but not what is lent;
RingLoader lends a slot until nothing refers to its memory, or copies the batch out."""

from __future__ import annotations

import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from shards import batch_ring
from shards.batch_ring import FILLED, FREE, LENT, BatchRing, RingLoader, RingTimeout, tag_slot

SHAPE = (2, 1, 4, 4)


def test_slots_are_reused_in_turn_and_marked_busy_until_released():
    ring = BatchRing(1, 3, SHAPE, torch.uint16)
    taken = [ring.take(0, SHAPE, torch.uint16) for _ in range(3)]
    assert [slot for _, slot in taken] == [(0, 0), (0, 1), (0, 2)]
    assert ring.busy.tolist() == [[1, 1, 1]]
    assert all(t.is_shared() and t.dtype == torch.uint16 and t.shape == SHAPE for t, _ in taken)
    ring.release(0, 0)
    again, slot = ring.take(0, SHAPE, torch.uint16)
    assert slot == (0, 0) and again.data_ptr() == taken[0][0].data_ptr()  # the same memory, not a new segment
    with pytest.raises(ValueError, match=r"a batch of \(2, 3, 4, 4\) torch.uint16 in a ring of \(2, 1, 4, 4\)"):
        ring.take(0, (2, 3, 4, 4), torch.uint16)


def test_a_worker_passes_over_slots_in_use_to_a_free_one():
    ring = BatchRing(1, 3, SHAPE, torch.uint8)
    for _ in range(3):
        ring.take(0, SHAPE, torch.uint8)
    ring.release(0, 2)  # slot 0, next in turn, is still in use
    assert ring.take(0, SHAPE, torch.uint8)[1] == (0, 2)
    ring.release(0, 1)
    assert ring.take(0, SHAPE, torch.uint8)[1] == (0, 1)


def test_a_worker_waits_for_its_busy_slot():
    ring = BatchRing(1, 2, SHAPE, torch.uint8)
    ring.take(0, SHAPE, torch.uint8), ring.take(0, SHAPE, torch.uint8)
    threading.Timer(0.05, ring.release, (0, 0)).start()
    started = time.monotonic()
    _, slot = ring.take(0, SHAPE, torch.uint8)
    assert slot == (0, 0) and time.monotonic() - started >= 0.04


def test_a_slot_never_given_back_is_an_error_not_a_hang():
    ring = BatchRing(1, 2, SHAPE, torch.uint8, wait_s=0.05)
    ring.take(0, SHAPE, torch.uint8), ring.take(0, SHAPE, torch.uint8)
    with pytest.raises(RingTimeout, match=r"no batch buffer was given back within 0.05 s \(all 2 in use\)"):
        ring.take(0, SHAPE, torch.uint8)


def test_a_new_epoch_frees_the_workers_filled_slots_but_not_its_lent_ones():
    ring = BatchRing(2, 3, SHAPE, torch.uint8, lend=1)
    for _ in range(3):
        ring.take(1, SHAPE, torch.uint8)
    ring.busy[1, 1] = LENT  # the consumer may still hold the last batch of the epoch before
    ring.take(0, SHAPE, torch.uint8)
    ring.start_epoch(1)
    assert ring.busy.tolist() == [[FILLED, FREE, FREE], [FREE, LENT, FREE]]


def _fill_second_slot(ring: BatchRing) -> None:
    ring.take(0, SHAPE, torch.uint16)
    buffer, _ = ring.take(0, SHAPE, torch.uint16)
    buffer.fill_(4321)


def test_a_spawned_worker_fills_memory_the_main_process_reads():
    """Forked workers inherit the slots; a spawned one (Python 3.14's default start method is
    forkserver) receives them when it starts, and still writes where the main process reads."""
    ring = BatchRing(1, 2, SHAPE, torch.uint16)
    worker = multiprocessing.get_context("spawn").Process(target=_fill_second_slot, args=(ring,))
    worker.start()
    worker.join(60)
    assert worker.exitcode == 0
    assert ring.busy.tolist() == [[1, 1]] and ring.buffers[0][1].eq(4321).all() and ring.buffers[0][0].eq(0).all()


def test_only_the_slot_travels_and_the_loader_hands_out_a_copy_and_frees_the_slot():
    ring = BatchRing(1, 2, SHAPE, torch.uint16)
    buffer, slot = ring.take(0, SHAPE, torch.uint16)
    buffer.fill_(7)
    sent = tag_slot({"image": buffer, "key": ["a", "b"]}, slot)
    assert "image" not in sent
    (batch,) = RingLoader([sent], ring)
    assert batch["key"] == ["a", "b"] and batch["image"].eq(7).all() and not batch["image"].is_shared()
    assert ring.busy.tolist() == [[0, 0]]
    buffer.fill_(9)  # the slot, reused, leaves the handed-out batch alone
    assert batch["image"].eq(7).all()


def _worker(ring: BatchRing, count: int):
    """A worker's batches as RingLoader receives them, each slot taken when the batch is asked for
    (a worker that finds no free slot raises RingTimeout at once instead of waiting)."""
    for value in range(1, count + 1):
        buffer, slot = ring.take(0, SHAPE, torch.uint16)
        buffer.fill_(value)
        yield tag_slot({"image": buffer, "key": [str(value)]}, slot)


def test_a_lent_batch_is_the_slot_itself_until_nothing_refers_to_it():
    ring = BatchRing(1, 3, SHAPE, torch.uint16, lend=2, wait_s=0)
    batches = iter(RingLoader(_worker(ring, 5), ring))
    first = next(batches)
    assert first["image"].data_ptr() == ring.buffers[0][0].data_ptr() and ring.busy[0].tolist() == [LENT, 0, 0]
    second = next(batches)  # `first` is still held: its slot stays lent, and the worker uses slot 1
    assert ring.busy[0].tolist() == [LENT, LENT, 0] and first["image"].eq(1).all()
    view, array = first["image"][0], second["image"].numpy()  # what refers to the memory counts, not the batch
    del first, second
    third = next(batches)  # two lent already: a copy, its slot free at once
    assert not third["image"].is_shared() and third["image"].eq(3).all()
    assert ring.busy[0].tolist() == [LENT, LENT, 0] and view.eq(1).all() and (array == 2).all()
    del view
    fourth = next(batches)  # slot 0 was given back before the worker took it again, and is lent again
    assert ring.busy[0].tolist() == [LENT, LENT, 0] and fourth["image"].data_ptr() == ring.buffers[0][0].data_ptr()
    assert fourth["image"].eq(4).all() and (array == 2).all()
    del array, third, fourth
    assert next(batches)["image"].eq(5).all() and ring.busy[0].tolist() == [0, LENT, 0]


def test_pinned_batches_are_never_lent():
    ring = BatchRing(1, 4, SHAPE, torch.uint16, lend=2)
    assert RingLoader([], ring).lend and not RingLoader([], ring, pin_memory=True).lend
    assert not RingLoader([], BatchRing(1, 4, SHAPE, torch.uint16)).lend  # a ring without lent slots


def test_lending_is_off_where_torch_does_not_count_every_reference():
    assert batch_ring._counts_every_reference(torch._C._storage_Use_Count)  # this torch's count: lending is on
    assert batch_ring._storage_use_count is not None
    assert not batch_ring._counts_every_reference(None)  # a torch without it
    assert not batch_ring._counts_every_reference(lambda cdata: 1)  # a count that does not follow references


_SMALL_SHM = shutil.which("unshare") and shutil.which("mount") and os.geteuid() == 0


@pytest.mark.skipif(not _SMALL_SHM, reason="needs root and unshare to give one process a small /dev/shm")
def test_buffers_that_do_not_fit_in_shared_memory_say_how_much_and_what_to_change():
    """A container's /dev/shm is 64 MB unless given more: torch's own error there names a temporary
    file and "No space left on device". Here, in a mount namespace of its own, a 20 MB /dev/shm."""
    script = ("import torch\nfrom shards.batch_ring import BatchRing\n"
              "BatchRing(2, 6, (64, 1, 224, 224), torch.uint16, lend=2)\n")
    run = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=20m tmpfs /dev/shm && exec "
                          f"{shlex.quote(sys.executable)} -c {shlex.quote(script)}"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=120)
    if "mount:" in run.stderr or "unshare:" in run.stderr:
        pytest.skip(f"no private /dev/shm here: {run.stderr.strip()[:200]}")
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("shards.batch_ring.SharedMemoryError: the loader's batch buffers, 77 MB "
                           "(2 worker(s) x 6 batches of 6.4 MB) do not fit in shared memory (/dev/shm holds 21 MB")
    assert "--shm-size" in last and "data.num_workers" in last
