"""CBIS-DDSM: the four official case-description CSVs joined to the DICOMs, as users have them.

Quirks handled (each seen in the real files, see ../shared/data/README.md):
- the density column is `breast_density` in the mass CSVs and `breast density` in the calc CSVs;
  mass rows have `mass shape` / `mass margins`, calc rows `calc type` / `calc distribution`;
- one quoted path cell per row ends in a newline;
- the CSV paths spell `<folder>/<StudyUID>/<SeriesUID>/00000N.dcm` (the "uid" layout); a TCIA
  download stores the same series elsewhere and is joined through its metadata.csv (ingest.tcia);
- which DICOM is the ROI mask and which the cropped lesion is decided by content (mammogram.py);
- one image can carry several abnormalities: one work unit per image, one lesion crop per row;
- the same patient (P_xxxxx) appears in several folders and in both the official train and test
  CSVs: splits are made by patient.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ingest import mammogram, pseudonym, splits, tcia
from ingest.arguments import least_share, non_negative_float, positive_int
from ingest.unit_inputs import decode_unit_dicom, read_input
from ingest.pipeline import EncodedSample, IngestError, IngestJob, Reject, UnitOutput, WorkUnit
from ingest.prior_splits import NO_PRIOR, PriorSplits, load_prior_splits
from shards import codecs, schema

SOURCE = "cbis-ddsm"
OFFICIAL_CSVS = (
    "mass_case_description_train_set.csv",
    "mass_case_description_test_set.csv",
    "calc_case_description_train_set.csv",
    "calc_case_description_test_set.csv",
)
CROP_CHOICES = ("lesion", "random", "both")
OVERLAP_POLICIES = ("test", "keep")


class CbisInputError(IngestError):
    """The CBIS-DDSM inputs cannot be used (no CSVs, unknown columns, a root that is not a folder)."""


@dataclass(frozen=True)
class Abnormality:
    """One CSV row: an abnormality on one image."""

    patient: str  # raw P_xxxxx: used for splitting only, never written out
    official_split: str
    abnormality_id: int
    labels: dict[str, Any]
    image_path: str  # CSV path cells, stripped
    crop_path: str
    mask_path: str
    laterality: str
    view: str


@dataclass(frozen=True)
class CbisImage:
    """A work unit's payload: one mammogram and its abnormalities, files resolved."""

    image_file: str
    patient: str  # pseudonym
    split: str
    official_split: str
    laterality: str
    view: str
    breast_density: int | None
    abnormalities: tuple[tuple[int, dict[str, Any], tuple[str, ...], str], ...]  # id, labels, mask candidates, mask rel path


def _multi(cell: str) -> list[str]:
    """'IRREGULAR-ARCHITECTURAL_DISTORTION' -> ['ARCHITECTURAL_DISTORTION', 'IRREGULAR']; N/A -> []."""
    cell = cell.strip()
    if cell in ("", "N/A", "NA", "nan"):
        return []
    return sorted(part for part in cell.split("-") if part)


def _int_or_none(cell: str | None) -> int | None:
    cell = (cell or "").strip()
    return int(cell) if cell.isdigit() else None


def parse_row(row: dict[str, str], csv_name: str) -> Abnormality:
    """One CSV row -> Abnormality with MIRAM's labels. Raises CbisInputError naming the problem."""
    image_path = (row.get("image file path") or "").strip()
    # The folder name says mass/calc and the official split, e.g. "Mass-Training_P_00001_LEFT_CC".
    kinds = [part.split("_P_")[0] for part in PurePosixPath(image_path).parts if "_P_" in part]
    kind_split = kinds[0] if kinds else ""
    if kind_split not in ("Mass-Training", "Mass-Test", "Calc-Training", "Calc-Test"):
        raise CbisInputError(f"{csv_name}: image file path {image_path!r} names no CBIS folder (Mass-Training_P_...)")
    is_mass = kind_split.startswith("Mass")
    pathology = row["pathology"].strip()
    malignant = pathology == "MALIGNANT"
    abnormality_type = "mass" if is_mass else "calcification"
    density = row.get("breast_density", row.get("breast density"))
    labels = {
        "pathology": pathology,
        "malignant": int(malignant),
        # MIRAM's 4-class target: benign/malignant x mass/calcification (benign without callback is benign).
        "class4": f"{'malignant' if malignant else 'benign'}_{'mass' if is_mass else 'calc'}",
        "abnormality_type": abnormality_type,
        "mass_shape": _multi(row.get("mass shape", "")) if is_mass else [],
        "mass_margins": _multi(row.get("mass margins", "")) if is_mass else [],
        "calc_type": [] if is_mass else _multi(row.get("calc type", "")),
        "calc_distribution": [] if is_mass else _multi(row.get("calc distribution", "")),
        "birads": _int_or_none(row.get("assessment")),
        "subtlety": _int_or_none(row.get("subtlety")),
        "breast_density": _int_or_none(density),
    }
    side = row["left or right breast"].strip().upper()
    return Abnormality(
        patient=row["patient_id"].strip(),
        official_split="train" if kind_split.endswith("Training") else "test",
        abnormality_id=_int_or_none(row["abnormality id"]) or 1,
        labels=labels,
        image_path=image_path,
        crop_path=(row.get("cropped image file path") or "").strip(),
        mask_path=(row.get("ROI mask file path") or "").strip(),
        laterality={"LEFT": "L", "RIGHT": "R"}.get(side, side),
        view=row["image view"].strip().upper(),
    )


def find_csvs(root: Path, explicit: list[Path] | None) -> list[Path]:
    if explicit:
        missing = [p for p in explicit if not p.is_file()]
        if missing:
            raise CbisInputError(f"--csv file not found: {', '.join(map(str, missing))}")
        return list(explicit)
    found = []
    for name in OFFICIAL_CSVS:
        hits = [p for depth in range(3) for p in sorted(root.glob("/".join(["*"] * depth + [name])))]
        found.extend(hits[:1])
    if not found:
        raise CbisInputError(
            f"{root}: none of the official CSVs ({', '.join(OFFICIAL_CSVS)}) found within two folders "
            "of the root; pass them with --csv"
        )
    return found


def read_abnormalities(csv_paths: list[Path]) -> tuple[list[Abnormality], list[Reject]]:
    rows, rejects = [], []
    for path in csv_paths:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            for line_no, row in enumerate(csv.DictReader(fh), start=2):
                try:
                    rows.append(parse_row(row, path.name))
                except (CbisInputError, KeyError, ValueError) as exc:
                    rejects.append(Reject(f"{path.name}:{line_no}", f"unreadable CSV row: {exc}"))
    return rows, rejects


class FileResolver:
    """CSV path -> DICOM files, in the uid layout or through a TCIA metadata.csv."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.series = tcia.read_series_index(self.root)

    def inside_root(self, csv_path: str) -> bool:
        return (self.root / csv_path).resolve().is_relative_to(self.root)

    def series_files(self, csv_path: str) -> list[Path]:
        """Every DICOM of the series a CSV path names (a mask and its crop may share one)."""
        direct = self.root / csv_path
        if direct.is_file():
            return sorted(direct.parent.glob("*.dcm"))
        parts = PurePosixPath(csv_path).parts
        entry = self.series.get(parts[-2]) if len(parts) >= 2 else None
        if entry is not None and entry.folder.is_dir():
            return sorted(entry.folder.glob("*.dcm"))
        return []

    def image_file(self, csv_path: str) -> Path | None:
        direct = self.root / csv_path
        if direct.is_file():
            return direct
        files = self.series_files(csv_path)
        return files[0] if len(files) == 1 else None


def assign_splits(rows: list[Abnormality], *, val_fraction: float, seed: int, overlap: str,
                  keep: dict[str, str] | None = None) -> tuple[dict[str, str], int]:
    """raw patient -> split. The official test set is kept. A patient in both official splits goes
    wholly to test (overlap='test', so no patient crosses splits; their rows keep
    official_split='train' in the manifest) or stays in both (overlap='keep'). keep: raw patient ->
    its split in an earlier set (--splits-from), for the validation carve."""
    test_patients = {r.patient for r in rows if r.official_split == "test"}
    train_patients = {r.patient for r in rows if r.official_split == "train"}
    crossing = train_patients & test_patients
    candidates = train_patients - crossing if overlap == "test" else train_patients
    val = splits.carve_validation(candidates, fraction=val_fraction, seed=seed, keep=keep)
    out = {p: "test" for p in test_patients}
    for p in train_patients:
        if p in crossing and overlap == "test":
            continue
        out[p] = "val" if p in val else "train"
    return out, len(crossing)


def plan_units(rows: list[Abnormality], resolver: FileResolver, *, salt: str, val_fraction: float,
               seed: int, overlap: str, prior: PriorSplits = NO_PRIOR) -> tuple[list[WorkUnit], list[Reject], dict[str, Any]]:
    """Group rows by image, resolve files, assign splits (`prior`'s patients as there). Returns
    units sorted by their pseudonymous id (so shards mix patients), planning rejects, and notes
    for the card."""
    keep = prior.keep({r.patient for r in rows}, "cbis:")
    patient_split, crossing = assign_splits(rows, val_fraction=val_fraction, seed=seed, overlap=overlap, keep=keep)
    notes = {"patients_in_both_official_splits": crossing, **prior.notes(keep, patient_split, SOURCE)}
    by_image: dict[str, list[Abnormality]] = defaultdict(list)
    for row in rows:
        by_image[row.image_path].append(row)
    units, rejects = [], []
    for image_path, image_rows in sorted(by_image.items()):
        if not resolver.inside_root(image_path):
            rejects.append(Reject(image_path, "path outside root: the CSV's image path leaves the root folder"))
            continue
        image_file = resolver.image_file(image_path)
        if image_file is None:
            rejects.append(Reject(image_path, "file not found: mammogram neither at the CSV path nor in metadata.csv"))
            continue
        abnormalities = []
        for row in sorted(image_rows, key=lambda r: r.abnormality_id):
            if not (resolver.inside_root(row.mask_path) and resolver.inside_root(row.crop_path)):
                rejects.append(Reject(row.mask_path, f"path outside root: ROI path of abnormality {row.abnormality_id} leaves the root folder"))
                continue
            candidates = sorted({str(p) for path in (row.mask_path, row.crop_path) for p in resolver.series_files(path)})
            if not candidates:
                rejects.append(Reject(row.mask_path, f"file not found: ROI mask of abnormality {row.abnormality_id}"))
                continue
            abnormalities.append((row.abnormality_id, row.labels, tuple(candidates), row.mask_path))
        first = image_rows[0]
        split = patient_split[first.patient]
        if overlap == "keep":
            split = "test" if first.official_split == "test" else split
        payload = CbisImage(
            image_file=str(image_file),
            patient=pseudonym.pseudonym(salt, f"cbis:{first.patient}"),
            split=split,
            official_split=first.official_split,
            laterality=first.laterality,
            view=first.view,
            breast_density=first.labels["breast_density"],
            abnormalities=tuple(abnormalities),
        )
        units.append(WorkUnit(pseudonym.pseudonym(salt, f"cbis-image:{image_path.split('/')[0]}"), image_path, payload))
    units.sort(key=lambda u: u.unit_id)
    return units, rejects, notes


@dataclass(frozen=True)
class CbisProcess:
    """The per-image work, run in a worker process (picklable: plain fields only)."""

    root: str
    crops: str
    params: mammogram.CropParams
    seed: int

    def __call__(self, unit: WorkUnit) -> UnitOutput:
        image: CbisImage = unit.payload
        root = Path(self.root)
        out = UnitOutput()
        data, fingerprint = read_input(image.image_file, out)
        decoded = decode_unit_dicom(data, unit.source_path, out)
        if decoded is None:
            return out
        if decoded.pixels.ndim != 2:
            out.rejects.append(Reject(unit.source_path, f"not a grayscale mammogram: pixels of shape {decoded.pixels.shape}"))
            return out
        pixels = decoded.pixels
        made = []  # (per-sample metadata fields, pixels, mask or None)
        masks, pathologies = [], []
        for abn_id, labels, candidates, mask_rel in image.abnormalities:
            try:
                roi = mammogram.find_roi_mask([Path(c) for c in candidates], pixels.shape, root)
            except mammogram.RoiMaskError as exc:
                out.rejects.append(Reject(mask_rel, f"{exc} (abnormality {abn_id})"))
                continue
            if self.crops != "lesion":  # full-size masks are kept only for placing random crops
                masks.append(roi)
            pathologies.append(labels["pathology"])
            out.notes["masks_resized"] += int(roi.resized)
            if self.crops in ("lesion", "both"):
                crop, mask_crop, box = mammogram.lesion_crop(pixels, roi.pixels, self.params, bbox=roi.bbox)
                fields = dict(key=f"cbis_{unit.unit_id}_lesion{abn_id}", crop_kind="lesion", crop_box=box,
                              labels=labels, has_mask=True, extra={"abnormality_id": abn_id, "mask_resized": roi.resized})
                made.append((fields, crop, mask_crop))
        if self.crops in ("random", "both"):
            rng = random.Random(f"{self.seed}:{unit.unit_id}")
            found = mammogram.random_tissue_crops(pixels, masks, self.params, rng)
            out.notes["random_crop_shortfall"] += self.params.random_per_image - len(found)
            worst = "MALIGNANT" if "MALIGNANT" in pathologies else (pathologies[0] if pathologies else None)
            labels = {"breast_density": image.breast_density, "image_pathology": worst}
            for i, (crop, box) in enumerate(found):
                made.append((dict(key=f"cbis_{unit.unit_id}_random{i}", crop_kind="random", crop_box=box, labels=labels), crop, None))
        # Waited for last, so hashing the file overlaps all of the decoding and cropping above.
        common = dict(
            source=SOURCE, patient=image.patient, split=image.split, official_split=image.official_split,
            laterality=image.laterality, view=image.view, source_size=pixels.shape, channels=1, dtype="uint16",
            height=self.params.size, width=self.params.size, pixel_spacing_mm=decoded.pixel_spacing_mm,
            source_fingerprint=fingerprint.result(),
        )
        out.samples.extend(_encode(schema.SampleMeta(**fields, **common), crop, mask) for fields, crop, mask in made)
        return out


def _encode(meta: schema.SampleMeta, pixels, mask) -> EncodedSample:
    member, data = codecs.encode_pixels(pixels)
    members = {member: data}
    if mask is not None:
        members[schema.MASK_PNG] = codecs.encode_mask(mask)
    return EncodedSample.of(meta, members, pixels)


def build_job(*, root: Path, out: Path, crops: str = "lesion", csv_paths: list[Path] | None = None,
              size: int = 224, margin: float = 0.2, random_per_image: int = 4, random_side: int = 512,
              min_tissue: float = 0.9, val_fraction: float = 0.1, seed: int = 0, overlap: str = "test",
              workers: int = 1, shard_size: int = 1000, id_salt: str | None = None,
              splits_from: list[str] | None = None, overwrite: bool = False, progress: bool = True,
              tool_version: str = "0+unknown") -> IngestJob:
    """Plan an `ingest cbis` job: read the CSVs, resolve every file, assign splits."""
    if crops not in CROP_CHOICES:
        raise CbisInputError(f"--crops must be one of {CROP_CHOICES}, got {crops!r}")
    if overlap not in OVERLAP_POLICIES:
        raise CbisInputError(f"--overlap must be one of {OVERLAP_POLICIES}, got {overlap!r}")
    if not root.is_dir():
        raise CbisInputError(f"{root}: not a folder")
    salt = pseudonym.resolve_salt(id_salt)
    csvs = find_csvs(root, csv_paths)
    rows, row_rejects = read_abnormalities(csvs)
    prior = load_prior_splits(splits_from, salt)
    units, plan_rejects, notes = plan_units(rows, FileResolver(root), salt=salt, val_fraction=val_fraction,
                                            seed=seed, overlap=overlap, prior=prior)
    params = mammogram.CropParams(size=size, margin=margin, random_per_image=random_per_image,
                                  random_side=random_side, min_tissue=min_tissue)
    parameters = {
        "root": str(root), "csvs": [c.name for c in csvs], "crops": crops, "val_fraction": val_fraction,
        "seed": seed, "overlap": overlap, "shard_size": shard_size, **asdict(params),
        "id_salt_fingerprint": pseudonym.salt_fingerprint(salt), **prior.parameters(),
    }
    return IngestJob(
        source=SOURCE, out=out, units=units, process=CbisProcess(str(root.resolve()), crops, params, seed),
        parameters=parameters, tool_version=tool_version, workers=workers, max_samples_per_shard=shard_size,
        planning_rejects=row_rejects + plan_rejects, notes=notes, overwrite=overwrite, progress=progress,
    )


def add_arguments(parser) -> None:
    """`ingest cbis` options beyond the common ones (ingest/cli.py adds those)."""
    parser.add_argument("root", type=Path, help="CBIS-DDSM folder: a TCIA download (with metadata.csv) or the UID layout")
    parser.add_argument("--crops", choices=CROP_CHOICES, default="lesion")
    parser.add_argument("--csv", type=Path, nargs="+", default=None,
                        help="case-description CSVs (default: the four official names, found under ROOT)")
    parser.add_argument("--margin", type=non_negative_float, default=0.2, help="lesion context per side, fraction of the ROI (default 0.2)")
    parser.add_argument("--random-per-image", type=positive_int, default=4, help="random tissue crops per mammogram (default 4)")
    parser.add_argument("--random-side", type=positive_int, default=512, help="random crop side in source pixels (default 512)")
    parser.add_argument("--min-tissue", type=least_share, default=0.9, help="least tissue fraction of a random crop (default 0.9)")
    parser.add_argument("--overlap", choices=OVERLAP_POLICIES, default="test",
                        help="patients in both official splits: move wholly to test (default) or keep as published")


def job_from_args(args, common: dict[str, Any]) -> IngestJob:
    return build_job(root=args.root, crops=args.crops, csv_paths=args.csv, margin=args.margin,
                     random_per_image=args.random_per_image, random_side=args.random_side,
                     min_tissue=args.min_tissue, overlap=args.overlap, **common)
