"""Patient-level splits: a validation split carved from train so no patient crosses splits."""

from __future__ import annotations

import random
from collections.abc import Iterable


def carve_validation(train_patients: Iterable[str], *, fraction: float, seed: int) -> set[str]:
    """Pick round(fraction * n) of the distinct training patients for validation.

    The choice depends only on the set of patients, the fraction and the seed (patients are sorted
    before a seeded shuffle), never on file order or worker count.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    patients = sorted(set(train_patients))
    random.Random(seed).shuffle(patients)
    return set(patients[: round(fraction * len(patients))])
