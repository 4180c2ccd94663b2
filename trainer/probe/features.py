"""The frozen encoder's features of every sample of one split, each sample read exactly once.

Shards are read in the card's order (no shuffle, no repeats, nothing dropped to even out
batches, unlike the training stream). Each image is resized to the encoder's input side
(shards.augment's "none": area averaging when shrunk, bilinear when enlarged) and normalised
with its own shard set's per-channel statistics, (x - mean) / std, as pretraining did.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shards import sample_stages as reading
from shards.augment import Augment
from shards.progress_bar import progress_bar
from shards.stream import StreamSource, open_source
from trainer.probe.encoder import Encoder, ProbeError


@dataclass
class SplitFeatures:
    features: list[torch.Tensor]  # one (N, D) float32 tensor on the CPU per encoder, in the order given
    keys: list[str]
    patients: list[str]
    labels: list[dict[str, Any]]  # each sample's labels, as its json member has them
    skipped: int  # samples the handler let go (named in its warnings)


def split_features(encoders: Sequence[Encoder], root: str, split: str, *, crop_kinds: tuple[str, ...] | None = None,
                   batch_size: int = 64, handler: reading.Handler = reading.raise_sample_error,
                   progress: bool = True) -> SplitFeatures:
    """Each encoder's features of `root`'s `split` (only `crop_kinds` when given), every image
    read and decoded once for all of them (they share their input size and channels). Raises
    ProbeError when the set's channels are not the encoders'."""
    first = encoders[0]
    if any((e.in_chans, e.img_size) != (first.in_chans, first.img_size) for e in encoders):
        raise ValueError("encoders probed together must take the same input size and channels")
    try:
        source = open_source(StreamSource(root, split, crop_kinds=crop_kinds))
    except (OSError, ValueError) as exc:
        raise ProbeError(str(exc)) from exc
    if source.channels != first.in_chans:
        raise ProbeError(f"{root}: {source.channels}-channel images, but the encoder was pretrained on "
                         f"{first.in_chans} channels")
    device = next(first.model.parameters()).device
    mean = torch.tensor(source.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    scale = (1.0 / torch.tensor(source.std, dtype=torch.float64)).to(device, torch.float32).view(1, -1, 1, 1)
    resize = Augment("none", first.img_size)
    counting = reading.CountingHandler(handler)
    samples = reading.tar_samples([span.path for span in source.shards], counting)
    samples = reading.parse_meta(samples, counting)
    samples = reading.select_crop_kinds(samples, source.crop_kinds)
    samples = reading.decode(samples, counting, channels=source.channels)
    out = SplitFeatures([], [], [], [], 0)
    parts: list[list[torch.Tensor]] = [[] for _ in encoders]
    total = sum(span.samples for span in source.shards)
    with progress_bar(total=total, unit="img", desc=f"features {split}", enabled=progress) as bar:
        while chunk := list(itertools.islice(samples, batch_size)):
            images = torch.from_numpy(np.stack([resize(s["pixels"]) for s in chunk])).to(device)
            images = (images.to(torch.float32) - mean) * scale
            with torch.inference_mode():
                for encoder, part in zip(encoders, parts):
                    part.append(encoder.model(images).float().cpu())
            for s in chunk:
                out.keys.append(s["__key__"])
                out.patients.append(s["meta"].patient)
                out.labels.append(s["meta"].labels)
            bar.update(len(chunk))
    out.features = [torch.cat(part) if part else torch.empty(0, e.feature_dim) for e, part in zip(encoders, parts)]
    out.skipped = counting.skipped
    return out
