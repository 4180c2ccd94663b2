"""What a probe learns to predict, from the labels in each sample's json member.

One categorical label (CBIS `class4`, `pathology`, `birads`; a boolean one too) is a multi-class
task, softmax over its values. Several binary labels (true/false or 0/1: NIH ChestX-ray14's 14 findings,
CheXpert's observations; `all-binary` takes every binary label the set has) are a multi-label task, one
sigmoid each: MLVICX's (§IV-B) linear evaluation on NIH, scored by the mean AUC over findings.
A sample whose label is null (CheXpert's `--uncertain ignore`, CMMD's unlabelled breasts) is left
out of that task and counted. The training subset is drawn by patient, seeded: MLVICX's 1 %, 10 %
and 30 % subsets of the training data, without one patient's images on both sides of the cut.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.probe.encoder import ProbeError

ALL_BINARY = "all-binary"


@dataclass(frozen=True)
class Task:
    kind: str  # "multiclass" or "multilabel"
    names: tuple[str, ...]  # the label names it reads
    classes: tuple[Any, ...]  # multiclass: the label's values, sorted; multilabel: the names


def _is_binary(value: Any) -> bool:
    """True/False, or the integers 0 and 1 (CBIS's `malignant`)."""
    return isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))


def _values(labels: list[dict[str, Any]], name: str) -> list[Any]:
    return [sample.get(name) for sample in labels if sample.get(name) is not None]


def choose_task(labels: list[dict[str, Any]], names: list[str]) -> Task:
    """The task of `names` over the training samples' labels (ProbeError naming what is wrong)."""
    known = sorted({name for sample in labels for name in sample})
    if names == [ALL_BINARY]:
        names = [n for n in known if (v := _values(labels, n)) and all(_is_binary(x) for x in v)]
        if not names:
            raise ProbeError(f"{ALL_BINARY}: this set has no binary labels (its labels: {known})")
    missing = [n for n in names if n not in known]
    if missing:
        raise ProbeError(f"label {', '.join(missing)} not in this set's training samples (its labels: {known})")
    if len(names) == 1:
        values = _values(labels, names[0])
        if any(isinstance(v, (list, dict)) for v in values):
            raise ProbeError(f"label {names[0]} holds lists (several values a sample); a probe takes one value "
                             "a sample, or several binary labels")
        classes = sorted(set(values), key=lambda v: (type(v).__name__, v))
        if len(classes) < 2:
            raise ProbeError(f"label {names[0]} has {len(classes)} distinct value(s) {classes} among the "
                             "labelled training samples; a classifier needs two")
        return Task("multiclass", tuple(names), tuple(classes))
    not_binary = [n for n in names if not all(_is_binary(v) for v in _values(labels, n))]
    if not_binary:
        raise ProbeError(f"several labels make a multi-label task of binary labels (true/false or 0/1); "
                         f"{', '.join(not_binary)} are not binary (probe one categorical label on its own)")
    return Task("multilabel", tuple(names), tuple(names))


def encode_targets(task: Task, labels: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(targets, usable mask, counts of what was left out). multiclass targets: (N,) int64 class
    indices; multilabel: (N, L) float32 0/1. Left out: a null label ("unlabelled"), and in a
    multiclass task a value the training samples never had ("unseen_value")."""
    usable = np.ones(len(labels), bool)
    left_out = {"unlabelled": 0, "unseen_value": 0}
    if task.kind == "multiclass":
        index = {value: k for k, value in enumerate(task.classes)}
        targets = np.zeros(len(labels), np.int64)
        for i, sample in enumerate(labels):
            value = sample.get(task.names[0])
            if value is None or isinstance(value, (list, dict)):
                usable[i], left_out["unlabelled"] = False, left_out["unlabelled"] + 1
            elif value not in index or type(value) is not type(task.classes[index[value]]):  # 1 == True
                usable[i], left_out["unseen_value"] = False, left_out["unseen_value"] + 1
            else:
                targets[i] = index[value]
        return targets, usable, left_out
    targets = np.zeros((len(labels), len(task.names)), np.float32)
    for i, sample in enumerate(labels):
        values = [sample.get(name) for name in task.names]
        if not all(_is_binary(v) for v in values):
            usable[i], left_out["unlabelled"] = False, left_out["unlabelled"] + 1
        else:
            targets[i] = values
    return targets, usable, left_out


def patient_subset(patients: list[str], usable: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The usable samples of a seeded `fraction` of the patients who have any (at least one)."""
    if not 0 < fraction <= 1:
        raise ProbeError(f"--label-fraction must be in (0, 1], got {fraction}")
    candidates = sorted({p for p, ok in zip(patients, usable) if ok})
    random.Random(seed).shuffle(candidates)
    chosen = set(candidates[:max(1, math.ceil(fraction * len(candidates) - 1e-9))])
    return usable & np.array([p in chosen for p in patients], bool)
