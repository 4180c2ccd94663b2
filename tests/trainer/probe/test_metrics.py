"""Probe metrics against their definitions, computed the slow way."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.probe.metrics import average_precision, multiclass_metrics, multilabel_metrics, roc_auc


def pairwise_auc(scores, positive):
    """P(score of a positive > score of a negative), ties one half: every pair counted."""
    pos, neg = scores[positive], scores[~positive]
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def thresholded_ap(scores, positive):
    """Mean over positives of the precision among samples scoring at least that positive's score."""
    return float(np.mean([positive[scores >= s].mean() for s in scores[positive]]))


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_ap_equal_their_definitions_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 40).astype(float)  # few distinct values: many ties
    positive = rng.random(40) < 0.4
    assert roc_auc(scores, positive) == pytest.approx(pairwise_auc(scores, positive), abs=1e-12)
    assert average_precision(scores, positive) == pytest.approx(thresholded_ap(scores, positive), abs=1e-12)


def test_perfect_reversed_and_undefined_scores():
    positive = np.array([False, False, True, True])
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), positive) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), positive) == 0.0
    assert average_precision(np.array([0.1, 0.2, 0.8, 0.9]), positive) == 1.0
    assert average_precision(np.array([0.9, 0.8, 0.2, 0.1]), positive) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert roc_auc(np.zeros(3), np.ones(3, bool)) is None and average_precision(np.zeros(3), np.zeros(3, bool)) is None


def test_multiclass_metrics_count_by_hand():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]])
    targets = np.array([0, 1, 2, 2, 0])  # predicted 0, 1, 1, 2, 0: four of five right
    m = multiclass_metrics(probabilities, targets, ["a", "b", "c"])
    assert m["samples"] == 5 and m["accuracy"] == pytest.approx(0.8)
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    for k, name in enumerate("abc"):
        assert m["per_class"][name]["auc"] == pytest.approx(pairwise_auc(probabilities[:, k], targets == k))
    assert m["auc"] == pytest.approx(np.mean([m["per_class"][c]["auc"] for c in "abc"]))


def test_binary_metrics_score_the_second_class_and_a_missing_class_is_left_out_of_means():
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    m = multiclass_metrics(probabilities, np.array([0, 1, 0]), [False, True])
    assert m["auc"] == pytest.approx(pairwise_auc(probabilities[:, 1], np.array([False, True, False])))
    three = multiclass_metrics(np.eye(3)[[0, 1, 0]], np.array([0, 1, 0]), ["a", "b", "c"])  # no "c" in this split
    assert three["per_class"]["c"]["auc"] is None and three["auc"] == 1.0 and three["balanced_accuracy"] == 1.0


def test_multilabel_metrics_per_label_and_mean():
    rng = np.random.default_rng(0)
    targets = (rng.random((30, 3)) < 0.5).astype(np.float32)
    probabilities = np.clip(targets * 0.6 + rng.random((30, 3)) * 0.5, 0, 1)
    m = multilabel_metrics(probabilities, targets, ["x", "y", "z"])
    per = [pairwise_auc(probabilities[:, j], targets[:, j] > 0.5) for j in range(3)]
    assert [m["per_label"][n]["auc"] for n in "xyz"] == pytest.approx(per)
    assert m["auc"] == pytest.approx(np.mean(per)) and m["per_label"]["x"]["positives"] == int(targets[:, 0].sum())
