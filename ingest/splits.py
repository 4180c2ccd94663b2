"""Patient-level splits: a validation split carved from train so no patient crosses splits."""

from __future__ import annotations

import random
from collections.abc import Iterable


def carve_validation(train_patients: Iterable[str], *, fraction: float, seed: int) -> set[str]:
    """Pick round(fraction * n) of the distinct training patients for validation, and at least one
    when a fraction above 0 was asked for and there are two or more: a small set (a pilot export
    of an archive, a handful of sample images) asked for a split and, with fewer than 5 patients
    at 0.1, silently got none, which a pretraining run's validation then found missing.

    The choice depends only on the set of patients, the fraction and the seed (patients are sorted
    before a seeded shuffle), never on file order or worker count.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    patients = sorted(set(train_patients))
    random.Random(seed).shuffle(patients)
    count = round(fraction * len(patients))
    if fraction > 0 and count == 0 and len(patients) >= 2:
        count = 1
    return set(patients[:count])


def split_patients(patients: Iterable[str], *, test_fraction: float, val_fraction: float, seed: int) -> dict[str, str]:
    """patient -> "train" | "val" | "test" for a source with no official split: round(test_fraction * n)
    of the distinct patients go to test, then validation is carved from the rest as above. Like
    carve_validation, it depends only on the set of patients, the fractions and the seed."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test fraction must be in [0, 1), got {test_fraction}")
    patients = set(patients)
    test = carve_validation(patients, fraction=test_fraction, seed=seed)
    val = carve_validation(patients - test, fraction=val_fraction, seed=seed)
    return {p: "test" if p in test else "val" if p in val else "train" for p in sorted(patients)}
