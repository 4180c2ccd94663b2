"""The epoch plan: which shards each reader (one DataLoader worker of one rank) reads, and how many
samples of each source it yields, so that every rank yields exactly `steps_per_epoch` batches.

Every rank and worker computes the whole plan from the same inputs (the cards' per-shard sample
counts, seed, epoch), so they agree without talking to each other. The policy:

- Epoch length: steps_per_epoch = samples_per_epoch // (world_size * batch_size); samples_per_epoch
  defaults to the sum of the sources' samples (those of the chosen split and crop kinds). Fewer
  samples than world_size * batch_size is an error.
- Batches per reader: a rank's steps are dealt over its W workers (num_workers 0 counts as one):
  worker w makes steps // W + (w < steps % W) whole batches, so the rank's total is exact.
- Mixing: a reader's samples are split over the sources by weight, the fractional part rounded at
  random (seeded): each reader's count is exact and each source's share of the epoch is its
  weight in expectation (within one sample per reader). A weight that asks more of a source than
  it holds repeats its samples; one that asks less leaves some unread this epoch.
- Shards: each source's shards are shuffled (seed, epoch), ordered largest first (a stable sort,
  so shards of one size keep the shuffle), and dealt one at a time to the reader needing that
  source whose samples-per-quota is lowest so far: a shard has one reader per epoch, readers'
  loads stay even when shard sizes are not, and each reader reads its shards in a random order.
- Short and long readers: a reader whose shards hold fewer samples than its quota reads them
  again (in a new order each pass); one whose shards hold more stops at its quota. Which samples
  go unread changes every epoch with the shuffle; `EpochPlan.coverage` gives, per source, the
  fraction of its samples an epoch reads at least once.
- Impossible plans raise StreamPlanError with the numbers: zero steps, or a source with fewer
  shards than the readers that need it (each needs a shard of its own; use fewer workers or
  write smaller shards).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class StreamPlanError(ValueError):
    """A stream that cannot give every rank the same number of batches."""


@dataclass(frozen=True)
class ShardSpan:
    path: str  # absolute path of the tar
    samples: int  # samples in it that the stream yields (of the chosen crop kinds)


@dataclass(frozen=True)
class ReaderPlan:
    """One epoch of one reader."""

    rank: int
    worker: int
    batches: int
    quotas: tuple[int, ...]  # samples to yield, per source
    shards: tuple[tuple[ShardSpan, ...], ...]  # per source, in reading order


@dataclass(frozen=True)
class EpochPlan:
    steps_per_epoch: int
    readers: tuple[ReaderPlan, ...]  # rank-major: rank r, worker w at r * workers + w
    workers: int
    coverage: tuple[float, ...]  # per source: fraction of its samples read at least once

    def reader(self, rank: int, worker: int) -> ReaderPlan:
        return self.readers[rank * self.workers + worker]


def count_steps(samples_per_epoch: int, *, world_size: int, batch_size: int) -> int:
    steps = samples_per_epoch // (world_size * batch_size)
    if steps < 1:
        raise StreamPlanError(f"{samples_per_epoch} samples per epoch cannot fill one batch per rank: "
                              f"world_size {world_size} x batch_size {batch_size} = {world_size * batch_size} "
                              f"samples make one step")
    return steps


def split_by_weight(n: int, weights: Sequence[float], rng: np.random.Generator) -> list[int]:
    """n -> per-weight counts summing to n; fractional parts rounded at random, so each count is
    n * weight / sum(weights) in expectation."""
    exact = n * np.asarray(weights, float) / float(sum(weights))
    counts = np.floor(exact).astype(int)
    left = n - int(counts.sum())
    if left:
        fractions = exact - counts
        counts[rng.choice(len(counts), size=left, replace=False, p=fractions / fractions.sum())] += 1
    return counts.tolist()


def _deal(shards: Sequence[ShardSpan], quotas: Sequence[int], rng: np.random.Generator) -> list[list[ShardSpan]]:
    """Shuffled shards -> one list per reader; a reader with quota 0 gets none."""
    needing = [i for i, quota in enumerate(quotas) if quota > 0]
    dealt: list[list[ShardSpan]] = [[] for _ in quotas]
    heap = [(0.0, i) for i in needing]
    loads = dict.fromkeys(needing, 0)
    # Largest first (shards of one size in a new random order each epoch), each to the reader
    # with the fewest samples per quota so far: a greedy that keeps readers' loads close.
    for index in sorted(rng.permutation(len(shards)), key=lambda i: -shards[i].samples):
        _, reader = heapq.heappop(heap)
        dealt[reader].append(shards[index])
        loads[reader] += shards[index].samples
        heapq.heappush(heap, (loads[reader] / quotas[reader], reader))
    for shards_of_reader in dealt:  # reading order: random each epoch, whatever the sizes
        rng.shuffle(shards_of_reader)
    return dealt


def plan_epoch(sources: Sequence[Sequence[ShardSpan]], weights: Sequence[float], *, batch_size: int,
               world_size: int, num_workers: int, seed: int, epoch: int, samples_per_epoch: int | None = None,
               names: Sequence[str] | None = None) -> EpochPlan:
    """sources: per source, its shards (those with no samples are left out). Same arguments, same plan."""
    names = list(names) if names is not None else [f"#{i}" for i in range(len(sources))]
    if not sources or len(weights) != len(sources) or len(names) != len(sources):
        raise StreamPlanError(f"{len(sources)} sources, {len(weights)} weights, {len(names)} names")
    if any(not (w > 0 and math.isfinite(w)) for w in weights):
        raise StreamPlanError(f"weights must be positive and finite, got {list(weights)}")
    if batch_size < 1 or world_size < 1 or num_workers < 0:
        raise StreamPlanError(f"batch_size {batch_size} and world_size {world_size} must be >= 1, "
                              f"num_workers {num_workers} >= 0")
    sources = [[s for s in shards if s.samples > 0] for shards in sources]
    totals = [sum(s.samples for s in shards) for shards in sources]
    for name, total in zip(names, totals):
        if total == 0:
            raise StreamPlanError(f"source {name!r} has no samples")
    if samples_per_epoch is None:
        samples_per_epoch = sum(totals)
    steps = count_steps(samples_per_epoch, world_size=world_size, batch_size=batch_size)
    workers = max(num_workers, 1)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch,)))
    batches = [steps // workers + (w < steps % workers) for w in range(workers)] * world_size
    # Checked against every reader with batches, not only those this epoch's rounding gives a
    # share of a source, so a plan that works in epoch 0 works in every epoch.
    readers = sum(b > 0 for b in batches)
    for name, shards in zip(names, sources):
        if len(shards) < readers:
            raise StreamPlanError(f"source {name!r} has {len(shards)} shards with samples, but {readers} readers "
                                  f"need samples from it and each needs a shard of its own (a reader is a "
                                  f"DataLoader worker that gets batches: {steps} steps an epoch over {workers} "
                                  f"workers a rank x {world_size} ranks); use fewer DataLoader workers or ranks, "
                                  f"or write smaller shards (ingest --shard-size)")
    quotas = [split_by_weight(b * batch_size, weights, rng) for b in batches]  # reader -> source -> n
    dealt = [_deal(shards, [q[i] for q in quotas], rng) for i, shards in enumerate(sources)]
    plans = tuple(
        ReaderPlan(rank=g // workers, worker=g % workers, batches=batches[g], quotas=tuple(quotas[g]),
                   shards=tuple(tuple(dealt[i][g]) for i in range(len(sources))))
        for g in range(len(batches)))
    coverage = tuple(
        sum(min(sum(s.samples for s in dealt[i][g]), quotas[g][i]) for g in range(len(batches))) / totals[i]
        for i in range(len(sources)))
    return EpochPlan(steps_per_epoch=steps, readers=plans, workers=workers, coverage=coverage)
