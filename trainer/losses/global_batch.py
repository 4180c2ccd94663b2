"""The global batch of a data-parallel step, for the losses that compare a batch's samples with each
other (InfoNCE's in-batch negatives, VICReg's variance and covariance over the batch).

Under DistributedDataParallel each rank sees only its share of the batch: 4 workers x 32 give each
InfoNCE anchor 62 negatives where the paper's batch of 128 gave 254 (TOWER, paper 001, trains on
one machine with nn.DataParallel, so its loss sees all 128), and VICReg's covariance is estimated
from 32 rows instead of 128. The papers' batch sizes and coefficients are for the whole batch, so
these losses gather it: every rank's rows, in rank order, with the gradient of each row summed
over the ranks that used it and sent back to the rank that made it (VICReg's released
main_vicreg.py does the same with its FullGatherLayer). DDP then averages the ranks' gradients, and
the result is the gradient of the loss of the whole batch, as one process with the whole batch
would compute it.

Gathering needs the same row count on every rank, which the stream guarantees (whole batches of
`data.batch_size`, the same number on every rank). It only happens in training: a validation pass
gives every rank the same whole split, so gathering it would make each sample its own negative.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def data_parallel_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        rank, world = data_parallel_world()
        ctx.rank, ctx.rows = rank, rows.shape[0]
        parts = [torch.empty_like(rows) for _ in range(world)]
        dist.all_gather(parts, rows.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # each rank's loss used every row: sum their gradients
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_rows(rows: torch.Tensor, *, training: bool) -> tuple[torch.Tensor, int]:
    """rows (b, ...) on each rank -> (the world's rows (world * b, ...) in rank order, the index of
    this rank's first row in them). Outside a process group, or with training False, (rows, 0)."""
    rank, world = data_parallel_world()
    if not training or world == 1:
        return rows, 0
    return _GatherRows.apply(rows), rank * rows.shape[0]
