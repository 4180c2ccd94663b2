"""A loader's first batches of an epoch or pass, on the training device, with the time spent
waiting for them: what the training loop and a validation pass both read."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from shards.stream import to_device


class DataWait:
    """Seconds the training loop spent blocked on the loader for its next batch: with a step that
    waits for its loss (`.item()`), time the device sat idle for want of input. Its share of an
    epoch says whether a run is input-bound (more DataLoader workers or CPU cores per GPU help)
    or compute-bound (they do not)."""

    def __init__(self) -> None:
        self.seconds = 0.0


def device_batches(loader, steps: int, device: torch.device,
                   wait: DataWait | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(batch number, batch on `device`) for at most `steps` batches; fewer if the loader ends."""
    wait = wait or DataWait()
    batches = iter(loader)
    for step in range(steps):
        asked = time.perf_counter()
        batch = next(batches, None)
        wait.seconds += time.perf_counter() - asked
        if batch is None:
            return
        yield step, to_device(batch, device)
