"""The epoch plan on its own: exact batches per rank for many uneven layouts, every shard read by one
reader, weights kept in expectation, the same plan from the same arguments, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest

from shards.stream_plan import ShardSpan, StreamPlanError, count_steps, plan_epoch, split_by_weight


def spans(sizes: list[int], prefix: str = "s") -> list[ShardSpan]:
    return [ShardSpan(f"/{prefix}/shard-{i:06d}.tar", n) for i, n in enumerate(sizes)]


def test_every_rank_gets_the_same_steps_for_many_uneven_layouts():
    rng = np.random.default_rng(0)
    for _ in range(300):
        world_size, num_workers, batch_size = int(rng.integers(1, 5)), int(rng.integers(0, 4)), int(rng.integers(1, 6))
        readers = world_size * max(num_workers, 1)
        sources = [spans(rng.integers(1, 30, size=int(rng.integers(readers, readers + 8))).tolist(), f"set{i}")
                   for i in range(int(rng.integers(1, 4)))]
        weights = rng.uniform(0.1, 1.0, size=len(sources)).tolist()
        total = sum(s.samples for shards in sources for s in shards)
        if total < world_size * batch_size:
            continue
        plan = plan_epoch(sources, weights, batch_size=batch_size, world_size=world_size, num_workers=num_workers,
                          seed=int(rng.integers(1000)), epoch=int(rng.integers(10)))
        assert plan.steps_per_epoch == count_steps(total, world_size=world_size, batch_size=batch_size)
        for rank in range(world_size):
            readers = [plan.reader(rank, w) for w in range(max(num_workers, 1))]
            assert sum(r.batches for r in readers) == plan.steps_per_epoch
            for reader in readers:
                assert sum(reader.quotas) == reader.batches * batch_size
                for quota, shards in zip(reader.quotas, reader.shards):
                    assert (quota > 0) <= bool(shards), "a reader with a quota has shards to read"
        for i, shards in enumerate(sources):  # each shard has exactly one reader this epoch
            dealt = sorted(s.path for r in plan.readers for s in r.shards[i])
            needed = any(r.quotas[i] for r in plan.readers)
            assert dealt == (sorted(s.path for s in shards) if needed else [])
        assert all(0 < c <= 1 for c in plan.coverage)


def test_same_arguments_same_plan_and_a_new_shard_order_each_epoch():
    sources = [spans([5, 1, 8, 3, 6, 2, 4, 7, 7, 2])]
    kw = dict(batch_size=2, world_size=2, num_workers=2, seed=3)
    assert plan_epoch(sources, [1.0], epoch=4, **kw) == plan_epoch(sources, [1.0], epoch=4, **kw)
    orders = {tuple(s.path for r in plan_epoch(sources, [1.0], epoch=e, **kw).readers for s in r.shards[0])
              for e in range(5)}
    assert len(orders) == 5


def test_weights_hold_over_the_epoch_and_shards_are_read_again_when_short():
    sources = [spans([10] * 8, "big"), spans([3] * 8, "small")]
    plan = plan_epoch(sources, [0.5, 0.5], batch_size=7, world_size=2, num_workers=2, seed=0, epoch=0)
    taken = np.sum([r.quotas for r in plan.readers], axis=0)
    assert abs(taken[0] - taken[1]) <= len(plan.readers)  # within one sample per reader
    assert plan.coverage[1] == 1.0 and taken[1] > 24  # 24 small samples, asked for more: all read, some twice
    assert plan.coverage[0] < 1.0  # asked for fewer than it holds: some left for other epochs


def test_split_by_weight_is_exact_per_call_and_fair_on_average():
    rng = np.random.default_rng(0)
    draws = np.array([split_by_weight(5, [0.75, 0.25], rng) for _ in range(4000)])
    assert (draws.sum(axis=1) == 5).all() and set(draws[:, 0]) == {3, 4}
    assert abs(draws[:, 0].mean() - 3.75) < 0.03


@pytest.mark.parametrize("kw,message", [
    (dict(batch_size=8, world_size=4), r"29 samples per epoch cannot fill one batch per rank"),
    (dict(batch_size=1, world_size=4, num_workers=2), r"'#0' has 7 shards with samples, but 8 readers"),
    (dict(batch_size=1, samples_per_epoch=0), r"0 samples per epoch cannot fill"),
])
def test_impossible_plans_are_refused_with_the_numbers(kw, message):
    args = dict(batch_size=1, world_size=1, num_workers=0, seed=0, epoch=0) | kw
    with pytest.raises(StreamPlanError, match=message):
        plan_epoch([spans([5, 1, 8, 3, 6, 2, 4])], [1.0], **args)


def test_bad_weights_and_empty_sources_are_refused():
    with pytest.raises(StreamPlanError, match="positive and finite"):
        plan_epoch([spans([4]), spans([4])], [1.0, 0.0], batch_size=1, world_size=1, num_workers=0, seed=0, epoch=0)
    with pytest.raises(StreamPlanError, match="'empty' has no samples"):
        plan_epoch([spans([4]), spans([0, 0])], [1.0, 1.0], batch_size=1, world_size=1, num_workers=0, seed=0,
                   epoch=0, names=["full", "empty"])
