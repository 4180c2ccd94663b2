"""ingest.distinct_count: distinct values counted as a set would count them, runs stored once."""

from __future__ import annotations

import random

from ingest.distinct_count import DistinctCount


def test_counts_what_a_set_counts_and_stores_a_run_once():
    rng = random.Random(0)
    values = [v for v in (rng.randrange(500) for _ in range(3000)) for _ in range(rng.randrange(1, 4))]
    count = DistinctCount()
    for value in values:
        count.add(value)
    assert count.count() == len(set(values))
    assert count.repeats() == len(values) - len(set(values))
    runs = 1 + sum(a != b for a, b in zip(values, values[1:]))
    assert len(count.values) == runs < len(values)


def test_text_and_union_across_parts():
    paths = [f"archive/p{i % 40}/IM{i}" for i in range(300)]
    train, test = DistinctCount(), DistinctCount()
    for i, path in enumerate(paths + paths[:50]):
        (train if i % 3 else test).add_text(path)
    assert train.union(test).count() == len(set(paths))
    assert DistinctCount().count() == 0 and DistinctCount().union().count() == 0
    odd = DistinctCount()
    odd.add_text("caf\udce9")  # a Linux file name that is not UTF-8, as os.scandir gives it
    assert odd.count() == 1
