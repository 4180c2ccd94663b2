"""Classification metrics of a probe, computed here (numpy) rather than pulled in with scikit-learn.

ROC AUC is the Mann-Whitney statistic: the chance that a random positive scores above a random
negative, ties counting one half (average ranks). Average precision is the area under the
precision-recall steps, sum over positives of precision at each distinct score threshold times the
recall gained there (scikit-learn's `average_precision_score` definition, ties taken together).
MLVICX (§IV-B, Tables I-II) reports mean and class-wise AUC; MIRAM (§IV-A-3) reports AUC and AP.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of values, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC of scores for the boolean `positive`; None when either class is absent."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(np.asarray(scores, np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Average precision of scores for the boolean `positive`; None without a positive."""
    positive = np.asarray(positive, bool)
    if not positive.any():
        return None
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last sample of each run of equal scores: one threshold
    true_pos = np.cumsum(p)[last]
    predicted = (np.flatnonzero(last) + 1).astype(np.float64)
    recall_gain = np.diff(np.r_[0, true_pos]) / true_pos[-1]
    return float(np.sum(recall_gain * true_pos / predicted))


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def multiclass_metrics(probabilities: np.ndarray, targets: np.ndarray, classes: list[Any]) -> dict[str, Any]:
    """probabilities (N, K), targets (N,) class indices. One-vs-rest AUC and AP per class; the
    macro means skip classes that a split lacks (their AUC is undefined)."""
    predicted = probabilities.argmax(axis=1)
    recalls = [float((predicted[targets == k] == k).mean()) for k in range(len(classes)) if (targets == k).any()]
    per_class = {str(c): {"samples": int((targets == k).sum()),
                          "auc": roc_auc(probabilities[:, k], targets == k),
                          "average_precision": average_precision(probabilities[:, k], targets == k)}
                 for k, c in enumerate(classes)}
    out = {"samples": int(len(targets)), "accuracy": float((predicted == targets).mean()),
           "balanced_accuracy": float(np.mean(recalls))}
    if len(classes) == 2:  # the positive class is the second (classes are sorted: False < True)
        out["auc"] = per_class[str(classes[1])]["auc"]
        out["average_precision"] = per_class[str(classes[1])]["average_precision"]
    else:
        out["auc"] = _mean([m["auc"] for m in per_class.values()])
        out["average_precision"] = _mean([m["average_precision"] for m in per_class.values()])
    return {**out, "per_class": per_class}


def multilabel_metrics(probabilities: np.ndarray, targets: np.ndarray, names: list[str]) -> dict[str, Any]:
    """probabilities and targets (N, L) for L binary labels: AUC and AP per label, and their means
    (MLVICX's mean AUC over the 14 findings)."""
    per_label = {name: {"positives": int(targets[:, j].sum()),
                        "auc": roc_auc(probabilities[:, j], targets[:, j] > 0.5),
                        "average_precision": average_precision(probabilities[:, j], targets[:, j] > 0.5)}
                 for j, name in enumerate(names)}
    return {"samples": int(len(targets)), "auc": _mean([m["auc"] for m in per_label.values()]),
            "average_precision": _mean([m["average_precision"] for m in per_label.values()]),
            "per_label": per_label}
