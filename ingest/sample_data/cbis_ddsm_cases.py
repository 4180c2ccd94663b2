"""The case table of a CBIS-DDSM-shaped sample: the four CSVs' rows and the series they point to.

Rows are either invented (`synthetic_cases`) or taken from the real official CSVs for a few real
patients (`real_cases`); both come out as a `CaseTable` in the exact form of the real files, which
`cbis_ddsm.py` turns into files on disk. Quirks of the real CSVs reproduced here:
- the density column is `breast_density` in the mass CSVs, `breast density` in the calc CSVs;
- in every row one quoted path cell ends in a newline: the ROI-mask cell in the mass CSVs, the
  cropped-image cell in the calc CSVs;
- crop and mask usually share one series: the mass CSVs call the crop `000000.dcm` and the mask
  `000001.dcm`, the calc CSVs the other way round; some mass rows (103 real ones) keep them in two
  series (two studies even), each file then `000000.dcm`;
- an image can carry several abnormalities (abnormality id 1..n, one folder `<image folder>_<id>`
  each), and a patient can sit in a train CSV and a test CSV (31 real ones: mass in one, calc in
  the other), so splits must be made by patient.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MASS_TRAIN = "mass_case_description_train_set.csv"
MASS_TEST = "mass_case_description_test_set.csv"
CALC_TRAIN = "calc_case_description_train_set.csv"
CALC_TEST = "calc_case_description_test_set.csv"
CSV_NAMES = (MASS_TRAIN, MASS_TEST, CALC_TRAIN, CALC_TEST)
REAL_METADATA_NAME = "tcia_metadata_roi_series.csv"

_LABELS_TAIL = ["assessment", "pathology", "subtlety"]
PATH_COLUMNS = ["image file path", "cropped image file path", "ROI mask file path"]
MASS_HEADER = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
               "abnormality type", "mass shape", "mass margins", *_LABELS_TAIL, *PATH_COLUMNS]
CALC_HEADER = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
               "abnormality type", "calc type", "calc distribution", *_LABELS_TAIL, *PATH_COLUMNS]
NEWLINE_COLUMN = {"mass": "ROI mask file path", "calc": "cropped image file path"}

FULL_DESCRIPTION = "full mammogram images"
MASK_DESCRIPTION = "ROI mask images"
CROP_DESCRIPTION = "cropped images"
UID_ROOT = "1.3.6.1.4.1.9590.100.1.2"  # the root every CBIS-DDSM UID uses

# Study dates (MM-DD-YYYY, as TCIA writes them) per collection, seen in the real metadata and in
# published download paths: (full mammogram, ROI series, cropped series kept apart from its mask).
_DATES = {
    "Mass-Training": ("07-20-2016", "07-21-2016", "07-20-2016"),
    "Mass-Test": ("10-04-2016", "10-04-2016", "10-04-2016"),
    "Calc-Training": ("08-07-2016", "09-06-2017", "09-21-2017"),
    "Calc-Test": ("08-29-2017", "08-29-2017", "08-29-2017"),
}

# Real value sets (a selection of each column's values in the official CSVs; "NA" is how they
# spell a missing descriptor).
MASS_SHAPES = ["IRREGULAR", "OVAL", "LOBULATED", "ROUND", "ARCHITECTURAL_DISTORTION",
               "IRREGULAR-ARCHITECTURAL_DISTORTION", "LYMPH_NODE", "FOCAL_ASYMMETRIC_DENSITY", "NA"]
MASS_MARGINS = ["CIRCUMSCRIBED", "SPICULATED", "ILL_DEFINED", "OBSCURED", "MICROLOBULATED",
                "ILL_DEFINED-SPICULATED", "CIRCUMSCRIBED-ILL_DEFINED", "NA"]
CALC_TYPES = ["PLEOMORPHIC", "AMORPHOUS", "PUNCTATE", "LUCENT_CENTER", "FINE_LINEAR_BRANCHING",
              "PLEOMORPHIC-FINE_LINEAR_BRANCHING", "PUNCTATE-PLEOMORPHIC", "VASCULAR", "NA"]
CALC_DISTRIBUTIONS = ["CLUSTERED", "SEGMENTAL", "LINEAR", "REGIONAL", "CLUSTERED-LINEAR", "NA"]
PATHOLOGIES = ["MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"]


def csv_kind(csv_name: str) -> str:
    return "mass" if csv_name.startswith("mass") else "calc"


def csv_header(csv_name: str) -> list[str]:
    return MASS_HEADER if csv_kind(csv_name) == "mass" else CALC_HEADER


@dataclass(frozen=True)
class CsvPath:
    """A CSV path cell, `<folder>/<StudyUID>/<SeriesUID>/00000N.dcm`, without its stray newline."""

    folder: str
    study_uid: str
    series_uid: str
    name: str

    @classmethod
    def parse(cls, cell: str) -> CsvPath:
        parts = cell.strip().split("/")
        if len(parts) != 4:
            raise ValueError(f"not a CBIS-DDSM path cell: {cell!r}")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.folder}/{self.study_uid}/{self.series_uid}/{self.name}"


@dataclass(frozen=True)
class SeriesInfo:
    """One series as a TCIA download's metadata.csv describes it."""

    subject: str  # Subject_ID: the CBIS folder name, e.g. Mass-Training_P_00001_LEFT_CC_1
    study_uid: str
    series_uid: str
    study_date: str  # MM-DD-YYYY
    description: str


@dataclass(frozen=True)
class CaseTable:
    rows: dict[str, list[dict[str, str]]]  # CSV name -> rows, cells exactly as written (newlines kept)
    series: dict[str, SeriesInfo]  # series UID -> series, for every path cell in rows


class UidSource:
    """Fresh UIDs shaped like CBIS-DDSM's (the CBIS root plus 37-39 digits), reproducible from rng."""

    def __init__(self, rng: np.random.Generator, taken: set[str] | None = None):
        self._rng = rng
        self._taken = set(taken or ())

    def new(self) -> str:
        while True:
            length = int(self._rng.choice([36, 37, 38, 39], p=[0.01, 0.04, 0.2, 0.75]))  # as real ones
            digits = [int(self._rng.integers(1, 10)), *self._rng.integers(0, 10, length - 1)]
            uid = f"{UID_ROOT}.{''.join(map(str, digits))}"
            if uid not in self._taken:
                self._taken.add(uid)
                return uid


def _full_series(image: CsvPath) -> SeriesInfo:
    """Full-mammogram series are not in the ROI metadata; they look like the ROI ones."""
    date = _DATES[image.folder.split("_")[0]][0]
    return SeriesInfo(image.folder, image.study_uid, image.series_uid, date, FULL_DESCRIPTION)


def synthetic_cases(patients: int, seed: int) -> CaseTable:
    """Invented rows for `patients` patients. The first patient alone covers the quirks: a mass in
    a train CSV (its CC image with two abnormalities, the second keeping crop and mask in separate
    series) and calcifications in a test CSV. The others are drawn at random."""
    rng = np.random.default_rng([seed, 0])
    uids = UidSource(rng)
    numbers = sorted(int(n) for n in rng.choice(np.arange(1, 2000), size=patients, replace=False))
    findings = []  # (patient_id, kind, split, side, {view: abnormality count}, split-series ids)
    for index, number in enumerate(numbers):
        pid = f"P_{number:05d}"
        if index == 0:
            findings.append((pid, "mass", "Training", "LEFT", {"CC": 2, "MLO": 1}, {2}))
            findings.append((pid, "calc", "Test", "RIGHT", {"CC": 1, "MLO": 1}, set()))
            continue
        kind = "mass" if rng.uniform() < 0.5 else "calc"
        split = "Training" if rng.uniform() < 0.7 else "Test"
        side = "LEFT" if rng.uniform() < 0.5 else "RIGHT"
        count = 1 if rng.uniform() < 0.75 else int(rng.integers(2, 4))
        views = ["CC", "MLO"] if rng.uniform() < 0.75 else [str(rng.choice(["CC", "MLO"]))]
        apart = {k for k in range(1, count + 1) if kind == "mass" and rng.uniform() < 0.15}
        findings.append((pid, kind, split, side, {view: count for view in views}, apart))

    table = CaseTable({name: [] for name in CSV_NAMES}, {})
    for pid, kind, split, side, views, apart in findings:
        csv_name = {("mass", "Training"): MASS_TRAIN, ("mass", "Test"): MASS_TEST,
                    ("calc", "Training"): CALC_TRAIN, ("calc", "Test"): CALC_TEST}[(kind, split)]
        collection = f"{kind.capitalize()}-{split}"
        density = str(rng.integers(1, 5))
        labels = {k: _draw_labels(kind, rng) for k in range(1, max(views.values()) + 1)}
        for view, count in views.items():
            folder = f"{collection}_{pid}_{side}_{view}"
            image = CsvPath(folder, uids.new(), uids.new(), "000000.dcm")
            table.series[image.series_uid] = _full_series(image)
            for k in range(1, count + 1):
                crop, mask = _roi_paths(f"{folder}_{k}", kind, k in apart, collection, uids, table)
                row = {"patient_id": pid, csv_header(csv_name)[1]: density, "left or right breast": side,
                       "image view": view, "abnormality id": str(k), **labels[k],
                       "image file path": str(image), "cropped image file path": str(crop),
                       "ROI mask file path": str(mask)}
                row[NEWLINE_COLUMN[kind]] += "\n"
                table.rows[csv_name].append(row)
    for rows in table.rows.values():
        rows.sort(key=lambda r: (r["patient_id"], r["left or right breast"], r["image view"],
                                 int(r["abnormality id"])))
    return table


def _draw_labels(kind: str, rng: np.random.Generator) -> dict[str, str]:
    if kind == "mass":
        labels = {"abnormality type": "mass", "mass shape": str(rng.choice(MASS_SHAPES)),
                  "mass margins": str(rng.choice(MASS_MARGINS))}
    else:
        labels = {"abnormality type": "calcification", "calc type": str(rng.choice(CALC_TYPES)),
                  "calc distribution": str(rng.choice(CALC_DISTRIBUTIONS))}
    return {**labels, "assessment": str(rng.integers(0, 6)), "pathology": str(rng.choice(PATHOLOGIES)),
            "subtlety": str(rng.integers(1, 6))}


def _roi_paths(folder: str, kind: str, apart: bool, collection: str, uids: UidSource,
               table: CaseTable) -> tuple[CsvPath, CsvPath]:
    """(crop, mask) paths of one abnormality, registering their series in the table."""
    _, roi_date, crop_date = _DATES[collection]
    if apart:
        crop = CsvPath(folder, uids.new(), uids.new(), "000000.dcm")
        mask = CsvPath(folder, uids.new(), uids.new(), "000000.dcm")
        table.series[crop.series_uid] = SeriesInfo(folder, crop.study_uid, crop.series_uid, crop_date,
                                                   CROP_DESCRIPTION)
    else:
        study, series = uids.new(), uids.new()
        crop_name, mask_name = ("000000.dcm", "000001.dcm") if kind == "mass" else ("000001.dcm", "000000.dcm")
        crop, mask = CsvPath(folder, study, series, crop_name), CsvPath(folder, study, series, mask_name)
    table.series[mask.series_uid] = SeriesInfo(folder, mask.study_uid, mask.series_uid, roi_date,
                                               MASK_DESCRIPTION)
    return crop, mask


def real_cases(csv_dir: Path, patients: int, seed: int) -> CaseTable:
    """All rows of `patients` real patients from the official CSVs in csv_dir, ROI/crop series from
    its `tcia_metadata_roi_series.csv`. The subset is deterministic in seed and, greedily, covers
    mass and calc, train and test, an image with several abnormalities, a patient in both a train
    and a test CSV, and a mass row with crop and mask in separate series (as far as `patients`
    allows); the rest are patients with at most four images, in seeded order."""
    rows: dict[str, list[dict[str, str]]] = {}
    for name in CSV_NAMES:
        with open(csv_dir / name, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames != csv_header(name):
                raise ValueError(f"{csv_dir / name}: header {reader.fieldnames} is not the official one")
            rows[name] = list(reader)
    with open(csv_dir / REAL_METADATA_NAME, newline="", encoding="utf-8") as fh:
        metadata = {r["Series_UID"]: r for r in csv.DictReader(fh)}

    features: dict[str, set[str]] = {}
    images: dict[str, set[str]] = {}
    unusable: set[str] = set()
    for name, csv_rows in rows.items():
        per_image: dict[str, int] = {}
        for row in csv_rows:
            pid, feats = row["patient_id"], features.setdefault(row["patient_id"], set())
            crop, mask = (CsvPath.parse(row[c]) for c in PATH_COLUMNS[1:])
            if crop.series_uid not in metadata or mask.series_uid not in metadata:
                unusable.add(pid)
            feats |= {f"kind:{csv_kind(name)}", "split:train" if "train" in name else "split:test"}
            if csv_kind(name) == "mass" and crop.series_uid != mask.series_uid:
                feats.add("mass_split_series")
            images.setdefault(pid, set()).add(row["image file path"])
            per_image[row["image file path"]] = per_image.get(row["image file path"], 0) + 1
            if per_image[row["image file path"]] > 1:
                feats.add("multi")
    for feats in features.values():
        if {"split:train", "split:test"} <= feats:
            feats.add("train+test")

    rng = np.random.default_rng([seed, 1])
    order = [sorted(features)[i] for i in rng.permutation(len(features))]
    order = [pid for pid in order if pid not in unusable]
    uncovered = {"kind:mass", "kind:calc", "split:train", "split:test", "multi", "train+test",
                 "mass_split_series"}
    chosen: list[str] = []
    while uncovered and len(chosen) < patients:
        best = max(order, key=lambda p: (len(features[p] & uncovered), -len(images[p])))
        chosen.append(best)
        order.remove(best)
        uncovered -= features[best]
    chosen += [p for p in order if len(images[p]) <= 4][:patients - len(chosen)]
    picked = set(chosen)

    table = CaseTable({name: [r for r in rows[name] if r["patient_id"] in picked] for name in CSV_NAMES}, {})
    for csv_rows in table.rows.values():
        for row in csv_rows:
            image = CsvPath.parse(row["image file path"])
            table.series[image.series_uid] = _full_series(image)
            for column in PATH_COLUMNS[1:]:
                meta = metadata[CsvPath.parse(row[column]).series_uid]
                table.series[meta["Series_UID"]] = SeriesInfo(
                    meta["Subject_ID"], meta["Study_UID"], meta["Series_UID"], meta["Study_Date"],
                    meta["Series_Description"])
    return table
