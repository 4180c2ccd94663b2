"""The batch-comparing losses under DistributedDataParallel on two gloo ranks see the global batch:
the ranks' mean loss and their DDP-averaged gradients equal one process's on all the rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.losses.global_batch import gather_rows
from trainer.losses.info_nce import InfoNCELoss
from trainer.losses.nt_xent import NTXentLoss
from trainer.losses.vicreg import VICRegLoss

ROWS, FEATURES, DIMS = 8, 6, 5


class Embedder(nn.Module):
    """A linear encoder and one of the losses, as a method holds them (the loss a child module)."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.encode = nn.Linear(FEATURES, DIMS)
        self.loss = loss

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.loss(self.encode(x1), self.encode(x2))


LOSSES = {"info_nce": lambda: InfoNCELoss(0.5), "nt_xent": lambda: NTXentLoss(0.5),
          "vicreg": lambda: VICRegLoss(cov_coeff=3.0)}


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(ROWS, FEATURES, generator=g)
    return x1, x1 + 0.3 * torch.randn(ROWS, FEATURES, generator=g)


def _model(name: str) -> Embedder:
    torch.manual_seed(0)
    return Embedder(LOSSES[name]())


def _rank(rank: int, name: str, training: bool, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    model = DistributedDataParallel(_model(name))
    model.train(training)
    x1, x2 = _views()
    mine = slice(rank * ROWS // 2, (rank + 1) * ROWS // 2)
    loss = model(x1[mine], x2[mine])
    loss.backward()
    torch.save({"loss": loss.detach(), "grads": [p.grad for p in model.module.encode.parameters()]},
               f"{out}/rank{rank}.pt")


def _one_process(name: str, rows: slice = slice(None)) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model = _model(name)
    x1, x2 = _views()
    loss = model(x1[rows], x2[rows])
    loss.backward()
    return loss.detach(), [p.grad for p in model.encode.parameters()]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_two_ranks_train_on_the_loss_and_gradient_of_the_whole_batch(name, tmp_path, gloo_ranks):
    gloo_ranks(_rank, name, True, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    loss, grads = _one_process(name)
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss)
    for rank in ranks:  # DDP averaged them: every rank holds the whole batch's gradient
        for got, expected in zip(rank["grads"], grads, strict=True):
            torch.testing.assert_close(got, expected)
    # Each rank's half alone is another loss: the test tells the two apart.
    half_loss, _ = _one_process(name, slice(0, ROWS // 2))
    assert not torch.isclose(ranks[0]["loss"], half_loss)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_out_of_training_each_rank_scores_its_own_rows(name, tmp_path, gloo_ranks):
    """A validation pass hands every rank the whole split: gathering it would double every sample."""
    gloo_ranks(_rank, name, False, str(tmp_path))
    for r in range(2):
        saved = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        expected, _ = _one_process(name, slice(r * ROWS // 2, (r + 1) * ROWS // 2))
        torch.testing.assert_close(saved["loss"], expected)


def test_outside_a_process_group_rows_are_returned_as_they_are():
    rows = torch.randn(4, 3)
    gathered, first = gather_rows(rows, training=True)
    assert gathered is rows and first == 0
