from ingest.splits import carve_validation


def test_validation_is_a_seeded_fraction_of_patients_independent_of_order():
    patients = [f"P_{i:05d}" for i in range(100)]
    val = carve_validation(patients, fraction=0.2, seed=1)
    assert len(val) == 20 and val <= set(patients)
    assert carve_validation(reversed(patients + patients), fraction=0.2, seed=1) == val
    assert carve_validation(patients, fraction=0.2, seed=2) != val
