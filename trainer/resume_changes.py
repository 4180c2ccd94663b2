"""What `--resume` may change. A run's folder keeps the resolved config it last started with
(config.yaml); a resumed run is compared with it before anything is written.

- What builds the model's weights (every `model.*` key, and `data.image_size`, which sizes the
  position embeddings) must stay as it was: the checkpoint's tensors would not fit, and the run
  ended in a load_state_dict traceback after config.yaml had been overwritten with the config
  that could not resume, so the run folder no longer said what its checkpoints were trained with.
  Where the shapes happen to fit (a new mask_ratio), the run would go on as another method's.
- Everything else may change (more epochs, another learning rate, batch size, more data, more
  workers): those changes are said, one line, so a resumed run's log shows why it differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainer.config import ExperimentConfig, dump_config

SAVED_CONFIG = "config.yaml"
MODEL_KEYS = ("model.", "data.image_size")  # a key that starts with one of these builds the weights
_ABSENT = object()


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and empty dicts are values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown(value: Any) -> str:
    if value is _ABSENT:
        return "(unset)"
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("\n...").strip()


def resume_changes(run_dir: Path, config: ExperimentConfig) -> tuple[list[str], list[str]]:
    """(refused, allowed): the differences of `config` from the run's saved config, each
    'key before -> now', sorted by key. Both empty where nothing differs or there is no saved
    config to compare (a run folder made elsewhere)."""
    try:
        before = yaml.safe_load((run_dir / SAVED_CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return [], []
    if not isinstance(before, dict):
        return [], []
    was, now = _flat(before), _flat(yaml.safe_load(dump_config(config)))
    refused, allowed = [], []
    for key in sorted(was.keys() | now.keys()):
        old, new = was.get(key, _ABSENT), now.get(key, _ABSENT)
        if old == new:
            continue
        line = f"{key} {_shown(old)} -> {_shown(new)}"
        (refused if key.startswith(MODEL_KEYS) else allowed).append(line)
    return refused, allowed


def refusal(run_name: str, refused: list[str]) -> str:
    """The config error for a resume that would build another model."""
    return (f"--resume: run {run_name!r} was trained with another model than this config builds ("
            + "; ".join(refused) + "). A resumed run builds the model its checkpoints hold: drop those changes, "
            "or start a new run.name")
