"""Where a run's checkpoints are, which of them it keeps (`run.keep_by`), and which is its best.

Layout: Ray Train's storage_path/NAME/checkpoint_*/ (a folder or a bucket prefix), or a one-process
run's RUN/checkpoints/epoch_NNNN/. Each folder holds loop.CHECKPOINT_FILE and METRICS_FILE, the
epoch's metrics as JSON (its row of epochs.csv, `val_loss` included on a validated epoch), so a
run's best checkpoint is found without loading any checkpoint (a ViT-B one with its optimizer
state is ~1 GB).

Retention, after every checkpoint:
- `newest` (the default): the newest `run.keep_checkpoints`;
- `val_loss`: the `run.keep_checkpoints` with the lowest val_loss, and always the newest (what
  `--resume` and a restarted worker continue from). A checkpoint of an epoch without a validation
  pass has no val_loss and ranks below every one that has; among equals the older goes first.
  This is Ray Train's rule for CheckpointConfig(num_to_keep=N, checkpoint_score_attribute=
  "val_loss", checkpoint_score_order="min") when every checkpoint's metrics carry val_loss, NaN
  where there was no pass (ray/train/v2/_internal/execution/checkpoint/checkpoint_manager.py and
  _insert_into_sorted_list, Ray 2.60: a NaN ranks lowest, and a metric left out ranks *highest*,
  so RaySession reports the NaN). A Ray run is given that config, and a one-process run applies
  the same rule here (kept), so both keep the same checkpoints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from shards import storage
from trainer.config import KEEP_BY

RAY_CHECKPOINT_PREFIX = "checkpoint_"
LOCAL_CHECKPOINTS = "checkpoints"
_LOCAL_EPOCH_GLOB = "epoch_[0-9][0-9][0-9][0-9]"  # not epoch_NNNN.tmp, a copy cut short
METRICS_FILE = "metrics.json"
SCORE = "val_loss"


def local_checkpoints(run_dir: Path) -> list[Path]:
    """A one-process run's complete checkpoint folders, oldest first."""
    return sorted((run_dir / LOCAL_CHECKPOINTS).glob(_LOCAL_EPOCH_GLOB))


def metrics_json(metrics: dict[str, Any]) -> bytes:
    """METRICS_FILE's bytes: strict JSON (a value that is not finite is written as null)."""
    plain = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
    return (json.dumps(plain, indent=1, sort_keys=True) + "\n").encode()


def score(metrics: dict[str, Any] | None) -> float | None:
    """The val_loss a checkpoint is ranked by; None where its epoch had no validation pass."""
    value = (metrics or {}).get(SCORE)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def kept(scores: list[float | None], keep: int, keep_by: str) -> list[bool]:
    """Which of a run's checkpoints (their scores, oldest first) the rule above keeps."""
    count = len(scores)
    if keep_by == "newest":
        return [i >= count - keep for i in range(count)]
    if keep_by != SCORE:
        raise ValueError(f"keep_by must be one of {KEEP_BY}, got {keep_by!r}")
    # worst first: unscored, then the highest val_loss; among equals the older
    order = sorted(range(count), key=lambda i: (scores[i] is not None, -(scores[i] or 0.0), i))
    best = set(order[-keep:]) | ({count - 1} if count else set())
    return [i in best for i in range(count)]


def read_metrics(folder: str | Path) -> dict[str, Any] | None:
    """A checkpoint folder's METRICS_FILE; None where it has none (written before it existed) or
    it cannot be read."""
    try:
        metrics = json.loads(storage.read_bytes(storage.join(folder, METRICS_FILE)))
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def checkpoint_val_loss(checkpoint_file: str | Path) -> float | None:
    """The val_loss of the epoch a checkpoint.pt (a path or a URI) was written at, from the
    METRICS_FILE beside it; None without a pass, or a checkpoint older than METRICS_FILE."""
    return score(read_metrics(storage.parent(checkpoint_file)))


def run_checkpoints(location: str | Path) -> list[str | Path]:
    """The checkpoint folders of a run: Ray Train's checkpoint_* under `location` (a folder or a
    URI), or a one-process run's checkpoints/epoch_*."""
    if storage.is_uri(str(location)):
        return [storage.join(str(location), name) for name in storage.list_subfolders(str(location))
                if name.startswith(RAY_CHECKPOINT_PREFIX)]
    path = Path(location)  # (beside Ray's folders lies its checkpoint_manager_snapshot.json)
    return [*sorted(p for p in path.glob(f"{RAY_CHECKPOINT_PREFIX}*") if p.is_dir()), *local_checkpoints(path)]


def best_checkpoint(location: str | Path) -> tuple[str | Path, dict[str, Any]] | None:
    """The run's checkpoint folder with the lowest val_loss, and its metrics (the later epoch
    among equals); None where no checkpoint has one."""
    scored = []
    for folder in run_checkpoints(location):
        metrics = read_metrics(folder)
        if (value := score(metrics)) is not None:
            scored.append((value, -int(metrics.get("epoch", 0)), str(folder), folder, metrics))
    if not scored:
        return None
    *_, folder, metrics = min(scored)
    return folder, metrics


def keep_by_change(run_dir: Path, keep_by: str) -> str | None:
    """Why a Ray run cannot be resumed under this run.keep_by (None: it can): Ray Train restores
    its ranking of the checkpoints kept so far and goes on inserting into it, so a ranking by time
    continued by val_loss (or the other way) keeps the wrong ones, and checkpoints reported
    without a val_loss would rank above every one with. The run's saved config.yaml says what it
    kept by; a run folder without one (its config elsewhere) is not checked."""
    try:
        before = yaml.safe_load((run_dir / "config.yaml").read_text())["run"].get("keep_by", "newest")
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    if before == keep_by:
        return None
    return (f"run.keep_by: this run kept its checkpoints by {before}, and Ray Train would go on ranking them "
            f"by that; resume it with run.keep_by={before}, or start a new run.name to keep by {keep_by}")
