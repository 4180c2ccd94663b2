"""`python trainer/pretrain.py --config ... --dry-run`: the config, its data and its model checked,
and the run they describe printed; nothing started or written."""

from __future__ import annotations

import sys
from pathlib import Path

from trainer.checkpoints import SCORE
from trainer.config import ExperimentConfig
from trainer.loop import DataPlan, effective_batch, first_batch_terms
from trainer.optimizer_steps import updates_per_epoch
from trainer.registry import build_method
from trainer.worker_resources import configured_gpu, describe, per_worker


def ray_ask(config: ExperimentConfig) -> str:
    """What one worker asks Ray for, for --dry-run (run.use_gpu=auto decides on the cluster)."""
    gpu = configured_gpu(config.run)
    if gpu is not None:
        return describe(per_worker(config.run, gpu))
    return (f"{describe(per_worker(config.run, True))} where the cluster has GPUs, "
            f"else {describe(per_worker(config.run, False))}")


def kept_line(run) -> str:
    """The dry run's word on which checkpoints stay (trainer/checkpoints.py)."""
    if run.keep_by == SCORE:
        return f"the {run.keep_checkpoints} with the lowest val_loss and the newest kept"
    return f"newest {run.keep_checkpoints} kept"


def validation_line(config: ExperimentConfig, plan: DataPlan) -> str:
    """The dry run's word on validation passes."""
    val = plan.validation
    if val is None:
        return "  val:   none (validation.every_epochs=0)"
    return (f"  val:   split {config.validation.split!r}, {val.steps} batch(es) of {val.batch_size}, the whole pass on "
            f"each worker, after every {config.validation.every_epochs} epoch(s) and the last "
            f"({val.num_workers} loader process(es))")


def dry_run(config: ExperimentConfig, plan: DataPlan, world_size: int, run_dir: Path) -> int:
    """`--dry-run`: the model built for the data and run on two of its samples, and the run the
    config describes; nothing started or written. Both happen here on the CPU (a ViT-B takes a few
    seconds), so that an option the method does not take, or one it fails on, is found before a
    cluster is."""
    try:
        model = build_method(config.model.name, in_chans=plan.channels, img_size=plan.image_size,
                             **config.model.options)
        terms = first_batch_terms(config, plan, model)
    except Exception as exc:  # noqa: BLE001 -- whatever the method raises is the message: this is a check
        print(f"pretrain: model error: {config.model.name} with options {config.model.options} on this data: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    optim, global_batch = config.optim, effective_batch(config, world_size)
    where = "Ray Train workers" if config.run.use_ray else "process (run.use_ray=false)"
    accumulated = (f" x {optim.accumulate_steps} batches accumulated = {global_batch} a step"
                   if optim.accumulate_steps > 1 else "")
    updates = updates_per_epoch(plan.steps_per_epoch, optim.accumulate_steps)
    lines = [
        "pretrain --dry-run: the config, its data and its model are usable; nothing was started or written",
        *(f"  data:  {s.name} (weight {s.weight:g}): {len(s.shards)} shards, pixel mean {list(s.mean)} "
          f"std {list(s.std)}" for s in plan.sources),
        f"  input: {plan.channels} channel(s) x {plan.image_size} px; {plan.steps_per_epoch} batch(es) an epoch on each "
        f"of {world_size} {where}, batch {config.data.batch_size} each (global "
        f"{config.data.batch_size * world_size}{accumulated})",
        f"  model: {config.model.name}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
        f"on 2 samples: " + " ".join(f"{k} {v:.4f}" for k, v in terms.items()),
        f"  optim: {optim.name}, lr {optim.blr * global_batch / 256:.3g} (blr {optim.blr:g} x {global_batch} / 256), "
        f"{optim.epochs} epochs ({optim.warmup_epochs} warm-up) = {optim.epochs * updates} optimizer steps",
        *([f"  ray:   each of {world_size} worker(s) asks Ray for " + ray_ask(config)] if config.run.use_ray else []),
        validation_line(config, plan),
        f"  run:   {run_dir} (checkpoints under {config.run.storage_path}, every "
        f"{config.run.checkpoint_every_epochs} epoch(s), {kept_line(config.run)})",
    ]
    print("\n".join(lines))
    return 0
