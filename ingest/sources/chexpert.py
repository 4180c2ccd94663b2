"""CheXpert: 224,316 chest radiographs of 65,240 patients (Stanford), 14 observations labelled
from the reports as positive (1.0), negative (0.0), uncertain (-1.0) or unmentioned (blank)
(Irvin et al., AAAI 2019; PCRLv2, paper 003 §4.3, pretrains on it without labels, resizing to
224 after a random crop: `--crops random`).

What a download holds, and how it is read:
- `CheXpert-v1.0/` or `CheXpert-v1.0-small/` with `train.csv`, `valid.csv` and
  `{train,valid}/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg`. ROOT is that folder or the
  one holding it. The CSV's Path column repeats the folder name (`CheXpert-v1.0-small/train/
  patient00001/study1/view1_frontal.jpg`): it is resolved under the folder with that first part
  dropped (so a renamed folder works), then under the folder, then under its parent;
- uncertain labels follow --uncertain: Irvin et al.'s U-Zeros, U-Ones, or U-Ignore (None, to be
  left out of the loss); a blank is negative, the usual reading of an unmentioned observation;
- images are 8-bit JPEGs (a 3-channel one is reduced to gray, counted): stored as 1-channel
  uint8 PNG of the decoded pixels, nothing re-quantised;
- the patient is the `patientNNNNN` path part, pseudonymised; Sex and Age are not kept (they
  help single a patient out and pretraining needs neither);
- train.csv is the train split, with validation carved from it by patient; valid.csv (the
  official validation set, labelled by radiologists) is the test split.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ingest import pseudonym, splits
from ingest.arguments import positive_int
from ingest.unit_inputs import read_unit_image
from ingest.prior_splits import load_prior_splits
from ingest.pipeline import EncodedSample, IngestError, IngestJob, Reject, UnitOutput, WorkUnit
from ingest.radiograph_crops import CROP_KINDS, RadiographCropParams, radiograph_crops
from shards import codecs, schema

SOURCE = "chexpert"
OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices")
# Label keys: the CSV's names with underscores (Cardiomegaly, Pleural_Effusion...), so findings
# shared with NIH ChestX-ray14 carry the same key there; No Finding is `no_finding` in both.
LABEL_KEYS = {name: "no_finding" if name == "No Finding" else name.replace(" ", "_") for name in OBSERVATIONS}
CSV_SPLITS = {"train.csv": "train", "valid.csv": "valid"}  # file -> official split
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
VIEW_CHOICES = ("frontal", "lateral", "both")
REQUIRED_COLUMNS = ("Path", "Frontal/Lateral", "AP/PA", *OBSERVATIONS)
PATIENT_PART = re.compile(r"^patient\d+$")
STUDY_PART = re.compile(r"^study(\d+)$")


class ChexpertInputError(IngestError):
    """The CheXpert inputs cannot be used (no CSVs, missing columns, a root that is not a folder)."""


@dataclass(frozen=True)
class Row:
    """One CSV row that passed the view filter."""

    path: str  # the Path cell
    patient: str  # raw patientNNNNN: for splitting only, never written out
    official_split: str
    view: str | None
    labels: dict[str, bool | None]
    study: int | None


@dataclass(frozen=True)
class ChexpertImage:
    """A work unit's payload."""

    image_file: str
    patient: str  # pseudonym
    split: str
    official_split: str
    view: str | None
    labels: dict[str, bool | None]
    study: int | None


def observation(cell: str, uncertain: str) -> bool | None:
    """'1.0' -> True, '0.0' or '' -> False, '-1.0' -> by policy (zeros False, ones True, ignore None)."""
    cell = cell.strip()
    if not cell:
        return False
    value = float(cell)
    if value == -1.0:
        return {"zeros": False, "ones": True, "ignore": None}[uncertain]
    if value not in (0.0, 1.0):
        raise ValueError(f"label value {cell!r} is none of 1.0, 0.0, -1.0, blank")
    return value == 1.0


def parse_row(cells: dict[str, str], official_split: str, uncertain: str) -> Row:
    """One CSV row -> Row. Raises ValueError naming what is wrong."""
    path = cells["Path"].strip()
    parts = PurePosixPath(path).parts
    patients = [p for p in parts if PATIENT_PART.match(p)]
    if not patients:
        raise ValueError(f"path {path!r} has no patientNNNNN part")
    studies = [int(m.group(1)) for p in parts if (m := STUDY_PART.match(p))]
    frontal = cells["Frontal/Lateral"].strip().lower()
    if frontal not in ("frontal", "lateral"):
        raise ValueError(f"Frontal/Lateral is {cells['Frontal/Lateral']!r}")
    view = (cells["AP/PA"].strip().upper() or None) if frontal == "frontal" else "LATERAL"
    labels = {LABEL_KEYS[name]: observation(cells[name], uncertain) for name in OBSERVATIONS}
    return Row(path, patients[0], official_split, view, labels, studies[0] if studies else None)


def read_rows(csv_paths: dict[str, Path], *, uncertain: str, views: str) -> tuple[list[Row], list[Reject], int]:
    """Every row of train.csv / valid.csv -> (rows of the wanted views, rejects, rows filtered out by view)."""
    rows, rejects, filtered = [], [], 0
    seen: set[str] = set()
    for name, path in csv_paths.items():
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ChexpertInputError(f"{path}: missing columns {missing}")
            for line_no, cells in enumerate(reader, start=2):
                where = f"{name}:{line_no}"
                try:
                    row = parse_row(cells, CSV_SPLITS[name], uncertain)
                except (ValueError, AttributeError) as exc:  # AttributeError: a short row's missing cell is None
                    rejects.append(Reject(where, f"unreadable CSV row: {exc}"))
                    continue
                if row.path in seen:
                    rejects.append(Reject(where, f"duplicate CSV row: {row.path} is listed twice"))
                    continue
                seen.add(row.path)
                if views != "both" and (row.view == "LATERAL") != (views == "lateral"):
                    filtered += 1
                    continue
                rows.append(row)
    return rows, rejects, filtered


def dataset_folder(root: Path) -> Path:
    """The folder holding train.csv / valid.csv: ROOT itself or the one subfolder of ROOT that does."""
    if any((root / name).is_file() for name in CSV_SPLITS):
        return root
    below = sorted({p.parent for name in CSV_SPLITS for p in root.glob(f"*/{name}")})
    if len(below) == 1:
        return below[0]
    if below:
        raise ChexpertInputError(f"{root}: several CheXpert folders ({', '.join(p.name for p in below)}); point ROOT at one")
    raise ChexpertInputError(f"{root}: no train.csv or valid.csv in ROOT or one folder down; "
                             "point ROOT at CheXpert-v1.0(-small)/ or the folder holding it")


def resolve(folder: Path, path_cell: str) -> Path | None:
    """The image a Path cell names: under the dataset folder without the cell's first part (the
    folder's published name, which a user may have changed), under the folder, or under its
    parent. None when none exists. Paths with '..' or absolute paths are rejected before."""
    parts = PurePosixPath(path_cell).parts
    for candidate in (folder.joinpath(*parts[1:]), folder.joinpath(*parts), folder.parent.joinpath(*parts)):
        if candidate.is_file():
            return candidate
    return None


def assign_splits(rows: list[Row], *, val_fraction: float, seed: int,
                  keep: dict[str, str] | None = None) -> tuple[dict[str, str], int]:
    """raw patient -> split: valid.csv patients are test; a train.csv patient also in valid.csv
    goes wholly to test (counted); val is carved by patient from the rest of train.csv (keep:
    raw patient -> its split in an earlier set, --splits-from)."""
    test = {r.patient for r in rows if r.official_split == "valid"}
    train = {r.patient for r in rows if r.official_split == "train"}
    val = splits.carve_validation(train - test, fraction=val_fraction, seed=seed, keep=keep)
    out = {p: "val" if p in val else "train" for p in train - test}
    out.update({p: "test" for p in test})
    return out, len(train & test)


def plan_units(folder: Path, rows: list[Row], patient_split: dict[str, str], *,
               salt: str) -> tuple[list[WorkUnit], list[Reject]]:
    """One unit per row whose image exists, sorted by pseudonymous id; rejects for the others."""
    units, rejects = [], []
    for row in rows:
        parts = PurePosixPath(row.path).parts
        if PurePosixPath(row.path).is_absolute() or ".." in parts:
            rejects.append(Reject(row.path, "path outside root: the CSV's Path leaves the dataset folder"))
            continue
        image_file = resolve(folder, row.path)
        if image_file is None:
            rejects.append(Reject(row.path, "file not found: neither under the dataset folder nor beside it"))
            continue
        payload = ChexpertImage(
            image_file=str(image_file), patient=pseudonym.pseudonym(salt, f"chexpert:{row.patient}"),
            split=patient_split[row.patient], official_split=row.official_split, view=row.view,
            labels=row.labels, study=row.study,
        )
        # Keyed on the path below the dataset folder, so CheXpert-v1.0 and -small give the same ids.
        unit_id = pseudonym.pseudonym(salt, f"chexpert-image:{'/'.join(parts[1:])}")
        units.append(WorkUnit(unit_id, row.path, payload))
    units.sort(key=lambda u: u.unit_id)
    return units, rejects


@dataclass(frozen=True)
class ChexpertProcess:
    """The per-image work, run in a worker process (picklable: plain fields only)."""

    crops: str
    params: RadiographCropParams
    seed: int

    def __call__(self, unit: WorkUnit) -> UnitOutput:
        image: ChexpertImage = unit.payload
        out = UnitOutput()
        loaded = read_unit_image(image.image_file, unit.source_path, out)
        if loaded is None:
            return out
        pixels, fingerprint = loaded[0].pixels, loaded[1]
        crops, notes = radiograph_crops(pixels, self.crops, self.params, random.Random(f"{self.seed}:{unit.unit_id}"))
        out.notes.update(notes)
        # Waited for last, so hashing the file overlaps the decoding and cropping above.
        common = dict(
            source=SOURCE, patient=image.patient, split=image.split, official_split=image.official_split,
            view=image.view, source_size=pixels.shape, channels=1, dtype=str(pixels.dtype),
            height=self.params.size, width=self.params.size, labels=image.labels,
            extra={"study": image.study}, source_fingerprint=fingerprint.result(),
        )
        for i, crop in enumerate(crops):
            suffix = "whole" if crop.kind == "whole" else f"random{i}"
            meta = schema.SampleMeta(key=f"chexpert_{unit.unit_id}_{suffix}", crop_kind=crop.kind, crop_box=crop.box, **common)
            member, encoded = codecs.encode_pixels(crop.pixels)
            out.samples.append(EncodedSample.of(meta, {member: encoded}, crop.pixels))
        return out


def build_job(*, root: Path, out: Path, crops: str = "whole", uncertain: str = "zeros", views: str = "frontal",
              size: int = 224, random_per_image: int = 4, random_side: int = 512, val_fraction: float = 0.1,
              seed: int = 0, workers: int = 1, shard_size: int = 1000, id_salt: str | None = None,
              splits_from: list[str] | None = None, overwrite: bool = False, progress: bool = True,
              tool_version: str = "0+unknown") -> IngestJob:
    """Plan an `ingest chexpert` job: read train.csv / valid.csv, resolve every image, assign splits."""
    for option, value, choices in (("--crops", crops, CROP_KINDS), ("--uncertain", uncertain, UNCERTAIN_POLICIES),
                                   ("--views", views, VIEW_CHOICES)):
        if value not in choices:
            raise ChexpertInputError(f"{option} must be one of {choices}, got {value!r}")
    if not root.is_dir():
        raise ChexpertInputError(f"{root}: not a folder")
    folder = dataset_folder(root)
    csv_paths = {name: folder / name for name in CSV_SPLITS if (folder / name).is_file()}
    salt = pseudonym.resolve_salt(id_salt)
    rows, row_rejects, filtered = read_rows(csv_paths, uncertain=uncertain, views=views)
    prior = load_prior_splits(splits_from, salt)
    keep = prior.keep({r.patient for r in rows}, "chexpert:")
    patient_split, crossing = assign_splits(rows, val_fraction=val_fraction, seed=seed, keep=keep)
    units, plan_rejects = plan_units(folder, rows, patient_split, salt=salt)
    params = RadiographCropParams(size=size, random_per_image=random_per_image, random_side=random_side)
    parameters = {
        "root": str(root), "csvs": sorted(csv_paths), "crops": crops, "uncertain": uncertain, "blank": "negative",
        "views": views, "val_fraction": val_fraction, "seed": seed, "shard_size": shard_size, **asdict(params),
        "id_salt_fingerprint": pseudonym.salt_fingerprint(salt), **prior.parameters(),
    }
    notes = {
        "split": "train.csv -> train (val carved by patient); valid.csv -> test",
        "views_filtered_out": filtered,
        "patients_in_train_and_valid": crossing,
        **prior.notes(keep, patient_split, SOURCE),
    }
    return IngestJob(
        source=SOURCE, out=out, units=units, process=ChexpertProcess(crops, params, seed), parameters=parameters,
        tool_version=tool_version, workers=workers, max_samples_per_shard=shard_size,
        planning_rejects=row_rejects + plan_rejects, notes=notes, overwrite=overwrite, progress=progress,
    )


def add_arguments(parser) -> None:
    """`ingest chexpert` options beyond the common ones (ingest/cli.py adds those)."""
    parser.add_argument("root", type=Path,
                        help="CheXpert-v1.0(-small) folder holding train.csv and valid.csv, or the folder holding it")
    parser.add_argument("--crops", choices=CROP_KINDS, default="whole", help="whole image or random square crops (default whole)")
    parser.add_argument("--uncertain", choices=UNCERTAIN_POLICIES, default="zeros",
                        help="uncertain (-1.0) labels become negative, positive, or null (default zeros)")
    parser.add_argument("--views", choices=VIEW_CHOICES, default="frontal", help="which views to keep (default frontal)")
    parser.add_argument("--random-per-image", type=positive_int, default=4, help="random crops per image (default 4)")
    parser.add_argument("--random-side", type=positive_int, default=512,
                        help="random crop side in source pixels, clamped to the image (default 512)")


def job_from_args(args, common: dict[str, Any]) -> IngestJob:
    return build_job(root=args.root, crops=args.crops, uncertain=args.uncertain, views=args.views,
                     random_per_image=args.random_per_image, random_side=args.random_side, **common)
