from collections import Counter

from ingest.splits import carve_validation, split_patients


def test_validation_is_a_seeded_fraction_of_patients_independent_of_order():
    patients = [f"P_{i:05d}" for i in range(100)]
    val = carve_validation(patients, fraction=0.2, seed=1)
    assert len(val) == 20 and val <= set(patients)
    assert carve_validation(reversed(patients + patients), fraction=0.2, seed=1) == val
    assert carve_validation(patients, fraction=0.2, seed=2) != val


def test_patient_split_without_an_official_one_is_seeded_and_disjoint():
    patients = [f"D1-{i:04d}" for i in range(50)]
    split = split_patients(patients + patients[::-1], test_fraction=0.2, val_fraction=0.25, seed=3)
    assert sorted(split) == patients
    assert Counter(split.values()) == {"test": 10, "val": 10, "train": 30}  # val: 0.25 of the 40 left
    assert split_patients(reversed(patients), test_fraction=0.2, val_fraction=0.25, seed=3) == split
    assert split_patients(patients, test_fraction=0.2, val_fraction=0.25, seed=4) != split


def test_a_fraction_asked_for_carves_at_least_one_patient_of_two_or_more():
    assert len(carve_validation(["a", "b", "c", "d"], fraction=0.1, seed=0)) == 1  # round(0.4) would be none
    assert len(carve_validation(["a", "b"], fraction=0.1, seed=0)) == 1
    assert carve_validation(["a"], fraction=0.1, seed=0) == set()  # the one patient stays in train
    assert carve_validation(["a", "b", "c", "d"], fraction=0.0, seed=0) == set()  # none asked for
    split = split_patients(["a", "b", "c"], test_fraction=0.2, val_fraction=0.1, seed=0)
    assert Counter(split.values()) == {"test": 1, "val": 1, "train": 1}


def test_kept_patients_keep_their_split_and_only_new_ones_are_drawn():
    """--splits-from: an archive's first batch, then the whole archive. Drawn afresh, the larger
    set's shuffle moves some first-batch patients to another split; kept, none moves, and the
    fractions apply to the new patients."""
    first = [f"p{i:03d}" for i in range(40)]
    everyone = first + [f"p{i:03d}" for i in range(40, 100)]
    before = split_patients(first, test_fraction=0.2, val_fraction=0.25, seed=0)
    afresh = split_patients(everyone, test_fraction=0.2, val_fraction=0.25, seed=0)
    assert any(afresh[p] != before[p] for p in first)  # what --splits-from is for
    kept = split_patients(everyone, test_fraction=0.2, val_fraction=0.25, seed=0, keep=before)
    assert all(kept[p] == before[p] for p in first)
    new = Counter(kept[p] for p in everyone[40:])
    assert new == {"test": 12, "val": 12, "train": 36}  # 0.2 of the 60 new, then 0.25 of the 48 left
    assert split_patients(everyone, test_fraction=0.2, val_fraction=0.25, seed=0, keep=dict(before)) == kept
    assert split_patients(everyone, test_fraction=0.2, val_fraction=0.25, seed=0, keep={}) == afresh


def test_a_kept_split_is_taken_only_by_the_carve_that_fills_it():
    keep = {"a": "val", "b": "test", "c": "train"}
    assert carve_validation(["a", "b", "c", "d"], fraction=0.0, seed=0, keep=keep) == {"a"}
    assert carve_validation(["a", "b", "c", "d"], fraction=0.0, seed=0, keep=keep, into="test") == {"b"}
    # an official split's train patients: a kept "test" one is no validation patient either
    assert carve_validation(["b", "c", "d", "e"], fraction=0.0, seed=0, keep=keep) == set()


def test_a_later_batch_of_one_new_patient_is_not_made_validation():
    """The at-least-one rule is for a job's first split; a kept patient means one exists."""
    assert carve_validation(["a", "new"], fraction=0.1, seed=0, keep={"a": "train"}) == set()
    assert len(carve_validation(["a", "new"], fraction=0.1, seed=0)) == 1
