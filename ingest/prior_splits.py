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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ingest import pseudonym
from ingest.pipeline import IngestError
from shards.card import card_digest, read_card
from shards.patient_overlap import patients_by_split


class PriorSplitsError(IngestError):
    """An earlier shard set that cannot give its splits: names the set and the reason."""


@dataclass(frozen=True)
class PriorSplits:
    """Patient pseudonym -> split, from the manifests of the earlier sets, under this job's salt.
    Without sets (no --splits-from) it keeps nothing and adds nothing to the card, so a source
    calls it the same way either way."""

    by_patient: dict[str, str] = field(default_factory=dict)
    sets: list[dict[str, Any]] = field(default_factory=list)  # per set: root, card digest, patients
    patients_with_several_splits: int = 0
    salt: str = field(default="", repr=False)  # the job's, to pseudonymise its raw patient IDs

    def keep(self, patients: Iterable[str], prefix: str) -> dict[str, str] | None:
        """raw patient -> its earlier split, for those of `patients` an earlier set holds; a raw
        ID's pseudonym is the source's, pseudonym(salt, prefix + ID). None without sets."""
        if not self.sets:
            return None
        found = {}
        for patient in patients:
            split = self.by_patient.get(pseudonym.pseudonym(self.salt, prefix + patient))
            if split is not None:
                found[patient] = split
        return found

    def parameters(self) -> dict[str, Any]:
        """What the card's parameters gain (and the job's fingerprint covers: a resumed run whose
        earlier sets were made again is another run); nothing without sets."""
        return {"splits_from": self.sets} if self.sets else {}

    def notes(self, keep: Mapping[str, str] | None, assigned: Mapping[str, str], source: str) -> dict[str, int]:
        """The card's notes for a job whose patients got `assigned` (raw -> split), `keep` being
        keep()'s answer; warns when an official split overrode an earlier set's. Nothing without sets."""
        if keep is None:
            return {}
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


NO_PRIOR = PriorSplits()  # no --splits-from: sources take it as their plan functions' default


def load_prior_splits(roots: Sequence[str] | None, salt: str) -> PriorSplits:
    """The splits of the shard sets at `roots` (folders or URIs), for a job under `salt`."""
    by_patient: dict[str, str] = {}
    origin: dict[str, str] = {}  # patient -> the root that gave its split
    several: set[str] = set()
    sets = []
    fingerprint = pseudonym.salt_fingerprint(salt)
    for root in roots or ():
        try:
            card = read_card(root)
            by_split = patients_by_split(root)
        except (OSError, ValueError, KeyError) as exc:
            raise PriorSplitsError(f"--splits-from {root}: {exc}") from None
        theirs = card.get("parameters", {}).get("id_salt_fingerprint")
        if theirs != fingerprint:
            raise PriorSplitsError(
                f"--splits-from {root}: made under another patient-ID salt (fingerprint {theirs}, this job's "
                f"{fingerprint}), so no patient would match; give the --id-salt (or $MEDSHARDS_ID_SALT) it was made with")
        splits: dict[str, set[str]] = {}
        for split, patients in by_split.items():
            for patient in patients:
                splits.setdefault(patient, set()).add(split)
        for patient, found in sorted(splits.items()):
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
    return PriorSplits(by_patient, sets, len(several), salt)
