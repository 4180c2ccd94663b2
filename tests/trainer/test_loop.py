"""trainer/loop.py's pieces that the whole-run tests in test_pretrain.py cannot single out."""

from __future__ import annotations

import multiprocessing

import torch
import torch.distributed as dist

from trainer.loop import mean_over_ranks


def _rank_mean(rank: int, init: str, out) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        out.put((rank, mean_over_ranks({"loss": 1.0 + rank, "loss_fine": 10.0 * rank}, torch.device("cpu"))))
    finally:
        dist.destroy_process_group()


def test_logged_metrics_are_the_mean_over_ranks(tmp_path):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    ranks = [ctx.Process(target=_rank_mean, args=(rank, f"file://{tmp_path / 'group'}", out)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    results = dict(out.get(timeout=60) for _ in ranks)
    for process in ranks:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert results == {0: {"loss": 1.5, "loss_fine": 5.0}, 1: {"loss": 1.5, "loss_fine": 5.0}}


def test_one_process_metrics_are_left_as_they_are():
    assert not dist.is_initialized()
    assert mean_over_ranks({"loss": 0.25}, torch.device("cpu")) == {"loss": 0.25}
