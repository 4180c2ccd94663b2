"""Typed experiment configuration: one YAML per experiment, dotted command-line overrides.

    python trainer/pretrain.py --config trainer/configs/miram_cbis.yaml optim.epochs=10 data.batch_size=32

Defaults live in the dataclasses; the resolved configuration is saved in the run folder and inside
every checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shards.storage import shard_root

KEEP_BY = ("newest", "val_loss")  # run.keep_by: which checkpoints a run keeps (trainer/checkpoints.py)


class ConfigError(ValueError):
    pass


BAD_SAMPLES = ("stop", "skip")  # data.bad_samples: the keys of shards.stream.BAD_SAMPLE_HANDLERS (not imported: cv2)


@dataclass
class SourceConfig:
    """One shard set in the mix (MIRAM's "MGs & Lesions" mixes lesion sets and random-crop sets)."""

    root: str = ""
    split: str = "train"
    weight: float = 1.0
    crop_kinds: list[str] | None = None  # e.g. ["lesion"]; None keeps every kind
    name: str | None = None  # in each batch's "source" and the checkpoint; None: the card's source (+ folder if shared)


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    batch_size: int = 64  # per worker
    num_workers: int = 4  # DataLoader processes per training worker
    augment: str = "mae"
    image_size: int | None = None  # None: the shards' own size
    # stop: the first sample that cannot be read ends the run, naming its shard and key;
    # skip: it is left out with a warning naming them, and counted (epochs.csv: skipped_samples)
    bad_samples: str = "stop"


@dataclass
class ModelConfig:
    name: str = "miram_vit_base_patch16"
    options: dict[str, Any] = field(default_factory=dict)  # method keyword arguments (mask_ratio, ...)


@dataclass
class OptimConfig:
    """MAE's recipe (He et al. 2022, Table 8): AdamW, lr = blr * global batch / 256, cosine decay
    after a linear warm-up. `name` is any timm optimizer (adamw, lars, sgd, lamb, ...): betas go
    to the Adam family, momentum to the others (VICReg / MLVICX train with LARS)."""

    name: str = "adamw"
    blr: float = 1.5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    momentum: float = 0.9
    epochs: int = 400
    warmup_epochs: int = 40
    # batches whose gradients are summed into one optimizer step (MAE's accum_iter): the effective
    # batch, which lr scales with, is data.batch_size x run.workers x this
    accumulate_steps: int = 1
    min_lr: float = 0.0
    clip_grad: float | None = None
    # false: no weight decay on biases and norm layers (MAE, VICReg, SimCLR); true: on every
    # parameter, as SimSiam's and PCRLv2's released SGD(model.parameters(), ...) decays them
    decay_norms_and_biases: bool = False


@dataclass
class RunConfig:
    name: str = "pretrain"
    storage_path: str = "runs"  # local folder or shared storage (NFS path, s3://...)
    seed: int = 0
    workers: int = 1  # Ray Train workers (one per GPU)
    use_gpu: str = "auto"  # auto | true | false
    # CPUs Ray reserves for each worker. null: Ray Train's own default (1 without GPUs, none beside
    # a GPU). A worker's loader uses data.num_workers + 1 processes: reserve that many where other
    # jobs share the nodes, so that Ray does not place them on the CPUs the loaders need.
    cpus_per_worker: float | None = None
    accelerator_type: str | None = None  # only nodes with this GPU (Ray's name: A100, V100, H100, ...)
    precision: str = "auto"  # auto (bf16 on GPUs that have it, else fp16; fp32 on CPU) | bf16 | fp16 | fp32
    checkpoint_every_epochs: int = 1
    keep_checkpoints: int = 3
    # newest: the newest keep_checkpoints; val_loss: the keep_checkpoints with the lowest val_loss,
    # and the newest (trainer/checkpoints.py); needs validation passes, each with a checkpoint
    keep_by: str = "newest"
    log_every_steps: int = 20
    progress_every_s: float = 60.0  # within an epoch, a step line at most this often (at logging steps)
    images_every_steps: int = 500
    max_steps_per_epoch: int | None = None  # cut epochs short (smoke runs)
    max_failures: int = 0  # worker failures Ray Train recovers from (restarts from the last checkpoint)
    use_ray: bool = True  # false: run the same loop in this process, for debugging


@dataclass
class ValidationConfig:
    """The method's loss on held-out shards after training epochs (trainer/validation.py): the
    same sources' `split` split, read in the same order and masked and augmented alike at every
    pass, so that its curve shows over- or underfitting rather than sampling noise."""

    every_epochs: int = 0  # 0: no validation; else after every this many epochs, and after the last
    split: str = "val"
    batch_size: int | None = None  # per worker; null: data.batch_size (a split smaller than a global batch needs less)
    max_batches: int | None = None  # per worker and pass; null: the whole split


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, raw: Any, where: str) -> Any:
    """Dict -> dataclass, recursively, with unknown keys named and types checked loosely."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {unknown}; valid: {sorted(names)}")
    kwargs = {}
    for name, value in raw.items():
        hint, path = hints[name], f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hint, value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{path}: may not be null")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        non_null = [a for a in args if a is not type(None)]
        return _coerce(non_null[0], value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, path) for a, v in zip(args, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {hint.__name__}, got {value!r}")
    return value


def apply_override(raw: dict[str, Any], override: str) -> None:
    """'optim.epochs=10' -> raw['optim']['epochs'] = 10 (the value is parsed as YAML)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    dotted, text = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {key} is not a section")
    try:
        node[keys[-1]] = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"override {override!r}: its value is not YAML ({problem}); quote it for the shell, "
                          f"e.g. \"data.sources=[{{root: /shards/x}}]\"") from None


def _positive(value: Any) -> bool:
    return value >= 1


def _non_negative(value: Any) -> bool:
    return value >= 0


# (dotted key, test, what the value must be): checked when the config is loaded, so that a value
# out of range is a config error naming its key, not a ZeroDivisionError or KeyError in every
# Ray worker after the cluster has started (log_every_steps=0, precision=fp8, ...).
_RANGES: tuple[tuple[str, Any, str], ...] = (
    ("data.batch_size", _positive, "1 or more"),
    ("data.num_workers", _non_negative, "0 or more"),
    ("data.image_size", lambda v: v is None or v >= 1, "null (the shards' size) or 1 or more"),
    ("optim.blr", lambda v: v > 0 and math.isfinite(v), "a number above 0"),
    ("optim.weight_decay", _non_negative, "0 or more"),
    ("optim.betas", lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    ("optim.momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.epochs", _positive, "1 or more"),
    ("optim.accumulate_steps", _positive, "1 or more"),
    ("optim.warmup_epochs", _non_negative, "0 or more"),  # may pass epochs: a short run of a long recipe
    ("optim.min_lr", _non_negative, "0 or more"),
    ("optim.clip_grad", lambda v: v is None or v > 0, "null (no clipping) or above 0"),
    ("run.seed", _non_negative, "0 or more"),
    ("run.workers", _positive, "1 or more"),
    ("run.use_gpu", lambda v: v.lower() in ("auto", "true", "false"), "auto, true or false"),
    ("run.cpus_per_worker", lambda v: v is None or (v >= 0 and math.isfinite(v)), "null (Ray's default) or 0 or more"),
    ("run.accelerator_type", lambda v: v is None or v.strip() != "", "null (any) or a GPU type such as A100"),
    ("run.precision", lambda v: v in ("auto", "bf16", "fp16", "fp32"), "auto, bf16, fp16 or fp32"),
    ("run.checkpoint_every_epochs", _positive, "1 or more"),
    ("run.keep_checkpoints", _positive, "1 or more"),
    ("run.keep_by", lambda v: v in KEEP_BY, " or ".join(KEEP_BY)),
    ("run.log_every_steps", _positive, "1 or more"),
    ("run.progress_every_s", _non_negative, "0 (every logging step) or more"),
    ("run.images_every_steps", _positive, "1 or more"),
    ("run.max_steps_per_epoch", lambda v: v is None or v >= 1, "null (whole epochs) or 1 or more"),
    ("run.max_failures", lambda v: v >= -1, "-1 (retry forever), 0 or more"),
    ("validation.every_epochs", _non_negative, "0 (no validation) or more"),
    ("validation.split", lambda v: v.strip() != "", "a split name such as val"),
    ("validation.batch_size", lambda v: v is None or v >= 1, "null (data.batch_size) or 1 or more"),
    ("validation.max_batches", lambda v: v is None or v >= 1, "null (the whole split) or 1 or more"),
)


def check_ranges(config: ExperimentConfig) -> None:
    """ConfigError naming the first key whose value is out of range."""
    for dotted, test, wanted in _RANGES:
        value = functools.reduce(getattr, dotted.split("."), config)
        if not test(value):
            raise ConfigError(f"{dotted}: must be {wanted}, got {value!r}")
    if config.run.keep_by == "val_loss" and not config.validation.every_epochs:
        raise ConfigError("run.keep_by: val_loss ranks checkpoints by their validation pass, and "
                          "validation.every_epochs is 0 (none); set it, e.g. validation.every_epochs=10")
    if config.run.keep_by == "val_loss" and config.validation.every_epochs % config.run.checkpoint_every_epochs:
        raise ConfigError(f"run.keep_by: val_loss ranks the checkpoints written after a validation pass, and with "
                          f"validation.every_epochs={config.validation.every_epochs} and run.checkpoint_every_epochs="
                          f"{config.run.checkpoint_every_epochs} most passes have none; make every_epochs a multiple "
                          "of checkpoint_every_epochs")
    for i, source in enumerate(config.data.sources):
        if not (source.weight > 0 and math.isfinite(source.weight)):
            raise ConfigError(f"data.sources[{i}].weight: must be a number above 0, got {source.weight!r}")
        if config.validation.every_epochs and source.split == config.validation.split:
            raise ConfigError(f"validation.split: {source.split!r} is what data.sources[{i}] trains on; a loss on "
                              "the training samples says nothing of overfitting (val, the held-out patients, is the default)")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> ExperimentConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the config ({exc})") from exc
    for override in overrides:
        apply_override(raw, override)
    config = _build(ExperimentConfig, raw, "")
    if not config.data.sources:
        raise ConfigError("data.sources: name at least one shard set (root: path/to/shards)")
    for source in config.data.sources:  # against the current folder here, not each Ray worker's own
        source.root = shard_root(source.root) if source.root else source.root
    if config.data.bad_samples not in BAD_SAMPLES:
        raise ConfigError(f"data.bad_samples: {config.data.bad_samples!r} is not one of {list(BAD_SAMPLES)}")
    check_ranges(config)
    return config


def config_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    return _build(ExperimentConfig, raw, "")


def dump_config(config: ExperimentConfig) -> str:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return yaml.safe_dump(plain(config.to_dict()), sort_keys=False)
