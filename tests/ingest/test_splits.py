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
