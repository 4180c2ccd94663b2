"""Patients a run trains on that another of its shard sets holds out: said before the run starts.

Ingest splits each set by patient, so within one set no patient is in two splits. Sets made by
separate jobs were split separately (ingest.splits shuffles a job's own patients): a hospital
archive's first export and its second, or a collection ingested again after images were added,
can hold one patient in the first set's test split and the second's train split. Mixed in one
run (data.sources), the run then trains on patients that a validation pass on the other set, or
a later evaluation on its test split, scores as unseen. Pseudonyms match only between sets made
by the same source under the same salt, which is when this can happen; `ingest ... --splits-from`
makes the second set keep the first one's splits; `shards overlap` audits sets made already.
"""

from __future__ import annotations

from shards import storage
from shards.patient_overlap import patients_by_split
from trainer.config import ExperimentConfig

_HELD_OUT = {"val": "a validation pass on it measures patients the run trains on",
             "test": "an evaluation on that split scores patients the encoder was pretrained on"}


def held_out_patients_in_training(config: ExperimentConfig) -> list[str]:
    """One line per (set, held-out split) that shares patients with the streamed splits of the
    run's sources; none for a run on one set. Reads the patient and split columns of each
    set's manifest (OSError, ValueError as storage raises them)."""
    streamed = {(storage.shard_root(s.root), s.split) for s in config.data.sources}
    roots = list(dict.fromkeys(root for root, _ in streamed))
    if len(roots) < 2:
        return []
    splits = {root: patients_by_split(root) for root in roots}
    problems = []
    for root in roots:
        # the other sets' streamed patients: within one set, ingest's split (and its --overlap) decided
        training = set().union(*(splits[other].get(split, set()) for other, split in streamed if other != root))
        for split, consequence in _HELD_OUT.items():
            if (root, split) in streamed:
                continue  # trained on knowingly
            shared = training & splits[root].get(split, set())
            if shared:
                problems.append(f"{len(shared)} patient(s) trained on from another set are in {root}'s {split} split: "
                                f"the sets were split separately, so {consequence}. Ingest the later set again with "
                                "--splits-from the earlier one (README: splits across shard sets)")
    return problems
