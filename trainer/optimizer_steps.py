"""Gradient accumulation: one optimizer step every `accumulate` batches (MAE's `accum_iter`).

MAE (He et al. 2022, appendix A.1, Table 8) pretrains with batches of 4096 and lr = blr x batch /
256; its code reaches that batch on fewer GPUs by summing the gradients of `accum_iter` batches
before each step, the effective batch being batch_size x accum_iter x GPUs. Here
`optim.accumulate_steps` is that factor.

Each batch's loss is divided by the size of its group, so an update's gradient is the mean over
the group's batches, as one batch of their samples would give (for methods without batch-wide
layers: BatchNorm and contrastive losses still see each batch alone). An epoch whose batches do
not divide evenly ends with a smaller group, divided by its own size: every epoch ends on an
update, so a checkpoint never holds half-summed gradients. Under DDP the gradients are
all-reduced only at a group's last batch (`no_sync` before): every rank has the same number of
batches an epoch (shards.stream), so all ranks reach it together.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch


def updates_per_epoch(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of `batches` batches."""
    return math.ceil(batches / accumulate)


def group_size(batch: int, batches: int, accumulate: int) -> int:
    """How many batches the group of batch number `batch` (0-based) of an epoch holds."""
    start = batch - batch % accumulate
    return min(accumulate, batches - start)


class OptimizerSteps:
    """`with steps.batch(i, batches): loss = ...; steps.backward(loss)` for each batch; every
    `accumulate` batches (and at an epoch's last) the optimizer steps: the AMP scaler's unscale,
    optional clipping of the gradient norm, step, update, and the gradients cleared."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 *, accumulate: int = 1, clip_grad: float | None = None):
        if accumulate < 1:
            raise ValueError(f"accumulate must be 1 or more, got {accumulate}")
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.accumulate, self.clip_grad = accumulate, clip_grad
        self.pending = 0  # batches whose gradients are summed but not yet stepped on
        self._size, self._last = 1, True

    @contextlib.contextmanager
    def batch(self, batch: int, batches: int) -> Iterator[None]:
        """Around batch number `batch` (0-based) of an epoch of `batches`: its forward pass and
        backward(). Under DDP, all but a group's last batch run in `no_sync`, which DDP reads in
        the forward pass (entered after it, the gradients were all-reduced at every batch)."""
        self._size = group_size(batch, batches, self.accumulate)
        self._last = batch % self.accumulate == self._size - 1
        no_sync = getattr(self.model, "no_sync", None)
        with contextlib.nullcontext() if self._last or no_sync is None else no_sync():
            yield

    def backward(self, loss: torch.Tensor) -> bool:
        """Adds the loss of the batch entered with batch(); True when it ended a group and the
        optimizer stepped."""
        self.scaler.scale(loss / self._size).backward()
        self.pending += 1
        if self._last:
            self._step()
        return self._last

    def finish_epoch(self) -> bool:
        """Steps on a group an epoch left unfinished (its loader ended before the batches it
        planned); True if there was one. Under DDP every rank must call it at the same point."""
        if not self.pending:
            return False
        self._step()
        return True

    def _step(self) -> None:
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0
