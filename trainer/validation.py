"""The method's loss on held-out shards, after training epochs (config section `validation`).

Self-supervised pretraining on a few thousand medical images overfits: the training loss keeps
falling while the encoder stops improving. A loss on the val split (ingest carves it out of the
training patients) shows it. For the curve to mean that, and not sampling noise, every pass is the
same measurement of a different model:

- the same samples in the same order: the val stream is planned for epoch 0 at every pass (the
  stream's shuffles are seeded by epoch, shards.stream_plan);
- augmentation "none" (the crop resized to the model's input), and the method's own randomness
  (MAE's masks, contrastive views) drawn from one fixed seed per rank, inside torch.random.fork_rng,
  so the training run's own random numbers are left as they were (a resumed run stays equal to an
  uninterrupted one);
- the model in eval mode (BatchNorm's running statistics, no dropout or drop-path), no gradients,
  the DDP wrapper bypassed.

Every Ray Train worker runs the whole pass, on the same samples with the same seed, so all get
the same figure without a collective and none waits for another. A val split is small (a tenth
of the patients), often one or two shards: split between workers it could not give each a shard
of its own (shards.stream_plan), and a pass is a small share of an epoch.

Loss terms that depend on the batch (contrastive negatives, VICReg's variance and covariance)
are comparable between passes, and with the training figures only at the same batch size.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from shards.stream import (BAD_SAMPLE_HANDLERS, OpenSource, ShardStream, StreamLoader, StreamSource, make_loader,
                           open_source)
from shards.stream_plan import StreamPlanError
from trainer.config import ExperimentConfig
from trainer.device_batches import device_batches
from trainer.pictures import reconstruction_grid, write_png

AUGMENT = "none"
# Loader processes for the val stream (fewer where the split has too few shards for them): a
# pass is a small share of an epoch, and persistent workers hold memory for the whole run.
MAX_WORKERS = 2


class ValidationPlan(NamedTuple):
    sources: list[OpenSource]  # opened: the loader reads no card or manifest again
    batch_size: int
    num_workers: int
    steps: int  # batches a rank runs a pass


def is_due(config: ExperimentConfig, epoch: int) -> bool:
    """Whether a pass follows this (0-based) epoch: every `every_epochs`, and after the last."""
    every = config.validation.every_epochs
    return every > 0 and ((epoch + 1) % every == 0 or epoch == config.optim.epochs - 1)


def plan_validation(config: ExperimentConfig, sources: list[StreamSource], image_size: int) -> ValidationPlan:
    """The val stream each worker reads whole: the training sources' `validation.split`, with as
    many loader processes (data.num_workers, at most MAX_WORKERS) as its shards allow. ValueError
    naming the split and what to change where it cannot fill one batch."""
    val = config.validation
    batch_size = val.batch_size or config.data.batch_size
    try:  # each card and manifest read once, for every loader count tried below and for the loader
        held_out = [open_source(dataclasses.replace(s, split=val.split)) for s in sources]
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"validation on split {val.split!r}: {exc} (validation.every_epochs=0 for none)") from exc
    for workers in range(min(config.data.num_workers, MAX_WORKERS), -1, -1):  # fewer readers for fewer shards
        try:
            stream = ShardStream(held_out, batch_size=batch_size, image_size=image_size, num_workers=workers,
                                 seed=config.run.seed, augment=AUGMENT, labels=False)
        except StreamPlanError as exc:
            short = exc
            continue
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"validation on split {val.split!r}: {exc} (validation.every_epochs=0 for none)") from exc
        steps = min(stream.steps_per_epoch, val.max_batches or stream.steps_per_epoch)
        return ValidationPlan(held_out, batch_size, workers, steps)
    raise ValueError(f"validation on split {val.split!r}: {short}; set validation.batch_size lower, "
                     "or validation.every_epochs=0 for none") from short


def make_validation_loader(config: ExperimentConfig, plan: ValidationPlan, image_size: int,
                           device: torch.device) -> StreamLoader:
    """A worker's val loader, the whole split (made once: its processes persist across passes)."""
    loader, _ = make_loader(plan.sources, batch_size=plan.batch_size, num_workers=plan.num_workers,
                            seed=config.run.seed, augment=AUGMENT, image_size=image_size,
                            pin_memory=device.type == "cuda", resize_on_device=device.type == "cuda",
                            handler=BAD_SAMPLE_HANDLERS[config.data.bad_samples], labels=False)
    return loader


def pass_seed(seed: int) -> int:
    """torch's seed for a val pass: the same at every pass and on every worker (the masks and views
    it draws), apart from the training epochs' seeds (trainer.loop.epoch_seed)."""
    return int(np.random.SeedSequence(seed, spawn_key=(2**31,)).generate_state(1)[0])


class ValidationPass(NamedTuple):
    terms: dict[str, float]  # each loss term's mean over the pass's batches
    skipped: int  # samples left out as unreadable (data.bad_samples=skip)
    first_batch: dict[str, Any] | None  # the pass's first batch, on the device: the same samples every pass


@contextlib.contextmanager
def _held_still(net: torch.nn.Module, seed: int, device: torch.device) -> Iterator[None]:
    """Eval mode and torch's generators seeded from `seed` for the block; afterwards the model's
    mode and the generators' states (CPU, and the GPU's) are as they were."""
    was_training = net.training
    net.eval()
    cuda = [torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(pass_seed(seed))
            yield
    finally:
        net.train(was_training)


@torch.no_grad()
def validate(net: torch.nn.Module, loader: StreamLoader, steps: int, *, seed: int, device: torch.device,
             dtype: torch.dtype | None) -> ValidationPass:
    """One pass over `steps` val batches. `net` is the bare model (not DDP's wrapper)."""
    sums: dict[str, float] = {}
    skipped = seen = 0
    first = None
    with _held_still(net, seed, device):
        loader.dataset.set_epoch(0)  # the same samples, in the same order, every pass
        for _, batch in device_batches(loader, steps, device):
            first = batch if first is None else first
            skipped += batch["skipped"]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                terms = net(batch)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value)
            seen += 1
    return ValidationPass({name: total / max(seen, 1) for name, total in sums.items()}, skipped, first)


@torch.no_grad()
def save_val_pictures(net: torch.nn.Module, batch: dict[str, Any], path: Path, *, seed: int,
                      device: torch.device) -> None:
    """The method's reconstructions of the pass's first four samples, under the same masks every
    pass: one picture per pass shows how the same images come back as training goes on."""
    with _held_still(net, seed, device):
        columns = net.reconstruct(batch["image"][:4])
    write_png(path, reconstruction_grid(columns))


def val_metrics(terms: dict[str, Any]) -> dict[str, float]:
    """{'loss': 0.5, 'loss_fine': 0.6} -> {'val_loss': 0.5, 'val_loss_fine': 0.6}."""
    return {f"val_{name}": float(value) for name, value in terms.items()}
