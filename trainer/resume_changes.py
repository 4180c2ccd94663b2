"""What `--resume` may change. A run's folder keeps the resolved config it last started with
(config.yaml); a resumed run is compared with it before anything is written.

- What builds the model's weights (every `model.*` key, and `data.image_size`, which sizes the
  position embeddings) must stay as it was: the checkpoint's tensors would not fit, and the run
  ended in a load_state_dict traceback after config.yaml had been overwritten with the config
  that could not resume, so the run folder no longer said what its checkpoints were trained with.
  Where the shapes happen to fit (a new mask_ratio), the run would go on as another method's.
  So must the input the shard sets give (channels, and the side when data.image_size is left to
  them), which the run folder's data.json records beside config.yaml.
- Everything else may change (more epochs, another learning rate, batch size, more data, more
  workers): those changes are said, one line, so a resumed run's log shows why it differs. So is
  a shard set that was ingested again under the same path since the run last started (its card,
  which lists every shard's sha256, differs): the rest of the run trains on other samples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from shards.stream import OpenSource
from trainer.config import ExperimentConfig, dump_config

SAVED_CONFIG = "config.yaml"
DATA_RECORD = "data.json"
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


def resume_changes(run_dir: Path, config: ExperimentConfig,
                   record: dict[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """(refused, allowed): the differences of `config` from the run's saved config, each
    'key before -> now', sorted by key, then (given the run's data_record now) those of
    data_changes. Both empty where nothing differs or there is nothing saved to compare (a run
    folder made elsewhere)."""
    refused, allowed = [], []
    was, now = _flat(_saved_config(run_dir)), _flat(yaml.safe_load(dump_config(config)))
    for key in sorted(was.keys() | now.keys()) if was else ():
        old, new = was.get(key, _ABSENT), now.get(key, _ABSENT)
        if old != new:
            (refused if key.startswith(MODEL_KEYS) else allowed).append(f"{key} {_shown(old)} -> {_shown(new)}")
    more_refused, more_allowed = data_changes(run_dir, record) if record is not None else ([], [])
    return refused + more_refused, allowed + more_allowed


def _saved_config(run_dir: Path) -> dict[str, Any]:
    """The run folder's SAVED_CONFIG, or {} where there is none to read."""
    try:
        before = yaml.safe_load((run_dir / SAVED_CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return before if isinstance(before, dict) else {}


def data_record(config: ExperimentConfig, channels: int, image_size: int,
                sources: list[OpenSource]) -> dict[str, Any]:
    """What the run trains on beyond its config, for DATA_RECORD: the model input's channels and
    side, and the digest of each shard set's card (opened already: check_data's sources, in the
    order of config.data.sources), by root."""
    return {"channels": channels, "image_size": image_size,
            "cards": {str(s.root): opened.card_digest for s, opened in zip(config.data.sources, sources, strict=True)}}


def data_changes(run_dir: Path, record: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(refused, allowed) as resume_changes, against the run's DATA_RECORD: another input shape is
    refused; a shard set whose card changed is said. Both empty without a record to compare."""
    try:
        before = json.loads((run_dir / DATA_RECORD).read_text())
        was_channels, was_size, was_cards = before["channels"], before["image_size"], dict(before["cards"])
    except (OSError, ValueError, KeyError, TypeError):
        return [], []
    refused = [f"input {name} {old} -> {new}" for name, old, new in
               (("channels", was_channels, record["channels"]), ("side", was_size, record["image_size"])) if old != new]
    allowed = [f"{root}: ingested again since the run last started (its card differs)"
               for root, digest in record["cards"].items() if was_cards.get(root, digest) != digest]
    return refused, allowed


def refusal(run_name: str, refused: list[str]) -> str:
    """The config error for a resume that would build another model."""
    return (f"--resume: run {run_name!r} was trained with another model than this config builds ("
            + "; ".join(refused) + "). A resumed run builds the model its checkpoints hold: drop those changes, "
            "or start a new run.name")
