"""Export a pretraining run's encoder for fine-tuning with timm.

    python trainer/export_encoder.py RUN_OR_CHECKPOINT [--best] [--out encoder.safetensors]

RUN_OR_CHECKPOINT: a run folder (its newest checkpoint: Ray Train's checkpoint_*/ or a one-process
run's checkpoints/epoch_*/; with --best, the one with the lowest val_loss), one checkpoint folder,
or its checkpoint.pt; a URI (s3://...) names a checkpoint folder or file in a bucket, or with
--best a run's prefix. Writes OUT, the encoder's weights under timm's parameter
names (safetensors: no pickle), and beside it the same name with .json, the recipe: the
timm.create_model name and keyword arguments, the method, the checkpoint's epoch, step and
val_loss (null without a pass), and the normalisation the encoder was pretrained with (per
channel mean and std in stored pixel units, for each shard set). Both are written atomically. Fine-tuning then starts from

    encoder = timm.create_model(recipe["timm_model"], pretrained=False, **recipe["timm_kwargs"])
    encoder.load_state_dict(safetensors.torch.load_file(OUT))

except for MLVICX, whose ResNet has context-bottleneck blocks in line (recipe["context_blocks"]):

    encoder = create_encoder(recipe["timm_model"], recipe["timm_kwargs"], recipe["context_blocks"])

(trainer.layers.timm_export), the same timm ResNet object with the blocks inserted.

Exit status: 0 written; 2 no usable checkpoint, or OUT cannot be written (named, with the reason).
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (`python trainer/export_encoder.py`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from safetensors.torch import save as safetensors_bytes

from shards import storage
from shards.atomic_files import atomic_write_bytes
from trainer.config import config_from_dict
from trainer.loop import CHECKPOINT_FILE
from trainer.checkpoints import (LOCAL_CHECKPOINTS, RAY_CHECKPOINT_PREFIX, best_checkpoint, checkpoint_val_loss,
                                 run_checkpoints)
from trainer.layers.timm_export import TimmEncoder
from trainer.registry import build_method

RECIPE_VERSION = 2  # 2: "context_blocks" (MLVICX); a version-1 recipe has none


class ExportError(ValueError):
    """No encoder can be exported from this location; says which file and why."""


def find_checkpoint(location: str | Path, best: bool = False) -> str | Path:
    """The checkpoint.pt that `location` names (see the module docstring); with `best`, a run's
    checkpoint with the lowest val_loss (trainer/checkpoints.py)."""
    if best:
        return _best_checkpoint(location)
    if storage.is_uri(str(location)):
        location = str(location)
        return location if location.split("?")[0].endswith(".pt") else storage.join(location, CHECKPOINT_FILE)
    path = Path(location)
    if path.is_file():
        return path
    if (path / CHECKPOINT_FILE).is_file():
        return path / CHECKPOINT_FILE
    candidates = [folder / CHECKPOINT_FILE for folder in run_checkpoints(path) if (folder / CHECKPOINT_FILE).is_file()]
    if not candidates:
        what = ("does not exist" if not path.exists()
                else f"holds no {CHECKPOINT_FILE}, {RAY_CHECKPOINT_PREFIX}*/ or {LOCAL_CHECKPOINTS}/")
        raise ExportError(f"{path}: {what}")
    return max(candidates, key=lambda p: (p.stat().st_mtime, str(p)))  # the newest written


def _best_checkpoint(location: str | Path) -> str | Path:
    found = best_checkpoint(location)
    if found is None:
        folders = run_checkpoints(location)
        what = (f"none of its {len(folders)} checkpoint(s) has a val_loss (validation.every_epochs was 0, or "
                "no checkpoint was written at a validation pass)" if folders
                else f"holds no {RAY_CHECKPOINT_PREFIX}*/ or {LOCAL_CHECKPOINTS}/ of a run")
        raise ExportError(f"{location}: --best needs a run folder whose checkpoints have a val_loss; {what}")
    folder, _ = found
    return storage.join(folder, CHECKPOINT_FILE) if storage.is_uri(str(folder)) else Path(folder) / CHECKPOINT_FILE


def load_checkpoint(checkpoint: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, loaded with weights_only=True (never arbitrary pickle)."""
    try:
        if storage.is_uri(str(checkpoint)):
            state = torch.load(io.BytesIO(storage.read_bytes(checkpoint)), map_location="cpu", weights_only=True)
        else:  # mapped, not read: a ViT-B checkpoint with its optimizer state is ~1 GB
            state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:  # missing, cut short, foreign
        raise ExportError(f"{checkpoint}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from exc
    missing = [key for key in ("model", "config", "data") if not isinstance(state, dict) or key not in state]
    if missing:
        raise ExportError(f"{checkpoint}: not a medshards checkpoint with {', '.join(missing)} "
                          "(checkpoints from before the export existed lack 'data': resume the run for one epoch)")
    return state


def encoder_and_recipe(state: dict[str, Any], source: str) -> tuple[TimmEncoder, dict[str, Any]]:
    """The checkpoint's encoder as timm builds it, and its recipe."""
    config = config_from_dict(state["config"])
    data = state["data"]
    model = build_method(config.model.name, in_chans=data["in_chans"], img_size=data["img_size"],
                         **config.model.options)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        raise ExportError(f"{source}: its weights do not fit {config.model.name} as its config builds it ({exc})") from exc
    try:
        encoder = model.timm_encoder()
    except NotImplementedError as exc:
        raise ExportError(f"{source}: {config.model.name} cannot be exported to timm: {exc}") from exc
    recipe = {
        "format": "medshards-encoder",
        "version": RECIPE_VERSION,
        "timm_model": encoder.model,
        "timm_kwargs": encoder.kwargs,
        # null, or the context-bottleneck blocks MLVICX's ResNet has in line: build with
        # trainer.layers.timm_export.create_encoder (plain timm refuses the extra weights)
        "context_blocks": encoder.context_blocks,
        "method": config.model.name,
        "method_options": config.model.options,
        "run": config.run.name,
        "checkpoint": source,
        "epoch": state.get("epoch"),
        "step": state.get("step"),
        "val_loss": checkpoint_val_loss(source),  # null: no validation pass at that epoch
        "pretrained_on": {"in_chans": data["in_chans"], "img_size": data["img_size"]},
        # the shard sets and splits it was pretrained on: linear_probe counts their patients in what it scores
        "pretrained_sets": [{"root": storage.shard_root(s.root), "split": s.split} for s in config.data.sources],
        # fine-tuning inputs need the same (x - mean) / std, x in stored units (uint8 / uint16)
        "normalisation": data["sources"],
    }
    return encoder, recipe


def export_encoder(state: dict[str, Any], source: str) -> tuple[bytes, dict[str, Any]]:
    """(safetensors bytes, recipe) of the checkpoint's encoder."""
    encoder, recipe = encoder_and_recipe(state, source)
    weights = {name: tensor.contiguous() for name, tensor in encoder.state_dict.items()}
    return safetensors_bytes(weights, metadata={"timm_model": encoder.model}), recipe


def recipe_path(out: Path) -> Path:
    return out.with_suffix(".json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("location", help="a run folder, a checkpoint folder, or a checkpoint.pt (or a URI of one)")
    parser.add_argument("--out", type=Path, default=Path("encoder.safetensors"), help="default: ./encoder.safetensors")
    parser.add_argument("--best", action="store_true",
                        help="of a run folder, the checkpoint with the lowest val_loss (default: the newest)")
    args = parser.parse_args(argv)
    if args.out.suffix != ".safetensors":
        parser.error(f"--out {args.out} must end in .safetensors (the recipe goes beside it, as .json)")
    try:
        checkpoint = find_checkpoint(args.location, best=args.best)
        weights, recipe = export_encoder(load_checkpoint(checkpoint), str(checkpoint))
    except ExportError as exc:
        print(f"export_encoder: {exc}", file=sys.stderr)
        return 2
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, weights)
        atomic_write_bytes(recipe_path(args.out), (json.dumps(recipe, indent=2) + "\n").encode())
    except OSError as exc:
        print(f"export_encoder: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"encoder: {args.out} ({recipe['timm_model']}, {recipe['method']} after epoch {recipe['epoch'] + 1}, "
          f"step {recipe['step']}, from {checkpoint})\nrecipe:  {recipe_path(args.out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
