"""Measurements taken in alternating rounds, summarised two ways.

This project's benchmarks run on shared VMs whose speed drifts by tens of percent within minutes.
Each round measures every variant back to back; the summary gives the best of each variant (what
the code can do) and, for a ratio, the median over rounds of the ratio within a round (both sides
measured under the same conditions, so a slow minute moves both). Report both.
"""

from __future__ import annotations

import statistics
from collections import defaultdict


class Rounds:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = defaultdict(list)

    def add(self, **measured: float) -> None:
        for name, value in measured.items():
            self.values[name].append(value)

    def best_seconds(self, name: str) -> float:
        return min(self.values[name])

    def best_rate(self, name: str) -> float:
        return max(self.values[name])

    def median_ratio(self, numerator: str, denominator: str) -> float:
        """Median over rounds of numerator / denominator taken within the same round."""
        pairs = zip(self.values[numerator], self.values[denominator], strict=True)
        return round(statistics.median(a / b for a, b in pairs), 3)
