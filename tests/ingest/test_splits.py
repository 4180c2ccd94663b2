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
