"""Reusable batch buffers: a worker cycles through its slots, waits for one still busy, and says
so when nothing ever frees it; a new epoch frees what a cut-short one left behind."""

from __future__ import annotations

import pickle
import threading
import time

import pytest
import torch

from shards.batch_ring import BatchRing, RingTimeout

SHAPE = (2, 1, 4, 4)


def test_slots_are_reused_in_turn_and_marked_busy_until_released():
    ring = BatchRing(1, 3)
    taken = [ring.take(0, SHAPE, torch.uint16) for _ in range(3)]
    assert [slot for _, slot in taken] == [(0, 0), (0, 1), (0, 2)]
    assert ring.busy.tolist() == [[1, 1, 1]]
    assert all(t.is_shared() and t.dtype == torch.uint16 and t.shape == SHAPE for t, _ in taken)
    ring.release(0, 0)
    again, slot = ring.take(0, SHAPE, torch.uint16)
    assert slot == (0, 0) and again.data_ptr() == taken[0][0].data_ptr()  # the same memory, not a new segment


def test_a_worker_waits_for_its_busy_slot():
    ring = BatchRing(1, 2)
    ring.take(0, SHAPE, torch.uint8), ring.take(0, SHAPE, torch.uint8)
    threading.Timer(0.05, ring.release, (0, 0)).start()
    started = time.monotonic()
    _, slot = ring.take(0, SHAPE, torch.uint8)
    assert slot == (0, 0) and time.monotonic() - started >= 0.04


def test_a_slot_never_given_back_is_an_error_not_a_hang():
    ring = BatchRing(1, 2, wait_s=0.05)
    ring.take(0, SHAPE, torch.uint8), ring.take(0, SHAPE, torch.uint8)
    with pytest.raises(RingTimeout, match="batch buffer 0 was not given back"):
        ring.take(0, SHAPE, torch.uint8)


def test_a_new_epoch_frees_the_workers_slots_and_a_spawned_worker_starts_without_buffers():
    ring = BatchRing(2, 2)
    ring.take(1, SHAPE, torch.uint8), ring.take(1, SHAPE, torch.uint8)
    ring.start_epoch(1)
    assert ring.busy.tolist() == [[0, 0], [0, 0]]
    copy = pickle.loads(pickle.dumps(ring))
    assert copy._buffers == [] and copy.busy.data_ptr() != 0
