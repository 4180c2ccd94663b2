"""The frozen encoder's features of every sample of one split, each sample read exactly once.

Shards are read in the card's order (no shuffle, no repeats, nothing dropped to even out
batches, unlike the training stream). Each image is resized to the encoder's input side
(shards.augment's "none": area averaging when shrunk, bilinear when enlarged) and normalised
with its own shard set's per-channel statistics, (x - mean) / std, as pretraining did.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from shards import sample_stages as reading
from shards.augment import Augment
from shards.stream import StreamSource, open_source
from trainer.probe.encoder import Encoder, ProbeError


@dataclass
class SplitFeatures:
    features: torch.Tensor  # (N, D) float32 on the CPU
    keys: list[str]
    patients: list[str]
    labels: list[dict[str, Any]]  # each sample's labels, as its json member has them
    skipped: int  # samples the handler let go (named in its warnings)


def split_features(encoder: Encoder, root: str, split: str, *, crop_kinds: tuple[str, ...] | None = None,
                   batch_size: int = 64, handler: reading.Handler = reading.raise_sample_error,
                   progress: bool = True) -> SplitFeatures:
    """Features of `root`'s `split` (only `crop_kinds` when given). Raises ProbeError when the
    set's channels are not the encoder's."""
    try:
        source = open_source(StreamSource(root, split, crop_kinds=crop_kinds))
    except (OSError, ValueError) as exc:
        raise ProbeError(str(exc)) from exc
    if source.channels != encoder.in_chans:
        raise ProbeError(f"{root}: {source.channels}-channel images, but the encoder was pretrained on "
                         f"{encoder.in_chans} channels")
    device = next(encoder.model.parameters()).device
    mean = torch.tensor(source.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    scale = (1.0 / torch.tensor(source.std, dtype=torch.float64)).to(device, torch.float32).view(1, -1, 1, 1)
    resize = Augment("none", encoder.img_size)
    counting = reading.CountingHandler(handler)
    samples = reading.tar_samples([span.path for span in source.shards], counting)
    samples = reading.parse_meta(samples, counting)
    samples = reading.select_crop_kinds(samples, source.crop_kinds)
    samples = reading.decode(samples, counting, channels=source.channels)
    out = SplitFeatures(torch.empty(0), [], [], [], 0)
    parts = []
    total = sum(span.samples for span in source.shards)
    with tqdm(total=total, unit="img", desc=f"features {split}", disable=not progress, file=sys.stderr,
              mininterval=1.0) as bar:
        while chunk := list(itertools.islice(samples, batch_size)):
            images = torch.from_numpy(np.stack([resize(s["pixels"]) for s in chunk])).to(device)
            with torch.inference_mode():
                parts.append(encoder.model((images.to(torch.float32) - mean) * scale).float().cpu())
            for s in chunk:
                out.keys.append(s["__key__"])
                out.patients.append(s["meta"].patient)
                out.labels.append(s["meta"].labels)
            bar.update(len(chunk))
    out.features = torch.cat(parts) if parts else torch.empty(0, encoder.feature_dim)
    out.skipped = counting.skipped
    return out
