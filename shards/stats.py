"""`shards stats`: per-channel pixel mean and std of a shard set's train split, written into its card.

For a shard set whose dataset.json lacks `pixel_stats` (the stream normalises with them and
refuses a set without). Every train sample is read through the stream's own stages (safe
decoders only) and the statistics take the shape ingest writes: mean and std per channel in
stored units, over every pixel of every sample. The card is rewritten atomically, everything
else in it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shards import sample_stages as stages, schema, storage
from shards.card import write_card
from shards.progress_bar import progress_bar

SPLIT = "train"


def compute(root: Path, card: dict[str, Any]) -> dict[str, Any]:
    """The card's pixel_stats for `root`, computed from the train shards. Raises ValueError when
    the split is missing or its samples differ in channel count or dtype."""
    if SPLIT not in card.get("splits", {}):
        raise ValueError(f"{root}: no {SPLIT} split to compute pixel statistics from")
    records = card["splits"][SPLIT]["shards"]
    paths = [storage.join(root, r["path"]) for r in records]
    samples = stages.tar_samples(paths, stages.raise_sample_error, read=schema.PIXEL_MEMBERS + (schema.META_JSON,))
    samples = stages.decode(stages.parse_meta(samples, stages.raise_sample_error), stages.raise_sample_error)
    sums = squares = None
    count, dtype, names = 0, None, None
    total = sum(r["samples"] for r in records)
    for sample in progress_bar(samples, total=total, unit="sample", desc="stats"):
        pixels = sample["pixels"]
        values = pixels.reshape(pixels.shape[0] * pixels.shape[1], -1).astype(np.float64)
        if sums is None:
            sums, squares = np.zeros(values.shape[1]), np.zeros(values.shape[1])
            dtype, names = str(pixels.dtype), sample["meta"].channel_names
        if values.shape[1] != len(sums) or str(pixels.dtype) != dtype:
            raise ValueError(f"{sample['__shard__']}: sample {sample['__key__']} is {values.shape[1]}-channel "
                             f"{pixels.dtype}, earlier samples {len(sums)}-channel {dtype}: one set, one kind")
        sums += values.sum(axis=0)
        squares += np.square(values).sum(axis=0)
        count += values.shape[0]
    if not count:
        raise ValueError(f"{root}: the {SPLIT} split has no samples")
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return {"split": SPLIT, "dtype": dtype, "channels": len(mean), "channel_names": list(names) if names else None,
            "mean": [round(float(m), 4) for m in mean], "std": [round(float(s), 4) for s in std], "pixels": count}


def run(root: Path, card: dict[str, Any], *, force: bool = False, out=None) -> int:
    """Compute and write pixel_stats unless the card has them (force recomputes); prints them."""
    if card.get("pixel_stats") and not force:
        print(f"{root}: dataset.json already has pixel_stats (--force recomputes them): {card['pixel_stats']}",
              file=out)
        return 0
    card["pixel_stats"] = compute(root, card)
    write_card(root, card)
    print(f"{root}: wrote pixel_stats {card['pixel_stats']}", file=out)
    return 0
