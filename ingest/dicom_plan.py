"""The plan of `ingest dicom`: the archive walked, every file's header read, the images kept
split by patient and made work units (ingest.sources.dicom_archive decodes them).

Memory per file, no pixels: while the walk goes on a kept file is its paths and raw keys, the
patient, study and series keys one string object each however many files share them; a unit
holds its pseudonyms, one object for each patient, study and series. Measured (tracemalloc) on a
generated archive of 10,000 files, 5 per series: the plan peaks at 863 bytes a file and its units
keep 509, where whole DicomFile records and a pseudonym string per unit took 1,557 and 681.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ingest import dicom_tree, pseudonym, splits
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
    units: list[WorkUnit]
    rejects: list[Reject]
    notes: dict[str, Any]


def _path_id(rel: str) -> str:
    """A path as an identifier to hash: Linux paths need not be UTF-8 (os.scandir hands them over
    with surrogate escapes, which cannot be encoded), so their bytes are used, one char each."""
    return os.fsencode(rel).decode("latin-1")


class _Kept(NamedTuple):
    """A planned image file, as the plan holds it until its unit is made: its raw patient, study
    and series keys (never output; pseudonymised into the unit), shared by the files of a series."""

    rel: str
    path: str
    bare_syntax: str | None
    frames: int
    patient: str
    study: str  # the StudyInstanceUID, or "file:PATH" when the file has none
    series: str  # "STUDY/SeriesInstanceUID", or "STUDY/PATH"


def _kept(found: dicom_tree.DicomFile, patient: str, shared: dict[str, str]) -> _Kept:
    study = found.study or f"file:{_path_id(found.rel)}"
    series = f"{study}/{found.series or _path_id(found.rel)}"
    return _Kept(found.rel, found.path, found.bare_syntax, found.frames, shared.setdefault(patient, patient),
                 shared.setdefault(study, study), shared.setdefault(series, series))


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
    kept: list[_Kept] = []  # memory per file, no pixels: what a unit needs, its raw keys shared with its series
    sop_seen: set[bytes] = set()
    shared: dict[str, str] = {}  # one string object for each raw patient, study and series key
    skip_real = os.path.realpath(skip) if skip is not None else None
    files = dicom_tree.walk_files(str(root), skip=skip_real, counts=counts, problems=problems)
    if storage.is_uri(root):  # one ranged request a file, many in flight
        examined = dicom_tree.object_heads(files)
    else:
        examined = ((rel, path, None) for rel, path in files)
    bar = progress_bar(unit=" files", desc=f"plan dicom {root}", enabled=progress)
    for rel, path, head in examined:
        counts["files_seen"] += 1
        bar.update(1)
        if counts["files_seen"] % 1000 == 0:
            bar.set_postfix_str(f"{len(kept)} images kept", refresh=False)
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
            digest = hashlib.blake2b(found.sop_instance.encode(), digest_size=8).digest()
            counts["files_sharing_a_sop_instance_uid"] += digest in sop_seen
            sop_seen.add(digest)
        kept.append(_kept(found, _patient_key(found, counts), shared))
    bar.set_postfix_str(f"{len(kept)} images kept", refresh=False)
    bar.close()
    rejects += [Reject(rel, reason) for rel, reason in problems]
    patients = {k.patient for k in kept}
    keep = prior.keep(patients, "dicom-")
    patient_split = splits.split_patients(patients, test_fraction=test_fraction, val_fraction=val_fraction,
                                          seed=seed, keep=keep)
    pseudonym_of = functools.cache(functools.partial(pseudonym.pseudonym, salt))  # once per patient, study, series
    units = []
    for k in kept:
        payload = ArchiveImage(
            path=k.path,
            patient=pseudonym_of(f"dicom-{k.patient}"),
            study=pseudonym_of(f"dicom-study:{k.study}"),
            series=pseudonym_of(f"dicom-series:{k.series}"),
            split=patient_split[k.patient],
            frame={"first": 0, "middle": k.frames // 2, "all": None}[frames],
            bare_syntax=k.bare_syntax,
        )
        units.append(WorkUnit(pseudonym.pseudonym(salt, f"dicom-image:{_path_id(k.rel)}"), k.rel, payload))
    units.sort(key=lambda u: u.unit_id)
    notes: dict[str, Any] = {
        **dict(sorted((k, v) for k, v in counts.items() if v)),
        "image_files": len(units),
        "patients": len(patient_split),
        "studies": len({u.payload.study for u in units}),
        "series": len({u.payload.series for u in units}),
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
