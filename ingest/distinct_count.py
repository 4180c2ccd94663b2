"""Counting distinct values over a whole archive at 8 bytes a value added, not a set of Python
objects (a path or pseudonym string in a set costs ~100 bytes): the plan's studies, series and
SOP instances (ingest.dicom_plan), a dry run's images per split (ingest.plan_report)."""

from __future__ import annotations

import hashlib
from array import array

import numpy as np


class DistinctCount:
    """How many distinct 64-bit values were added. A run of one value (a series' files, side by
    side in its folder) is stored once."""

    def __init__(self):
        self.values = array("Q")
        self.added = 0

    def add(self, value: int) -> None:
        self.added += 1
        if not self.values or self.values[-1] != value:
            self.values.append(value)

    def add_text(self, text: str) -> None:
        """A string, by a 64-bit digest of it (distinct strings collide with odds ~n^2 / 2^65)."""
        self.add(int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
                                "little"))

    def count(self) -> int:
        return int(np.unique(np.frombuffer(self.values, np.uint64)).size) if self.values else 0

    def repeats(self) -> int:
        """Values added that an earlier one had."""
        return self.added - self.count()

    def union(self, *others: DistinctCount) -> DistinctCount:
        joined = DistinctCount()
        for part in (self, *others):
            joined.values.extend(part.values)
            joined.added += part.added
        return joined
