"""Patients that several shard sets share, and in which splits: `shards overlap ROOT ROOT ...`.

Within one set ingest splits by patient, so no patient is in two of its splits. Sets made by
separate ingest jobs were split separately: a hospital archive's first export and its second, or a
collection ingested again after images were added, can hold one patient in one set's test split
and another's train split, and a model pretrained on both has seen the patients it is scored on.
This audits sets made already (`ingest --splits-from` makes the next set keep an earlier set's
splits; pretrain and linear_probe warn when they meet such sets). Patients match by pseudonym:
sets of one ingest source made under one salt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from shards import schema, storage

Crossing = tuple[str, str, str, str, int]  # (set, split, other set, other split, patients)


def patients_by_split(root: str) -> dict[str, set[str]]:
    """split -> the pseudonymous patients of that split, from the set's manifest."""
    table = storage.read_parquet(storage.join(root, schema.MANIFEST_FILE), columns=["patient", "split"])
    found: dict[str, set[str]] = {}
    for patient, split in zip(table["patient"].to_pylist(), table["split"].to_pylist()):
        found.setdefault(split, set()).add(patient)
    return found


def crossings(sets: dict[str, dict[str, set[str]]]) -> tuple[list[Crossing], list[Crossing]]:
    """(patients in different splits of two sets, patients in the same split of two sets), per
    pair of sets and splits, in the order the sets were given; empty pairs left out."""
    roots = list(sets)
    different, same = [], []
    for i, root in enumerate(roots):
        for other in roots[i + 1:]:
            for split in schema.SPLITS:
                for other_split in schema.SPLITS:
                    shared = len(sets[root].get(split, set()) & sets[other].get(other_split, set()))
                    if shared:
                        (same if split == other_split else different).append((root, split, other, other_split, shared))
    return different, same


def run(roots: Sequence[str], *, as_json: bool = False) -> int:
    """Prints each pair's shared patients; 1 when some patient is in different splits of two sets."""
    sets = {root: patients_by_split(root) for root in map(storage.shard_root, roots)}
    different, same = crossings(sets)
    if as_json:
        rows = [dict(zip(("set", "split", "other_set", "other_split", "patients"), c)) for c in different + same]
        print(json.dumps({"different_splits": rows[:len(different)], "same_split": rows[len(different):]}, indent=2))
        return 1 if different else 0
    for root, split in ((r, s) for r, by_split in sets.items() for s in schema.SPLITS if s in by_split):
        print(f"{root} {split}: {len(sets[root][split])} patients")
    if not different and not same:
        print("no patient is in two of these sets")
    for title, found in (("in different splits (split by separate ingest jobs: a model trained on one split has "
                          "seen patients the other scores as unseen; `ingest --splits-from` keeps one set's "
                          "splits in the next)", different), ("in the same split", same)):
        if found:
            print(f"patients {title}:")
            for root, split, other, other_split, shared in found:
                print(f"  {shared:6d}  {root} {split}  &  {other} {other_split}")
    return 1 if different else 0
