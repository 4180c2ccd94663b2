"""The pretraining loop, free of Ray: the same function runs in a Ray Train worker or in one
process for debugging. What differs (rank, device, DDP wrapping, where checkpoints go) comes in
through a `Session` (trainer/pretrain.py has the Ray one and the local one).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from shards import schema, storage
from shards.stream import (BAD_SAMPLE_HANDLERS, OpenSource, ShardStream, StreamSource, make_loader, open_source,
                           to_device)
from trainer.checkpoints import METRICS_FILE, metrics_json
from trainer.config import ExperimentConfig, OptimConfig, dump_config
from trainer.device_batches import DataWait, device_batches
from trainer.gpu_memory import gpu_memory_error
from trainer.optimizer_steps import OptimizerSteps, updates_per_epoch
from trainer.pictures import reconstruction_grid, write_png
from trainer.registry import build_method
from trainer.run_log import RunLog, epoch_line, step_line
from trainer.validation import (ValidationPlan, is_due, make_validation_loader, plan_validation, save_val_pictures,
                                val_metrics, validate)

CHECKPOINT_FILE = "checkpoint.pt"


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module: ...

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None: ...

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]: ...


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision on GPU (bf16 where the GPU has it, else fp16), none on CPU."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """A checkpoint's optimizer state (moments, step counts) under this config's hyperparameters:
    torch's load_state_dict also restores each group's lr, weight decay and betas as they were
    saved, so a resumed run with a new optim.weight_decay or blr would silently keep the old."""
    configured = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, settings in zip(optimizer.param_groups, configured):
        group.update(settings)


def build_optimizer(model: torch.nn.Module, optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer factory (no weight decay on biases and norms unless
    optim.decay_norms_and_biases); betas for the Adam family, momentum for SGD/LARS and the rest."""
    name = optim.name.lower()
    extra = {"betas": optim.betas} if "adam" in name or name in ("lamb", "lion") else {"momentum": optim.momentum}
    return create_optimizer_v2(model, name, lr=lr, weight_decay=optim.weight_decay,
                               filter_bias_and_bn=not optim.decay_norms_and_biases, **extra)


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """values averaged over every rank of the process group (as MAE's main_pretrain.py logs
    misc.all_reduce_mean of the loss), so what rank 0 logs is the whole batch's figure, not its
    own shard of it; unchanged in one process. Every rank must call it at the same step: the
    stream gives every rank the same number of batches, so they reach each step together."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    names = sorted(values)
    totals = torch.tensor([values[name] for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return dict(zip(names, (totals / dist.get_world_size()).tolist()))


def data_shape(sources: list[StreamSource], image_size: int | None) -> tuple[int, int]:
    """(channels, image side) shared by every source, from their cards and manifests (image_size,
    when given, is what the stream resizes to): the model is built for the data, never for RGB."""
    shapes = set()
    for source in sources:
        channels = open_source(source).channels
        if image_size:  # the manifest is read only to find the side (every worker reads it, from a bucket too)
            sides = {image_size}
        else:
            table = storage.read_parquet(storage.join(source.root, schema.MANIFEST_FILE), columns=["height", "width"])
            sides = set(table.column("height").to_pylist()) | set(table.column("width").to_pylist())
        if len(sides) != 1:
            raise ValueError(f"{source.root}: samples of several sizes {sorted(sides)}; set data.image_size")
        shapes.add((channels, sides.pop()))
    if len(shapes) != 1:
        raise ValueError(f"the sources disagree on (channels, size): {sorted(shapes)}")
    return shapes.pop()


def stream_sources(config: ExperimentConfig) -> list[StreamSource]:
    return [StreamSource(root=s.root, split=s.split, weight=s.weight, name=s.name,
                         crop_kinds=tuple(s.crop_kinds) if s.crop_kinds else None) for s in config.data.sources]


class DataPlan(NamedTuple):
    """What check_data found: the data's shape, each rank's steps an epoch, the opened sources."""

    channels: int
    image_size: int
    steps_per_epoch: int
    sources: list[OpenSource]
    validation: ValidationPlan | None = None  # None: no validation passes


def check_data(config: ExperimentConfig, world_size: int) -> DataPlan:
    """What every worker will open, checked once before any starts (the driver, under Ray): every
    source's card, split, crop kinds and pixel statistics, one (channels, size) for all, the
    augmentation, and an epoch plan for `world_size` ranks of data.num_workers DataLoader workers
    each (enough shards for every reader), and the val stream when validation is on. Raises
    ValueError or OSError naming what is wrong. Reads cards and manifests only."""
    sources = stream_sources(config)
    channels, image_size = data_shape(sources, config.data.image_size)
    stream = ShardStream(sources, batch_size=config.data.batch_size, image_size=image_size, world_size=world_size,
                         num_workers=config.data.num_workers, seed=config.run.seed, augment=config.data.augment)
    steps = stream.steps_per_epoch
    if config.run.max_steps_per_epoch:
        steps = min(steps, config.run.max_steps_per_epoch)
    validation = plan_validation(config, sources, image_size) if config.validation.every_epochs else None
    return DataPlan(channels, image_size, steps, stream.sources, validation)


def first_batch_terms(config: ExperimentConfig, plan: DataPlan, model: torch.nn.Module,
                      samples: int = 2) -> dict[str, float]:
    """The method's loss terms on `samples` real samples of the data, streamed, augmented and
    finished as training does them (CPU, no gradients): a dry run's proof that data and model fit
    together. Raises whatever the stream or the model raises; FloatingPointError for a loss that
    is not finite."""
    loader, _ = make_loader(stream_sources(config), batch_size=samples, image_size=plan.image_size,
                            seed=config.run.seed, augment=config.data.augment, samples_per_epoch=samples,
                            handler=BAD_SAMPLE_HANDLERS[config.data.bad_samples], labels=False)
    batch = to_device(next(iter(loader)), "cpu")
    with torch.no_grad():
        terms = {name: float(value) for name, value in model(batch).items()}
    if not math.isfinite(terms["loss"]):
        raise FloatingPointError(f"the loss on {samples} samples is {terms['loss']}")
    return terms


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """torch's seed for one rank's epoch: a run resumed at an epoch draws the masks and drop-paths
    an uninterrupted run drew there (the stream seeds its shuffles and augmentation alike)."""
    return int(np.random.SeedSequence(seed, spawn_key=(rank, epoch)).generate_state(1)[0])


def effective_batch(config: ExperimentConfig, world_size: int) -> int:
    """Samples an optimizer step sees: the batch a worker x workers x accumulated batches (MAE's
    eff_batch_size, which sets lr = blr x it / 256)."""
    return config.data.batch_size * world_size * config.optim.accumulate_steps


def train(config: ExperimentConfig, session: Session, run_dir: Path) -> dict[str, float]:
    """Pretrain `config.model` on `config.data`; returns the last epoch's metrics."""
    run, optim = config.run, config.optim
    torch.manual_seed(run.seed + session.rank)
    sources = stream_sources(config)
    channels, image_size = data_shape(sources, config.data.image_size)
    loader, steps_per_epoch = make_loader(
        sources, batch_size=config.data.batch_size, rank=session.rank, world_size=session.world_size,
        num_workers=config.data.num_workers, seed=run.seed, augment=config.data.augment, image_size=image_size,
        # batches land in pinned memory, so to_device's copy to the GPU is an asynchronous DMA; and
        # the GPU resizes the crops MAE's augmentation enlarges (shards.device_crops)
        pin_memory=session.device.type == "cuda", resize_on_device=session.device.type == "cuda",
        handler=BAD_SAMPLE_HANDLERS[config.data.bad_samples],
        labels=False,  # self-supervised: no sample's json is read (shards.indexed_read)
    )
    if run.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, run.max_steps_per_epoch)
    # In every checkpoint: what the model was built for and how its inputs were normalised, so
    # the encoder can be exported and fine-tuned without the shards (trainer/export_encoder.py).
    data = {"in_chans": channels, "img_size": image_size,
            "sources": [{"name": s.name, "mean": list(s.mean), "std": list(s.std), "dtype": s.dtype}
                        for s in loader.dataset.sources]}

    model = build_method(config.model.name, in_chans=channels, img_size=image_size, **config.model.options)
    model = session.prepare_model(model.to(session.device))
    optimizer = build_optimizer(_unwrap(model), optim, optim.blr * effective_batch(config, session.world_size) / 256)
    # A step is an optimizer step: with optim.accumulate_steps > 1, several batches make one.
    updates = updates_per_epoch(steps_per_epoch, optim.accumulate_steps)
    total_steps = optim.epochs * updates
    scheduler = lr_schedule(optimizer, total_steps, optim.warmup_epochs * updates, optim.min_lr)
    dtype = amp_dtype(run.precision, session.device)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    steps = OptimizerSteps(model, optimizer, scaler, accumulate=optim.accumulate_steps, clip_grad=optim.clip_grad)

    start_epoch, step = 0, 0
    with session.latest_checkpoint() as ckpt_dir:
        if ckpt_dir is not None:
            state = torch.load(ckpt_dir / CHECKPOINT_FILE, map_location=session.device, weights_only=True)
            _unwrap(model).load_state_dict(state["model"])
            load_optimizer_state(optimizer, state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            start_epoch, step = state["epoch"] + 1, state["step"]
            # The schedule is this config's, at the step reached (MAE's main_pretrain.py computes
            # lr from its args at every step, resumed or not): the checkpoint's scheduler state
            # held the old run's length, so `--resume optim.epochs=800` trained on at min_lr.
            scheduler.step_update(step)
    val_plan = plan_validation(config, sources, image_size) if config.validation.every_epochs else None
    val_loader = None  # made at the first pass
    log = RunLog(run_dir, resumed_at=step) if session.rank == 0 else None
    metrics: dict[str, float] = {}
    epoch, phase = start_epoch, "training"
    try:
        for epoch in range(start_epoch, optim.epochs):
            phase = "training"
            loader.dataset.set_epoch(epoch)
            torch.manual_seed(epoch_seed(run.seed, session.rank, epoch))  # masks, drop-path: as if never stopped
            model.train()
            sums: dict[str, float] = {}
            skipped = 0
            started = last_line = time.perf_counter()
            wait = DataWait()
            for i, batch in device_batches(loader, steps_per_epoch, session.device, wait):
                skipped += batch["skipped"]
                with steps.batch(i, steps_per_epoch):  # DDP: no all-reduce but at a group's last batch
                    with torch.autocast(session.device.type, dtype=dtype, enabled=dtype is not None):
                        terms = model(batch)
                    loss = terms["loss"]
                    if not math.isfinite(loss.item()):
                        raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {step} (batch {i}); "
                                                 "stopping")
                    stepped = steps.backward(loss)
                values = {name: float(value.detach()) for name, value in terms.items()}
                for name, value in values.items():
                    sums[name] = sums.get(name, 0.0) + value
                if not stepped:
                    continue  # gradients summed; the optimizer steps at the group's last batch
                step += 1
                scheduler.step_update(step)
                if hasattr(_unwrap(model), "on_step_end"):  # EMA teachers follow the student here
                    _unwrap(model).on_step_end(step / total_steps)
                if step % run.log_every_steps == 0:
                    values = mean_over_ranks(values, session.device)  # on every rank, before rank 0 logs
                    if log:
                        lr = optimizer.param_groups[0]["lr"]
                        log.step(step, values | {"lr": lr, "epoch": epoch})
                        now = time.perf_counter()
                        if now - last_line >= run.progress_every_s:  # a long epoch shows its progress
                            rate = (i + 1) * config.data.batch_size * session.world_size / (now - started)
                            print(step_line(epoch=epoch, epochs=optim.epochs, done=i + 1, steps_per_epoch=steps_per_epoch,
                                            step=step, values=values, lr=lr, samples_per_s=rate,
                                            elapsed_s=now - started, data_wait=wait.seconds / (now - started)),
                                  flush=True)
                            last_line = now
                if log and hasattr(_unwrap(model), "reconstruct") and (step % run.images_every_steps == 0 or step == 1):
                    _save_pictures(model, batch, run_dir / "images" / f"step_{step:07d}.png")
            if steps.finish_epoch():  # a loader that ended early left a group unfinished
                step += 1
                scheduler.step_update(step)
            seen = max(1, min(steps_per_epoch, i + 1))
            seconds = time.perf_counter() - started
            means = mean_over_ranks({**{k: v / seen for k, v in sums.items()}, "skipped_samples": skipped,
                                     "data_wait": wait.seconds / seconds}, session.device)  # equal steps per rank
            means["skipped_samples"] = round(means["skipped_samples"] * session.world_size)  # all ranks' total
            metrics = {"epoch": epoch, **means, "step": step, "lr": optimizer.param_groups[0]["lr"],
                        "samples_per_s": seen * config.data.batch_size * session.world_size / seconds}
            if val_plan is not None and is_due(config, epoch):
                if val_loader is None:
                    val_loader = make_validation_loader(config, val_plan, image_size, session.device)
                phase = "validation"
                # every rank runs the same whole pass (trainer/validation.py): the same figure, no collective
                checked = validate(_unwrap(model), val_loader, val_plan.steps, seed=run.seed, device=session.device,
                                   dtype=dtype)
                metrics |= val_metrics({**checked.terms, "skipped": checked.skipped})
                if log and hasattr(_unwrap(model), "reconstruct") and checked.first_batch is not None:
                    save_val_pictures(_unwrap(model), checked.first_batch,
                                      run_dir / "images" / f"val_epoch_{epoch + 1:04d}.png", seed=run.seed,
                                      device=session.device)
            if log:
                log.epoch(step, metrics)
                print(epoch_line(metrics, optim.epochs, seconds), flush=True)
            last = epoch == optim.epochs - 1
            if (epoch + 1) % run.checkpoint_every_epochs == 0 or last:
                _report_with_checkpoint(session, metrics, model, optimizer, scheduler, scaler, epoch, step, config, data)
            else:
                session.report(metrics, None)
    except torch.OutOfMemoryError as exc:  # GPU memory: say which settings to lower, not only torch's allocation
        raise gpu_memory_error(exc, config, phase=phase, epoch=epoch, step=step, device=session.device) from exc
    finally:
        if log:
            log.close()
    return metrics


def _report_with_checkpoint(session, metrics, model, optimizer, scheduler, scaler, epoch, step, config,
                            data) -> None:
    """Rank 0 writes the checkpoint (model, optimizer, scheduler, scaler, step, epoch, resolved
    config, the data's shape and normalisation) and the epoch's metrics beside it; every rank
    reports, as Ray Train requires."""
    if session.rank != 0:
        session.report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="medshards-ckpt-") as tmp:
        torch.save({
            "model": _unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "step": step,
            "config": config.to_dict(),
            "config_yaml": dump_config(config),
            "data": data,
        }, Path(tmp) / CHECKPOINT_FILE)
        (Path(tmp) / METRICS_FILE).write_bytes(metrics_json(metrics))  # its rank (trainer/checkpoints.py)
        session.report(metrics, Path(tmp))


def lr_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                min_lr: float) -> CosineLRScheduler:
    """Linear warm-up from 0 to the peak lr, then half a cosine to min_lr over the steps left: MAE's
    lr_sched.adjust_learning_rate (and VICReg's, SimCLR's), by optimizer step. timm's default
    (warmup_prefix False) runs the cosine over the whole run, warm-up included, so the peak is
    never reached (0.98x of it after MAE's 40 of 500 epochs) and the decay runs ahead of MAE's."""
    return CosineLRScheduler(optimizer, t_initial=max(1, total_steps - warmup_steps), lr_min=min_lr,
                             warmup_t=warmup_steps, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)


@torch.no_grad()
def _save_pictures(model: torch.nn.Module, batch: dict[str, Any], path: Path) -> None:
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    columns = net.reconstruct(batch["image"][:4])
    net.train(was_training)
    write_png(path, reconstruction_grid(columns))
