"""Linear probing: how well a pretrained encoder's frozen features predict a shard set's labels.

    python trainer/linear_probe.py ENCODER --data SHARDS --label class4 [--label-fraction 0.1] [--out probe.json]

ENCODER: an exported encoder (ENCODER.safetensors with its .json recipe, trainer/export_encoder.py)
or a run folder, checkpoint folder or checkpoint.pt, exported on the fly. SHARDS: a shard set (a
folder or a URI) with labels, e.g. `ingest cbis --crops lesion`'s. Every sample of the training
split and of each evaluation split is read once and encoded by the frozen encoder; a linear head
(MAE's: BatchNorm without affine, then linear) is trained on a seeded fraction of the training
patients, then scored on the evaluation splits: accuracy, balanced accuracy, ROC AUC and average
precision per class (several binary labels: per label, and their mean AUC). This is MLVICX's
"frozen" protocol (§IV-B: frozen encoder, linear head, label fractions by patient) on MAE's probing
schedule, not MLVICX's downstream settings (§IV-C: batch 64, lr 1e-5 / 1e-3, early stopping), so
its figures compare runs rather than reproduce Tables I-III; MIRAM evaluates by fine-tuning, which
happens in timm.

Writes OUT (JSON, atomically) and prints a summary. Exit status: 0 done; 2 unusable inputs (the
encoder, the shard set, a label, a split; named, with the reason); 1 a sample that cannot be read
(with --bad-samples stop, the default; `skip` leaves it out with a warning and counts it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script (`python trainer/linear_probe.py`)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from shards import sample_stages as reading
from shards import schema, storage
from shards.card import read_card
from shards.atomic_files import atomic_write_bytes
from trainer.probe.classifier import LinearProbe, ProbeSchedule, fit_probe, predict
from trainer.probe.encoder import ProbeError, load_encoder, random_init
from trainer.probe.features import SplitFeatures, split_features
from trainer.probe.metrics import multiclass_metrics, multilabel_metrics
from trainer.probe.seen_patients import pretraining_patients
from trainer.probe.targets import ALL_BINARY, Task, choose_task, encode_targets, patient_subset

LEFT_OUT = {"unlabelled": "unlabelled", "unseen_value": "with a value training never had"}


def evaluation_splits(args: argparse.Namespace) -> list[str]:
    """--eval-splits, or every split of the set but the training one."""
    if args.eval_splits is not None:
        return [s for s in args.eval_splits.split(",") if s]
    try:
        splits = read_card(storage.shard_root(args.data))["splits"]
    except (OSError, ValueError) as exc:
        raise ProbeError(str(exc)) from exc
    return [s for s in schema.SPLITS if s in splits and s != args.train_split]


def manifest_labels(root: str, split: str, kinds: tuple[str, ...] | None) -> list[dict[str, Any]]:
    """The labels of a split's samples, from the manifest (read before any image is)."""
    try:
        rows = storage.read_parquet(storage.join(storage.shard_root(root), schema.MANIFEST_FILE),
                                    columns=["split", "crop_kind", "labels"]).to_pylist()
    except (OSError, ValueError) as exc:
        raise ProbeError(f"{root}: its manifest cannot be read ({exc})") from exc
    labels = [row["labels"] or {} for row in rows if row["split"] == split and (kinds is None or row["crop_kind"] in kinds)]
    if not labels:
        raise ProbeError(f"{root}: no {split!r} samples{'' if kinds is None else f' of crop kinds {list(kinds)}'}")
    return labels


def run_probe(args: argparse.Namespace) -> dict[str, Any]:
    """The probe's report (see the module docstring); ProbeError for unusable inputs."""
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProbeError(f"--device {args.device}: this machine has no CUDA device")
    encoder = load_encoder(args.encoder, device, best=args.best)
    kinds = tuple(args.crop_kinds.split(",")) if args.crop_kinds else None
    if kinds is not None and not set(kinds) <= set(schema.CROP_KINDS):
        raise ProbeError(f"--crop-kinds {args.crop_kinds}: each must be one of {list(schema.CROP_KINDS)}")
    eval_splits = evaluation_splits(args)
    if args.train_split in eval_splits:
        raise ProbeError(f"--eval-splits {args.eval_splits} includes the training split {args.train_split}")
    task = choose_task(manifest_labels(args.data, args.train_split, kinds), args.label.split(","))  # before any decoding
    schedule = ProbeSchedule(epochs=args.epochs, warmup_epochs=min(args.warmup_epochs, args.epochs),
                             batch_size=args.batch_size, blr=args.blr, weight_decay=args.weight_decay)
    encoders = [encoder, *([random_init(encoder, args.seed)] if args.random_init_baseline else [])]
    read = {split: split_features(encoders, args.data, split, crop_kinds=kinds, batch_size=args.feature_batch,
                                  handler=reading.BAD_SAMPLE_HANDLERS[args.bad_samples], progress=args.progress)
            for split in (args.train_split, *eval_splits)}  # each image decoded once, for every encoder
    train = read[args.train_split]
    targets, usable, left_out = encode_targets(task, train.labels)
    chosen = patient_subset(train.patients, usable, args.label_fraction, args.seed)
    multilabel = task.kind == "multilabel"
    if chosen.sum() < 2:
        raise ProbeError(f"{args.data}: {int(chosen.sum())} usable training sample(s) for {args.label}")
    if not multilabel and len(set(targets[chosen].tolist())) < 2:
        raise ProbeError(f"--label-fraction {args.label_fraction} leaves one class of {args.label} in training; "
                         "raise it or change --seed")
    training = {"split": args.train_split, "samples_read": len(train.keys), "skipped_samples": train.skipped,
                "left_out": left_out, "samples": int(chosen.sum()),
                "patients": len({p for p, ok in zip(train.patients, chosen) if ok}),
                "patients_labelled": len({p for p, ok in zip(train.patients, usable) if ok})}
    evaluated = {split: (read[split], *encode_targets(task, read[split].labels)) for split in eval_splits}
    seen, unreadable = pretraining_patients(encoder.recipe)

    def probed(index: int) -> dict[str, Any]:
        """Encoder `index`'s probe: the head trained on its training features, each split scored."""
        probe, losses = fit_probe(train.features[index][chosen], torch.from_numpy(targets[chosen]),
                                  len(task.classes), multilabel=multilabel, schedule=schedule, seed=args.seed)
        out: dict[str, Any] = {"train": {**training, "loss_first_epoch": losses[0], "loss_last_epoch": losses[-1]}}
        for split, (features, split_targets, split_usable, split_left_out) in evaluated.items():
            out[split] = _evaluate(probe, task, features, index, split_targets, split_usable, split_left_out, train)
            if seen is not None and index == 0:  # the random-init baseline was pretrained on nothing
                out[split]["patients_seen_in_pretraining"] = len(set(features.patients) & seen)
        return out

    report: dict[str, Any] = {
        "encoder": encoder.source, "method": encoder.recipe.get("method"), "epoch": encoder.recipe.get("epoch"),
        "val_loss": encoder.recipe.get("val_loss"),
        "data": str(args.data), "crop_kinds": list(kinds) if kinds else None,
        "task": task.kind, "labels": list(task.names), "classes": list(task.classes),
        "label_fraction": args.label_fraction, "seed": args.seed, "schedule": asdict(schedule), **probed(0),
    }
    if unreadable:
        report["pretraining_sets_unreadable"] = unreadable
    if args.random_init_baseline:
        report["random_init"] = probed(1)
    return report


def _evaluate(probe: LinearProbe, task: Task, split: SplitFeatures, index: int, targets: np.ndarray,
              usable: np.ndarray, left_out: dict[str, int], train: SplitFeatures) -> dict[str, Any]:
    shared = sorted(set(split.patients) & set(train.patients))
    out: dict[str, Any] = {"samples_read": len(split.keys), "skipped_samples": split.skipped, "left_out": left_out}
    if shared:  # never, for splits that ingest made (by patient); named where they were made otherwise
        out["patients_also_in_training"] = len(shared)
    if not usable.any():
        return {**out, "samples": 0}
    multilabel = task.kind == "multilabel"
    probabilities = predict(probe, split.features[index][usable], multilabel=multilabel).numpy().astype(np.float64)
    if multilabel:
        return {**out, **multilabel_metrics(probabilities, targets[usable], list(task.names))}
    return {**out, **multiclass_metrics(probabilities, targets[usable], list(task.classes))}


def _summary(report: dict[str, Any], splits: list[str]) -> str:
    def number(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    train = report["train"]
    trained = "epoch unknown" if report["epoch"] is None else f"after epoch {report['epoch'] + 1}"
    lines = [f"probe: {report['method']} ({trained}) on {report['data']}, {report['task']} "
             f"{','.join(report['labels'])}: {train['samples']} training samples of {train['patients']} patients "
             f"(fraction {report['label_fraction']} of {train['patients_labelled']})"]
    for split in splits:
        m = report[split]
        extra = "" if "accuracy" not in m else f"  accuracy {number(m['accuracy'])}  balanced {number(m['balanced_accuracy'])}"
        left = ", ".join(f"{n} {LEFT_OUT[why]}" for why, n in m["left_out"].items() if n)
        left += f"{', ' if left else ''}{m['skipped_samples']} unreadable" if m["skipped_samples"] else ""
        lines.append(f"  {split}: {m['samples']} samples{f' ({left} left out)' if left else ''}  "
                     f"AUC {number(m.get('auc'))}  AP {number(m.get('average_precision'))}{extra}")
        if m.get("patients_seen_in_pretraining"):
            lines.append(f"  warning: {m['patients_seen_in_pretraining']} of the {split} split's patients were in the "
                         "encoder's pretraining data (sets split by separate ingest jobs; ingest --splits-from keeps "
                         "one set's splits in the next)")
        if "random_init" in report:
            b = report["random_init"][split]
            lines.append(f"  {split}, random-init encoder: AUC {number(b.get('auc'))}  AP {number(b.get('average_precision'))}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("encoder", help="ENCODER.safetensors (recipe beside it), a run folder or a checkpoint")
    parser.add_argument("--best", action="store_true",
                        help="of a run folder, the checkpoint with the lowest val_loss (default: the newest)")
    parser.add_argument("--data", required=True, help="the labelled shard set (a folder or a URI)")
    parser.add_argument("--label", required=True,
                        help=f"one label name (multi-class), several binary ones (true/false, 0/1) comma-separated (multi-label), "
                             f"or {ALL_BINARY}")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--eval-splits", default=None, help="comma-separated (default: the set's other splits)")
    parser.add_argument("--crop-kinds", default=None, help="e.g. lesion (default: every sample)")
    parser.add_argument("--label-fraction", type=float, default=1.0, help="of the training patients, seeded")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--warmup-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--blr", type=float, default=0.1, help="lr = blr x batch / 256")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--feature-batch", type=int, default=64, help="images per encoder forward")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--bad-samples", choices=sorted(reading.BAD_SAMPLE_HANDLERS), default="stop")
    parser.add_argument("--random-init-baseline", action="store_true",
                        help="probe the same architecture randomly initialised too, to show what pretraining added")
    parser.add_argument("--out", type=Path, default=Path("probe.json"))
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 2 or args.feature_batch < 1:
        parser.error("--epochs must be >= 1, --batch-size >= 2 and --feature-batch >= 1")
    if not 0 < args.label_fraction <= 1:  # here, not after every split has been decoded
        parser.error(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
    if args.device != "auto":
        try:
            torch.device(args.device)
        except RuntimeError:
            parser.error(f"--device {args.device!r} is not a device (auto, cpu, cuda, cuda:1, ...)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        report = run_probe(args)
    except ProbeError as exc:
        print(f"linear_probe: {exc}", file=sys.stderr)
        return 2
    except reading.SampleError as exc:
        print(f"linear_probe: {exc}\n  (check the set with `shards verify {args.data}`, or pass --bad-samples skip)",
              file=sys.stderr)
        return 1
    report["seconds"] = round(time.perf_counter() - start, 1)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())
    except OSError as exc:
        print(f"linear_probe: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    splits = [s for s in schema.SPLITS if s in report and s != args.train_split]
    print(f"{_summary(report, splits)}\nreport: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
