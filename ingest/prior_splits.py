"""Splits taken from shard sets made before (`ingest ... --splits-from SET`): a patient already in
one of them keeps the split it has there, and only new patients are split by the seed.

Why: a split is a seeded shuffle of the job's own patients (ingest.splits), so two jobs over
different patient sets split them independently. A hospital archive ingested month by month, a
sub-tree ingested first and the whole tree later, or a collection ingested again for other crops
after some images were added, would put a patient in one set's test split and another's train
split; a run pretrained on both sets has then seen the test patients it is scored on. With
--splits-from the earlier sets' patients stay where they were.

Patients are matched by pseudonym, so the sets must have been made with this job's salt (their
cards' id_salt_fingerprint); a set made under another salt is refused, since no patient would
match and the job would silently split them afresh. A patient that has more than one split in an
earlier set (CBIS with --overlap keep) is not carried over: its rows are counted. Two earlier
sets that disagree on a patient are refused. Where this source has an official split, that split
still decides train or test: an earlier set's patient it places elsewhere is counted in the card's
notes (`patients_placed_otherwise_than_splits_from`) and warned of.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ingest.pipeline import IngestError
from shards import schema, storage
from shards.card import card_digest, read_card


class PriorSplitsError(IngestError):
    """An earlier shard set that cannot give its splits: names the set and the reason."""


@dataclass(frozen=True)
class PriorSplits:
    """Patient pseudonym -> split, from the manifests of the earlier sets."""

    by_patient: dict[str, str]
    sets: list[dict[str, Any]] = field(default_factory=list)  # per set: root, card digest, patients
    patients_with_several_splits: int = 0

    def keep(self, patients: Iterable[str], pseudonymise: Callable[[str], str]) -> dict[str, str]:
        """raw patient -> its earlier split, for those of `patients` an earlier set holds."""
        found = {}
        for patient in patients:
            split = self.by_patient.get(pseudonymise(patient))
            if split is not None:
                found[patient] = split
        return found

    def parameters(self) -> list[dict[str, Any]]:
        """What the card's parameters record (and the job's fingerprint covers: a resumed run
        whose earlier sets were made again is another run)."""
        return self.sets

    def notes(self, keep: Mapping[str, str], assigned: Mapping[str, str], source: str) -> dict[str, int]:
        """The card's notes for a job whose patients got `assigned` (raw -> split), `keep` being
        keep()'s answer; warns when an official split overrode an earlier set's."""
        moved = sum(assigned.get(patient, split) != split for patient, split in keep.items())
        if moved:
            warnings.warn(f"{moved} patient(s) of the --splits-from sets are in another split here: "
                          f"{source}'s official split places them (see the card's notes)", stacklevel=2)
        elif not keep:
            warnings.warn("no patient of the --splits-from sets is in this job: every patient is split by the seed "
                          "(a set of another ingest source never shares a patient with it)", stacklevel=2)
        notes = {"patients_split_as_in_splits_from": len(keep) - moved}
        if moved:
            notes["patients_placed_otherwise_than_splits_from"] = moved
        if self.patients_with_several_splits:
            notes["splits_from_patients_with_several_splits"] = self.patients_with_several_splits
        return notes


def load_prior_splits(roots: Sequence[str] | None, salt_fingerprint: str) -> PriorSplits | None:
    """The splits of the shard sets at `roots` (folders or URIs); None when there are none."""
    if not roots:
        return None
    by_patient: dict[str, str] = {}
    origin: dict[str, str] = {}  # patient -> the root that gave its split
    several: set[str] = set()
    sets = []
    for root in roots:
        try:
            card = read_card(root)
            table = storage.read_parquet(storage.join(root, schema.MANIFEST_FILE), columns=["patient", "split"])
        except (OSError, ValueError, KeyError) as exc:
            raise PriorSplitsError(f"--splits-from {root}: {exc}") from None
        theirs = card.get("parameters", {}).get("id_salt_fingerprint")
        if theirs != salt_fingerprint:
            raise PriorSplitsError(
                f"--splits-from {root}: made under another patient-ID salt (fingerprint {theirs}, this job's "
                f"{salt_fingerprint}), so no patient would match; give the --id-salt (or $MEDSHARDS_ID_SALT) it was made with")
        splits: dict[str, set[str]] = {}
        for patient, split in zip(table["patient"].to_pylist(), table["split"].to_pylist()):
            splits.setdefault(patient, set()).add(split)
        for patient, found in splits.items():
            if len(found) > 1:
                several.add(patient)
                continue
            (split,) = found
            if by_patient.get(patient, split) != split:
                raise PriorSplitsError(
                    f"--splits-from: patient {patient} is {by_patient[patient]} in {origin[patient]} and {split} in "
                    f"{root}; those sets disagree, so there is no one split to keep: give one of them")
            by_patient.setdefault(patient, split)
            origin.setdefault(patient, str(root))
        sets.append({"root": str(root), "card_digest": card_digest(card), "patients": len(splits)})
    for patient in several:
        by_patient.pop(patient, None)
    return PriorSplits(by_patient, sets, len(several))
