"""What a finished (or resumed) ingest job reports: counts per split, rejects by reason, rate, and
the card's counting notes; `describe()` is the closing summary the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shards import schema


@dataclass
class JobSummary:
    out: Path
    units: int
    samples: dict[str, int]
    rejects: int
    rejects_by_reason: dict[str, int]
    seconds: float
    input_bytes: int
    resumed_units: int
    counts: dict[str, int] = field(default_factory=dict)  # the card's counting notes, e.g. images_without_box

    def describe(self) -> str:
        per_split = ", ".join(f"{split} {n}" for split, n in self.samples.items()) or "none"
        rate = self.units / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"wrote {sum(self.samples.values())} samples ({per_split}) from {self.units} images "
            f"in {self.seconds:.1f} s ({rate:.1f} images/s, {self.input_bytes / 1e6 / max(self.seconds, 1e-9):.1f} MB/s)",
            f"shard set: {self.out}",
        ]
        if self.resumed_units:
            lines.append(f"resumed: {self.resumed_units} images were already done")
        if self.rejects:
            reasons = "; ".join(f"{reason} x{n}" for reason, n in self.rejects_by_reason.items())
            lines.append(f"REJECTED {self.rejects} inputs ({reasons}): see {self.out / schema.REJECTS_FILE}")
        if self.counts:
            lines.append("counted: " + ", ".join(f"{name} {n}" for name, n in self.counts.items()))
        return "\n".join(lines)
