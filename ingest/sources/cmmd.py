"""CMMD (The Chinese Mammography Database, TCIA): the download's DICOMs joined to the clinical sheet.

ROOT holds the TCIA download: `metadata.csv` (at ROOT or up to two folders below) whose `File
Location` is a Windows path to each series folder (`.\\CMMD\\D1-0001\\07-18-2010-NA-NA-79377\\
1.000000-NA-70244`, see ingest.tcia), and `CMMD_clinicaldata_revision.xlsx` (same places, or
--sheet). Quirks handled (each seen in the real files, see ../shared/data/README.md):
- the sheet has one row per breast (ID1 + LeftRight), not per image: an image's breast comes
  from its header (ImageLaterality, else Laterality), never from its file name or order;
- a series holds 2 images (one breast, CC and MLO) or 4 (both breasts); in the real sheet 729
  subjects with 4 images have one row, so their other breast's 2 images have no labels: each is
  rejected ("no sheet row"), as is any image whose breast has no row, unless `--unlabeled keep`
  (for self-supervised pretraining: those images become samples whose labels are all None);
- `subtype` is empty for every benign row and for 567 malignant ones (563 of them D1): None;
- no official split: a seeded split by subject (the Subject ID, which TCIA writes as PatientID).
Labels per sample: classification (benign/malignant), subtype (str or None), abnormality
(calcification/mass/both), all of the image's breast.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openpyxl

from ingest import crops, mammogram, pseudonym, splits, tcia
from ingest.arguments import held_out_fraction, least_share, positive_int
from ingest.unit_inputs import decode_unit_dicom, read_input
from ingest.pipeline import EncodedSample, IngestError, IngestJob, Reject, UnitOutput, WorkUnit
from ingest.prior_splits import NO_PRIOR, PriorSplits, load_prior_splits
from shards import codecs, schema

SOURCE = "cmmd"
SHEET_NAME = "CMMD_clinicaldata_revision.xlsx"
SHEET_COLUMNS = ("ID1", "LeftRight", "abnormality", "classification", "subtype")
CLASSIFICATIONS = ("benign", "malignant")
ABNORMALITIES = ("calcification", "mass", "both")
CROP_CHOICES = ("random", "whole")
UNLABELED_POLICIES = ("reject", "keep")
LABEL_KEYS = ("classification", "subtype", "abnormality")  # the order the sheet reader writes them
SIDE_NAMES = {"L": "left", "R": "right"}


@dataclass(frozen=True)
class CmmdImage:
    """A work unit's payload: one mammogram and the sheet rows of its subject's breasts."""

    image_file: str
    patient: str  # pseudonym
    split: str
    breasts: tuple[tuple[str, dict[str, Any]], ...]  # (side "L"/"R", labels) per sheet row


def find_sheet(root: Path, explicit: Path | None) -> Path:
    if explicit is not None:
        if not explicit.is_file():
            raise IngestError(f"--sheet file not found: {explicit}")
        return explicit
    for depth in range(3):
        hits = sorted(root.glob("/".join(["*"] * depth + [SHEET_NAME])))
        if hits:
            return hits[0]
    raise IngestError(f"{root}: no {SHEET_NAME} within two folders of the root; pass it with --sheet")


def read_sheet(path: Path) -> tuple[dict[str, dict[str, dict[str, Any]]], list[Reject]]:
    """The clinical sheet -> subject -> side -> labels, and a reject per unusable row."""
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows = workbook.worksheets[0].iter_rows(values_only=True)
        header = [str(cell).strip() if cell is not None else "" for cell in next(rows, ())]
        missing = [c for c in SHEET_COLUMNS if c not in header]
        if missing:
            raise IngestError(f"{path.name}: no column {', '.join(missing)} in the first sheet (found {header})")
        col = {name: header.index(name) for name in SHEET_COLUMNS}
        breasts: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        rejects = []
        for line, row in enumerate(rows, start=2):
            cells = {name: row[i] if i < len(row) else None for name, i in col.items()}
            if all(v is None for v in cells.values()):
                continue
            text = {name: str(v).strip() if v is not None else "" for name, v in cells.items()}
            side = text["LeftRight"].upper()
            labels = {"classification": text["classification"].lower(), "subtype": text["subtype"] or None,
                      "abnormality": text["abnormality"].lower()}
            problem = (
                "no ID1" if not text["ID1"] else
                f"LeftRight is {text['LeftRight']!r}, not L or R" if side not in SIDE_NAMES else
                f"classification {text['classification']!r} is not Benign or Malignant" if labels["classification"] not in CLASSIFICATIONS else
                f"abnormality {text['abnormality']!r} is not calcification, mass or both" if labels["abnormality"] not in ABNORMALITIES else
                f"a second row for the {SIDE_NAMES[side]} breast" if side in breasts[text["ID1"]] else None
            )
            if problem:
                rejects.append(Reject(f"{path.name}:{line}", f"unreadable sheet row: {problem}"))
                continue
            breasts[text["ID1"]][side] = labels
    finally:
        workbook.close()
    return dict(breasts), rejects


def plan_units(root: Path, series: dict[str, tcia.TciaSeries], breasts: dict[str, dict[str, dict[str, Any]]], *,
               salt: str, test_fraction: float, val_fraction: float, seed: int, prior: PriorSplits = NO_PRIOR,
               ) -> tuple[list[WorkUnit], list[Reject], dict[str, Any]]:
    """One unit per image of every series metadata.csv lists; splits by subject (`prior`'s, from
    --splits-from, as there)."""
    root = root.resolve()
    subjects = {s.subject for s in series.values() if s.subject}
    keep = prior.keep(subjects, "cmmd:")
    subject_split = splits.split_patients(subjects, test_fraction=test_fraction, val_fraction=val_fraction,
                                          seed=seed, keep=keep)
    units, rejects, notes = [], [], Counter()
    for entry in sorted(series.values(), key=lambda s: str(s.folder)):
        folder = entry.folder.resolve()
        rel = folder.relative_to(root).as_posix() if folder.is_relative_to(root) else str(entry.folder)
        if not entry.subject:
            rejects.append(Reject(rel, "unreadable metadata row: no Subject ID"))
            continue
        if not folder.is_relative_to(root):
            rejects.append(Reject(rel, "path outside root: the series' File Location leaves the root folder"))
            continue
        files = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
        if not files:
            rejects.append(Reject(rel, "file not found: no DICOM in the series folder metadata.csv lists"))
            continue
        notes["series_with_another_image_count_than_metadata"] += entry.images is not None and entry.images != len(files)
        rows = breasts.get(entry.subject, {})
        payload_breasts = tuple(sorted(rows.items()))
        for path in files:
            image_rel = f"{rel}/{path.name}"
            if not rows:
                rejects.append(Reject(image_rel, f"no sheet row: the subject has no row in {SHEET_NAME}"))
                continue
            payload = CmmdImage(str(path), pseudonym.pseudonym(salt, f"cmmd:{entry.subject}"),
                                subject_split[entry.subject], payload_breasts)
            units.append(WorkUnit(pseudonym.pseudonym(salt, f"cmmd-image:{entry.uid}/{path.name}"), image_rel, payload))
    units.sort(key=lambda u: u.unit_id)
    listed = {s.subject for s in series.values()}
    notes["sheet_subjects_without_series"] = len(set(breasts) - listed)
    summary = {
        **{k: v for k, v in sorted(notes.items()) if v},
        "subjects": len(subject_split),
        "split": "CMMD has no official split: seeded split by subject (test_fraction), validation carved by subject from the rest",
        "labels": "per breast from the clinical sheet; the image's breast from ImageLaterality (else Laterality)",
        **prior.notes(keep, subject_split, SOURCE),
    }
    return units, rejects, summary


@dataclass(frozen=True)
class CmmdProcess:
    """The per-image work, run in a worker process (picklable: plain fields only)."""

    crops: str
    params: mammogram.CropParams
    seed: int
    keep_unlabeled: bool = False

    def __call__(self, unit: WorkUnit) -> UnitOutput:
        image: CmmdImage = unit.payload
        out = UnitOutput()
        data, fingerprint = read_input(image.image_file, out)
        decoded = decode_unit_dicom(data, unit.source_path, out)
        if decoded is None:
            return out
        pixels = decoded.pixels
        if pixels.ndim != 2:
            out.rejects.append(Reject(unit.source_path, f"not a grayscale mammogram: pixels of shape {pixels.shape}"))
            return out
        side = decoded.laterality
        if side is None:
            out.rejects.append(Reject(unit.source_path, "no laterality: neither ImageLaterality nor Laterality says L or R"))
            return out
        labels = dict(image.breasts).get(side)
        if labels is None and self.keep_unlabeled:
            labels = dict.fromkeys(LABEL_KEYS)
            out.notes["unlabeled_breast_images_kept"] += 1
        elif labels is None:
            out.rejects.append(Reject(unit.source_path, f"no sheet row: the {SIDE_NAMES[side]} breast has no row in {SHEET_NAME}"))
            return out
        h, w = pixels.shape
        if self.crops == "whole":
            box = crops.square_context_box((0, 0, w, h), margin=0.0, min_side=0)
            made = [("whole", "", crops.resize_to(crops.crop_padded(pixels, box), self.params.size), box)]
        else:
            found = mammogram.random_tissue_crops(pixels, [], self.params, random.Random(f"{self.seed}:{unit.unit_id}"))
            out.notes["random_crop_shortfall"] += self.params.random_per_image - len(found)
            made = [("random", i, crop, box) for i, (crop, box) in enumerate(found)]
        common = dict(
            source=SOURCE, patient=image.patient, split=image.split, laterality=side, view=decoded.view,
            source_size=pixels.shape, height=self.params.size, width=self.params.size, channels=1, dtype="uint16",
            labels=labels, pixel_spacing_mm=decoded.pixel_spacing_mm, source_fingerprint=fingerprint.result(),
        )
        for kind, index, crop, box in made:
            meta = schema.SampleMeta(key=f"cmmd_{unit.unit_id}_{kind}{index}", crop_kind=kind, crop_box=box, **common)
            member, encoded = codecs.encode_pixels(crop)
            out.samples.append(EncodedSample.of(meta, {member: encoded}, crop))
        return out


def build_job(*, root: Path, out: Path, crops: str = "random", sheet: Path | None = None, size: int = 224,
              random_per_image: int = 4, random_side: int = 512, min_tissue: float = 0.9, test_fraction: float = 0.1,
              val_fraction: float = 0.1, seed: int = 0, workers: int = 1, shard_size: int = 1000,
              id_salt: str | None = None, splits_from: list[str] | None = None, overwrite: bool = False,
              progress: bool = True, tool_version: str = "0+unknown", unlabeled: str = "reject") -> IngestJob:
    """Plan an `ingest cmmd` job: read metadata.csv and the sheet, list every image, split by subject."""
    if crops not in CROP_CHOICES:
        raise IngestError(f"--crops must be one of {CROP_CHOICES}, got {crops!r}")
    if unlabeled not in UNLABELED_POLICIES:
        raise IngestError(f"--unlabeled must be one of {UNLABELED_POLICIES}, got {unlabeled!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise IngestError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if not root.is_dir():
        raise IngestError(f"{root}: not a folder")
    try:
        series = tcia.read_series_index(root)
    except tcia.TciaLayoutError as exc:
        raise IngestError(str(exc)) from exc
    if not series:
        raise IngestError(f"{root}: no metadata.csv (the TCIA download's series list) within two folders of the root")
    sheet_path = find_sheet(root, sheet)
    breasts, sheet_rejects = read_sheet(sheet_path)
    salt = pseudonym.resolve_salt(id_salt)
    prior = load_prior_splits(splits_from, salt)
    units, plan_rejects, notes = plan_units(root, series, breasts, salt=salt, test_fraction=test_fraction,
                                            val_fraction=val_fraction, seed=seed, prior=prior)
    params = mammogram.CropParams(size=size, random_per_image=random_per_image, random_side=random_side,
                                  min_tissue=min_tissue)
    parameters = {
        "root": str(root), "sheet": sheet_path.name, "crops": crops, "size": size, "test_fraction": test_fraction,
        "val_fraction": val_fraction, "seed": seed, "shard_size": shard_size, "unlabeled": unlabeled,
        "id_salt_fingerprint": pseudonym.salt_fingerprint(salt), **prior.parameters(),
    }
    if crops == "random":
        parameters.update(random_per_image=random_per_image, random_side=random_side, min_tissue=min_tissue)
    return IngestJob(
        source=SOURCE, out=out, units=units, process=CmmdProcess(crops, params, seed, unlabeled == "keep"), parameters=parameters,
        tool_version=tool_version, workers=workers, max_samples_per_shard=shard_size,
        planning_rejects=sheet_rejects + plan_rejects, notes=notes, overwrite=overwrite, progress=progress,
    )


def add_arguments(parser) -> None:
    """`ingest cmmd` options beyond the common ones (ingest/cli.py adds those)."""
    parser.add_argument("root", type=Path, help="CMMD TCIA download: metadata.csv, the CMMD/ series folders, the sheet")
    parser.add_argument("--crops", choices=CROP_CHOICES, default="random",
                        help="random tissue crops (default) or the whole mammogram padded to a square")
    parser.add_argument("--sheet", type=Path, default=None, help=f"clinical sheet (default: {SHEET_NAME} under ROOT)")
    parser.add_argument("--test-fraction", type=held_out_fraction, default=0.1, help="fraction of subjects in test (default 0.1)")
    parser.add_argument("--unlabeled", choices=UNLABELED_POLICIES, default="reject",
                        help="images whose breast has no sheet row: reject them (default) or keep them with null labels")
    parser.add_argument("--random-per-image", type=positive_int, default=4, help="random tissue crops per mammogram (default 4)")
    parser.add_argument("--random-side", type=positive_int, default=512, help="random crop side in source pixels (default 512)")
    parser.add_argument("--min-tissue", type=least_share, default=0.9, help="least tissue fraction of a random crop (default 0.9)")


def job_from_args(args, common: dict[str, Any]) -> IngestJob:
    return build_job(root=args.root, crops=args.crops, sheet=args.sheet, test_fraction=args.test_fraction,
                     random_per_image=args.random_per_image, random_side=args.random_side,
                     min_tissue=args.min_tissue, unlabeled=args.unlabeled, **common)
