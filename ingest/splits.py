"""Patient-level splits: a validation split carved from train so no patient crosses splits; with
`keep` (ingest.prior_splits: --splits-from), patients of earlier sets stay in their splits."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping


def carve_validation(train_patients: Iterable[str], *, fraction: float, seed: int,
                     keep: Mapping[str, str] | None = None, into: str = "val") -> set[str]:
    """Pick round(fraction * n) of the distinct training patients for validation, and at least one
    when a fraction above 0 was asked for and there are two or more: a small set (a pilot export
    of an archive, a handful of sample images) asked for a split and, with fewer than 5 patients
    at 0.1, silently got none, which a pretraining run's validation then found missing.

    The choice depends only on the set of patients, the fraction and the seed (patients are sorted
    before a seeded shuffle), never on file order or worker count.

    keep: patient -> the split an earlier set gave it. Those patients are picked exactly when that
    split is `into` (the split this carve fills: "val", or "test" for split_patients), and the
    fraction applies to the others alone, the new patients; the at-least-one rule only to a job
    with no kept patient (an archive's later batch of one new patient is not made validation).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"{into} fraction must be in [0, 1), got {fraction}")
    keep = keep or {}
    patients = set(train_patients)
    kept = {p for p in patients if p in keep}
    chosen = {p for p in kept if keep[p] == into}
    fresh = sorted(patients - kept)
    random.Random(seed).shuffle(fresh)
    count = round(fraction * len(fresh))
    if fraction > 0 and count == 0 and len(fresh) >= 2 and not kept:
        count = 1
    return chosen | set(fresh[:count])


def split_patients(patients: Iterable[str], *, test_fraction: float, val_fraction: float, seed: int,
                   keep: Mapping[str, str] | None = None) -> dict[str, str]:
    """patient -> "train" | "val" | "test" for a source with no official split: round(test_fraction * n)
    of the distinct patients go to test, then validation is carved from the rest as above. Like
    carve_validation, it depends only on the set of patients, the fractions, the seed and `keep`
    (whose patients get their kept split)."""
    patients = set(patients)
    test = carve_validation(patients, fraction=test_fraction, seed=seed, keep=keep, into="test")
    val = carve_validation(patients - test, fraction=val_fraction, seed=seed, keep=keep)
    return {p: "test" if p in test else "val" if p in val else "train" for p in sorted(patients)}
