"""The plan of `ingest dicom`: the archive walked, every file's header read, the images kept
split by patient and made work units (ingest.sources.dicom_archive decodes them).

Memory: the plan does not grow with the archive's files. Each kept file is a row (its paths,
frame count and pseudonyms; never a raw identifier) spilled to disk as the walk goes, and the
job's units are read back from the sorted table (ingest.unit_table) a batch at a time. What the
plan holds in memory is one entry a patient (the split is by patient) and, to count distinct
studies, series and SOP instances, 8 bytes a file (a series' neighbouring files once).
Before, every kept file and its unit were Python objects: 1.4 KB a file (10,000 files, tracemalloc).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ingest import dicom_tree, pseudonym, splits, unit_table
from ingest.distinct_count import DistinctCount
from ingest.pipeline import Reject, WorkUnit
from ingest.prior_splits import NO_PRIOR, PriorSplits
from shards import storage
from shards.progress_bar import progress_bar

SOURCE = "dicom"


@dataclass(frozen=True)
class ArchiveImage:
    """A work unit's payload: one DICOM image file and where its samples go."""

    path: str
    patient: str  # pseudonym
    study: str  # pseudonym
    series: str  # pseudonym
    split: str
    frame: int | None  # the one frame to decode; None: every frame
    bare_syntax: str | None  # see dicom_tree.DicomFile


@dataclass(frozen=True)
class ArchivePlan:
    units: Sequence[WorkUnit]  # a unit_table.UnitTable
    rejects: list[Reject]
    notes: dict[str, Any]


def _path_id(rel: str) -> str:
    """A path as an identifier to hash: Linux paths need not be UTF-8 (os.scandir hands them over
    with surrogate escapes, which cannot be encoded), so their bytes are used, one char each."""
    return os.fsencode(rel).decode("latin-1")


# A planned file as the walk spills it, sorted by unit id: pseudonyms only, never a raw identifier.
_RUN_SCHEMA = pa.schema([("unit_id", pa.string()), ("rel", pa.binary()), ("path", pa.binary()),
                         ("bare_syntax", pa.string()), ("frames", pa.int64()), ("patient", pa.string()),
                         ("study", pa.string()), ("series", pa.string())])
# A unit as the job reads it: the same, with its split and the frame to decode (None: every frame).
_UNIT_SCHEMA = pa.schema([("unit_id", pa.string()), ("rel", pa.binary()), ("path", pa.binary()),
                          ("bare_syntax", pa.string()), ("frame", pa.int64()), ("patient", pa.string()),
                          ("study", pa.string()), ("series", pa.string()), ("split", pa.string())])


def unit_of_row(row: tuple) -> WorkUnit:
    """A _UNIT_SCHEMA row as the job's WorkUnit (paths are bytes in the table: a Linux file name
    need not be UTF-8, and Arrow strings must be)."""
    unit_id, rel, path, bare_syntax, frame, patient, study, series, split = row
    return WorkUnit(unit_id, os.fsdecode(rel), ArchiveImage(
        path=os.fsdecode(path), patient=patient, study=study, series=series, split=split, frame=frame,
        bare_syntax=bare_syntax))


def _patient_key(found: dicom_tree.DicomFile, notes: Counter) -> str:
    if found.patient_id:
        return f"patient:{found.patient_id}"
    if found.study:
        notes["files_without_patient_id"] += 1
        return f"study:{found.study}"
    notes["files_without_patient_id_or_study"] += 1
    return f"file:{_path_id(found.rel)}"


def unreadable(exc: OSError) -> str:
    """A reject's reason for a file or object that could not be read, in planning or in a worker."""
    return f"unreadable file: {exc.strerror or str(exc) or type(exc).__name__}"


def identifying_pixels(found: dicom_tree.DicomFile) -> str | None:
    """A reject's reason for a file whose header says its pixels identify the patient, else None."""
    said = [what for what, value in (("Burned In Annotation (0028,0301)", found.burned_in),
                                     ("Recognizable Visual Features (0028,0302)", found.recognizable)) if value == "YES"]
    if not said:
        return None
    return (f"identifying pixels: {' and '.join(said)} YES: the image itself may show patient data (text drawn "
            "into it, or a face); --burned-in keep ingests such files")


def plan_archive(root: Path | str, *, skip: Path | None, salt: str, modalities: tuple[str, ...] | None, frames: str,
                 test_fraction: float, val_fraction: float, seed: int, progress: bool = False,
                 burned_in: str = "reject", prior: PriorSplits = NO_PRIOR) -> ArchivePlan:
    """Walk the tree, read headers, keep the images that pass the modality filter, split by patient
    (`prior`'s patients, --splits-from, as there).
    With progress, a counter of the files looked at and the images kept (a hospital archive's
    walk of a million files is a long wait with no total to show)."""
    counts: Counter = Counter()
    filtered: Counter = Counter()
    problems: list[tuple[str, str]] = []
    rejects: list[Reject] = []
    pseudonym_of = functools.lru_cache(4096)(functools.partial(pseudonym.pseudonym, salt))  # a series' files are neighbours
    patients: dict[str, str] = {}  # raw patient key -> its pseudonym: what the plan holds in memory a patient
    studies, series, sops = DistinctCount(), DistinctCount(), DistinctCount()
    planned = unit_table.UnitTableBuilder(_RUN_SCHEMA, prefix="medshards-dicom-plan-")  # spilled as it grows
    skip_real = os.path.realpath(skip) if skip is not None else None
    files = dicom_tree.walk_files(str(root), skip=skip_real, counts=counts, problems=problems)
    if storage.is_uri(root):  # one ranged request a file, many in flight
        examined = dicom_tree.object_heads(files)
    else:
        examined = ((rel, path, None) for rel, path in files)
    bar = progress_bar(unit=" files", desc=f"plan dicom {root}", enabled=progress)
    kept = 0
    for rel, path, head in examined:
        counts["files_seen"] += 1
        bar.update(1)
        if counts["files_seen"] % 1000 == 0:
            bar.set_postfix_str(f"{kept} images kept", refresh=False)
        try:
            if isinstance(head, OSError):
                raise head
            how = dicom_tree.sniff(path, head)
            found = dicom_tree.read_plan_header(rel, path, how, head) if how else None
        except OSError as exc:
            rejects.append(Reject(rel, unreadable(exc)))
            continue
        except dicom_tree.DicomTreeError as exc:
            rejects.append(Reject(rel, str(exc)))
            continue
        if found is None:
            counts["non_dicom_files_skipped"] += 1
            continue
        if found.kind != "image":
            counts["dicomdir_files_skipped" if found.kind == "dicomdir" else "dicom_files_without_pixels_skipped"] += 1
            continue
        counts["bare_dicom_files_without_preamble"] += found.bare_syntax is not None
        if modalities is not None and (found.modality or "(none)") not in modalities:
            filtered[found.modality or "(none)"] += 1
            continue
        if burned_in == "reject" and (reason := identifying_pixels(found)):
            rejects.append(Reject(rel, reason))
            continue
        counts["files_not_saying_whether_text_is_burned_in"] += found.burned_in not in ("YES", "NO")
        if found.sop_instance:
            sops.add_text(found.sop_instance)
        patient = _patient_key(found, counts)
        if patient not in patients:
            patients[patient] = pseudonym_of(f"dicom-{patient}")
        study = found.study or f"file:{_path_id(rel)}"
        study_pseudonym = pseudonym_of(f"dicom-study:{study}")
        series_pseudonym = pseudonym_of(f"dicom-series:{study}/{found.series or _path_id(rel)}")
        studies.add_text(study_pseudonym)
        series.add_text(series_pseudonym)
        planned.add((pseudonym.pseudonym(salt, f"dicom-image:{_path_id(rel)}"), os.fsencode(rel), os.fsencode(path),
                     found.bare_syntax, found.frames, patients[patient], study_pseudonym, series_pseudonym))
        kept += 1
    bar.set_postfix_str(f"{kept} images kept", refresh=False)
    bar.close()
    counts["files_sharing_a_sop_instance_uid"] = sops.repeats()
    rejects += [Reject(rel, reason) for rel, reason in problems]
    keep = prior.keep(patients, "dicom-")
    patient_split = splits.split_patients(patients, test_fraction=test_fraction, val_fraction=val_fraction,
                                          seed=seed, keep=keep)
    split_of = {patients[raw]: split for raw, split in patient_split.items()}  # by pseudonym, as the rows have it
    frame_of = {"first": lambda n: 0, "middle": lambda n: n // 2, "all": lambda n: None}[frames]

    def unit_row(row: tuple) -> tuple:
        unit_id, rel, path, bare_syntax, frame_count, patient, study, series_ = row
        return unit_id, rel, path, bare_syntax, frame_of(frame_count), patient, study, series_, split_of[patient]

    units = planned.finish(_UNIT_SCHEMA, unit_of_row, unit_row)
    notes: dict[str, Any] = {
        **dict(sorted((k, v) for k, v in counts.items() if v)),
        "image_files": len(units),
        "patients": len(patient_split),
        "studies": studies.count(),
        "series": series.count(),
        "split": "no official split: seeded split by patient (test_fraction), validation carved by patient from the rest",
        "frames": {"middle": "one sample per file: the middle frame of a multi-frame file",
                   "first": "one sample per file: the first frame",
                   "all": "one sample per frame"}[frames],
        **prior.notes(keep, patient_split, SOURCE),
    }
    if counts["files_without_patient_id"] or counts["files_without_patient_id_or_study"]:
        notes["patient_fallback"] = ("a file without PatientID is one pseudonymous patient per StudyInstanceUID; "
                                     "without either, a patient of its own")
    if filtered:
        notes["filtered_out_by_modality"] = dict(sorted(filtered.items()))
    if len(patient_split) == 1 and notes["studies"] > 1 and (test_fraction > 0 or val_fraction > 0):
        notes["one_patient_id_for_every_study"] = True
        warnings.warn(OnePatientArchive(
            f"every one of the {notes['studies']} studies has the same PatientID, so all {len(units)} images are one "
            "patient and all go to train: no val or test split by patient. An anonymiser that writes one constant "
            "PatientID does this; if yours did, give each patient an ID of their own (a pseudonym will do) and "
            "ingest again"), stacklevel=2)
    return ArchivePlan(units, sorted(rejects, key=lambda r: r.source_path), notes)


class OnePatientArchive(UserWarning):
    """An archive whose studies all share one PatientID: nothing to split by patient."""
