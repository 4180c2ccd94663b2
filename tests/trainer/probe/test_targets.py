"""Which task a probe learns from the labels, and the training subset drawn by patient."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.probe.encoder import ProbeError
from trainer.probe.targets import ALL_BINARY, choose_task, encode_targets, patient_subset

LABELS = [
    {"class4": "benign_mass", "malignant": 0, "edema": True, "mass_shape": ["OVAL"], "birads": 3},
    {"class4": "malignant_calc", "malignant": 1, "edema": False, "mass_shape": [], "birads": 5},
    {"class4": "benign_mass", "malignant": 0, "edema": None, "mass_shape": ["ROUND"], "birads": 4},
]


def test_one_categorical_label_is_a_multiclass_task_over_its_sorted_values():
    task = choose_task(LABELS, ["class4"])
    assert (task.kind, task.classes) == ("multiclass", ("benign_mass", "malignant_calc"))
    assert choose_task(LABELS, ["birads"]).classes == (3, 4, 5)


def test_several_binary_labels_are_a_multilabel_task_and_all_binary_finds_them():
    task = choose_task(LABELS, ["malignant", "edema"])
    assert (task.kind, task.names) == ("multilabel", ("malignant", "edema"))
    assert choose_task(LABELS, [ALL_BINARY]).names == ("edema", "malignant")


@pytest.mark.parametrize("names, reason", [
    (["nope"], "label nope not in this set's training samples (its labels: ['birads', 'class4', 'edema'"),
    (["mass_shape"], "holds lists"),
    (["class4", "edema"], "class4 are not binary"),
])
def test_unusable_labels_are_named(names, reason):
    with pytest.raises(ProbeError) as info:
        choose_task(LABELS, names)
    assert reason in str(info.value)


def test_a_label_with_one_value_cannot_train_a_classifier():
    with pytest.raises(ProbeError, match="1 distinct value"):
        choose_task([{"density": 2}, {"density": 2}], ["density"])
    with pytest.raises(ProbeError, match="no binary labels"):
        choose_task([{"density": 2}, {"density": 3}], [ALL_BINARY])


def test_nulls_and_unseen_values_are_left_out_and_counted():
    task = choose_task(LABELS[:2], ["class4"])
    targets, usable, left = encode_targets(task, [*LABELS, {"class4": None}, {"class4": "benign_calc"}])
    assert usable.tolist() == [True, True, True, False, False] and targets[:3].tolist() == [0, 1, 0]
    assert left == {"unlabelled": 1, "unseen_value": 1}
    multi = choose_task(LABELS, ["malignant", "edema"])
    targets, usable, left = encode_targets(multi, LABELS)
    assert usable.tolist() == [True, True, False] and targets[:2].tolist() == [[0, 1], [1, 0]]
    assert left["unlabelled"] == 1


def test_true_is_not_taken_for_the_integer_one():
    task = choose_task([{"v": 1}, {"v": 2}], ["v"])
    _, usable, left = encode_targets(task, [{"v": True}, {"v": 1}])
    assert usable.tolist() == [False, True] and left["unseen_value"] == 1


def test_the_training_subset_takes_whole_patients_seeded():
    patients = [f"p{i // 3}" for i in range(60)]  # 20 patients, 3 samples each
    usable = np.ones(60, bool)
    usable[0] = False  # p0 keeps two usable samples
    chosen = patient_subset(patients, usable, 0.25, seed=1)
    kept = {p for p, c in zip(patients, chosen) if c}
    assert len(kept) == 5
    for p in kept:  # every usable sample of a chosen patient, none of the others
        assert all(c == u for q, c, u in zip(patients, chosen, usable) if q == p)
    assert (patient_subset(patients, usable, 0.25, seed=1) == chosen).all()
    assert not (patient_subset(patients, usable, 0.25, seed=2) == chosen).all()
    assert patient_subset(patients, usable, 1.0, seed=0).tolist() == usable.tolist()
    assert patient_subset(patients, usable, 0.001, seed=0).sum() in (2, 3)  # at least one patient
    with pytest.raises(ProbeError, match="label-fraction"):
        patient_subset(patients, usable, 0.0, seed=0)
