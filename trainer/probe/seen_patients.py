"""The patients an encoder was pretrained on, from its recipe's pretraining sets, for the probe
to count in the splits it scores.

Self-supervised pretraining sees no labels, but it does see images: an encoder pretrained on a
mix of shard sets that were split by separate ingest jobs may have trained on the very patients
of the split it is now scored on (trainer.patient_overlap warns of it when the run starts; this
counts it where the figures are made). Patients match by pseudonym: sets of one ingest source
made under one salt.
"""

from __future__ import annotations

from typing import Any

from shards.patient_overlap import patients_by_split


def pretraining_patients(recipe: dict[str, Any]) -> tuple[set[str] | None, list[str]]:
    """(the patients of every pretraining set's streamed split, the sets that could not be read);
    None when the recipe does not say what it was pretrained on (exported before it did)."""
    sets = recipe.get("pretrained_sets")
    if sets is None:
        return None, []
    seen: set[str] = set()
    unreadable = []
    for entry in sets:
        try:
            seen.update(patients_by_split(entry["root"]).get(entry["split"], ()))
        except (OSError, ValueError) as exc:
            unreadable.append(f"{entry['root']} ({exc})")
    return seen, unreadable
