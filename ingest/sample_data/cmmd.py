"""A small CMMD-shaped download on disk: real metadata.csv and clinical-sheet rows, made-up pixels.

No public copy of CMMD pixel data can be had, so this writes what a TCIA (NBIA Data Retriever)
download of The Chinese Mammography Database holds, quirks included:
- `metadata.csv` (17 columns, `File Location` a Windows path `.\\CMMD\\D1-0001\\07-18-2010-NA-NA-79377\\
  1.000000-NA-70244`), one row per subject's single series;
- the series folders it names, holding `1-1.dcm` .. `1-N.dcm`: N = 2 (one breast, CC and MLO) or 4
  (both breasts);
- `CMMD_clinicaldata_revision.xlsx`, one sheet `Sheet1`, columns ID1, LeftRight, Age, number,
  abnormality, classification, subtype; one row per breast, `subtype` empty for every benign row
  and most D1 malignant ones. Many 4-image subjects have one row: their other breast has none.

DICOMs: Digital Mammography X-Ray For Presentation, MG, MONOCHROME2, explicit VR little endian,
ImageLaterality and ViewPosition set, PatientID the subject ID (as TCIA writes it), PatientName
`DOE^JANE<n>` and PatientBirthDate PHI stand-ins. Real CMMD images take 4.39 MB each in the
download's File Size column, i.e. 8 bits per pixel, hence bits_stored=8 by default.

With real_dir (a folder holding the real metadata.csv and sheet), the rows of a few real subjects
are copied verbatim, picked to cover 2- and 4-image series, one and two sheet rows, benign and
malignant, with and without subtype; else rows are made up in the same form. Same arguments, same
bytes (the .xlsx too: its zip and document timestamps are pinned).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import io
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np
import openpyxl
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, DigitalMammographyXRayImageStorageForPresentation, ExplicitVRLittleEndian

from ingest.sample_data.cbis_ddsm_pixels import breast_geometry, draw_mammogram, place_lesions

SHEET_NAME = "CMMD_clinicaldata_revision.xlsx"
SHEET_HEADER = ("ID1", "LeftRight", "Age", "number", "abnormality", "classification", "subtype")
METADATA_HEADER = ["Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID", "Study UID",
                   "Study Description", "Study Date", "Series Description", "Manufacturer", "Modality",
                   "SOP Class Name", "SOP Class UID", "Number of Images", "File Size", "File Location",
                   "Download Timestamp"]
UID_ROOT = "1.3.6.1.4.1.14519.5.2.1.1239.1759."  # the root every CMMD UID uses
DEFECT_KINDS = ("corrupt_image", "missing_series", "no_laterality")
PINNED = datetime.datetime(2022, 4, 6)  # the real download's date: pins the .xlsx timestamps
# Made-up subjects cycle through the real patterns: (images, [(side, abnormality, classification, subtype)]).
_PATTERNS = (
    (2, [("R", "calcification", "Benign", None)]),
    (4, [("L", "mass", "Malignant", "Luminal A")]),
    (4, [("L", "mass", "Benign", None), ("R", "both", "Malignant", "triple negative")]),
    (2, [("L", "both", "Malignant", None)]),
    (2, [("R", "mass", "Malignant", "HER2-enriched")]),
)


@dataclass(frozen=True)
class CmmdSample:
    root: Path
    subjects: int
    images: int  # DICOM files written
    labelled_images: int  # images of a breast with a sheet row (a defect's image included)
    unlabelled_images: int  # images of a breast without a sheet row
    sheet_rows: int
    defects: dict[str, str]  # defect kind -> the relative path it affects (empty unless with_defects)
    phi: tuple[str, ...]  # PatientName, PatientBirthDate, PatientID values written


def make_cmmd_sample(root: Path, *, subjects: int = 5, seed: int = 0, real_dir: Path | None = None,
                     image_shape: tuple[int, int] = (256, 192), bits_stored: int = 8,
                     with_defects: bool = False) -> CmmdSample:
    """Write a CMMD-shaped download under root (absent or empty) and describe it. with_defects: one
    labelled image truncated, one series folder missing, one image without ImageLaterality, each
    in a different 2-image subject."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    if bits_stored not in (8, 16):
        raise ValueError("bits_stored must be 8 or 16")
    metadata, sheet = _real_cases(Path(real_dir), subjects, seed) if real_dir else _synthetic_cases(subjects, seed)
    rows_of = defaultdict(list)
    for row in sheet:
        rows_of[row[0]].append(row)
    defects = _choose_defects(metadata) if with_defects else {}
    recorded, counts = {}, {"images": 0, "labelled": 0, "unlabelled": 0}
    phi: list[str] = []
    for n, meta in enumerate(metadata):
        subject = meta["Subject ID"]
        names = (f"DOE^JANE{n + 1}", f"19{60 + (n * 7 + seed) % 30}0{1 + n % 9}1{n % 9}", subject)
        phi.extend(names)
        folder = root.joinpath(*[p for p in PureWindowsPath(meta["File Location"]).parts if p not in (".", "")])
        rel_folder = folder.relative_to(root).as_posix()
        if defects.get("missing_series") == subject:
            recorded["missing_series"] = rel_folder
            continue
        labelled = {row[1]: row for row in rows_of[subject]}
        rng = np.random.default_rng([seed, n])
        for i, (side, view) in enumerate(_images(int(meta["Number of Images"]), labelled)):
            pixels = _mammogram(image_shape, side, view, labelled.get(side), rng)
            laterality = None if defects.get("no_laterality") == subject and i == 0 else side
            data = _dicom_bytes(meta, pixels, bits_stored, laterality, view, names, i)
            rel = f"{rel_folder}/1-{i + 1}.dcm"
            if defects.get("corrupt_image") == subject and i == 0:
                data = data[: len(data) // 2]
                recorded["corrupt_image"] = rel
            if laterality is None:
                recorded["no_laterality"] = rel
            folder.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
            counts["images"] += 1
            counts["labelled" if side in labelled else "unlabelled"] += 1
    _write_metadata(root / "metadata.csv", metadata)
    (root / SHEET_NAME).write_bytes(_sheet_bytes(sheet))
    return CmmdSample(root=root, subjects=len(metadata), images=counts["images"],
                      labelled_images=counts["labelled"], unlabelled_images=counts["unlabelled"],
                      sheet_rows=len(sheet), defects=recorded, phi=tuple(phi))


def _images(count: int, labelled: dict[str, tuple]) -> list[tuple[str, str]]:
    """(side, view) of a series' images in file order: CC then MLO per breast, the labelled
    breast of a 2-image series, both breasts (L first) of a 4-image one."""
    sides = ["L", "R"] if count == 4 else (sorted(labelled)[:1] or ["L"])
    return [(side, view) for side in sides for view in ("CC", "MLO")]


def _mammogram(shape: tuple[int, int], side: str, view: str, row: tuple | None, rng: np.random.Generator) -> np.ndarray:
    geom = breast_geometry(shape, chest_wall_left=side == "L", view=view, rng=rng)
    kinds = {"mass": ["mass"], "calcification": ["calcification"], "both": ["mass", "calcification"]}
    lesions = place_lesions(shape, geom, kinds[row[4]], rng) if row else []
    return draw_mammogram(shape, geom, density=int(rng.integers(1, 5)), lesions=lesions, rng=rng)


def _dicom_bytes(meta: dict[str, str], pixels: np.ndarray, bits: int, laterality: str | None, view: str,
                 phi: tuple[str, str, str], index: int) -> bytes:
    sop_uid = _uid(meta["Series UID"], index)
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    file_meta.MediaStorageSOPInstanceUID = sop_uid
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = file_meta
    ds.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    month, day, year = meta["Study Date"].split("-")
    ds.StudyDate = f"{year}{month}{day}"
    ds.Modality = "MG"
    ds.PatientName, ds.PatientBirthDate, ds.PatientID = phi
    ds.PatientSex = "F"
    ds.BodyPartExamined = "BREAST"
    ds.StudyInstanceUID = meta["Study UID"]
    ds.SeriesInstanceUID = meta["Series UID"]
    ds.SeriesNumber, ds.InstanceNumber = 1, index + 1
    if laterality is not None:
        ds.ImageLaterality = laterality
    ds.ViewPosition = view
    stored = (pixels >> 8).astype(np.uint8) if bits == 8 else pixels
    ds.set_pixel_data(stored, "MONOCHROME2", bits, generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _real_cases(real_dir: Path, subjects: int, seed: int) -> tuple[list[dict[str, str]], list[tuple]]:
    """Rows of `subjects` real subjects: round-robin over patterns (images, sheet rows,
    classification, subtype or not), a seeded order within each."""
    with open(real_dir / "metadata.csv", newline="", encoding="utf-8-sig") as fh:
        metadata = {row["Subject ID"]: row for row in csv.DictReader(fh)}
    sheet = _read_sheet_rows(real_dir / SHEET_NAME)
    rows_of = defaultdict(list)
    for row in sheet:
        rows_of[row[0]].append(row)
    patterns = defaultdict(list)
    for subject in sorted(metadata):
        rows = rows_of[subject]
        if rows:
            key = (metadata[subject]["Number of Images"], len(rows), rows[0][5], rows[0][6] is None)
            patterns[key].append(subject)
    rng = np.random.default_rng([seed, 9])
    queues = [list(rng.permutation(patterns[key])) for key in sorted(patterns)]
    chosen: list[str] = []
    while len(chosen) < subjects and any(queues):
        for queue in queues:
            if queue and len(chosen) < subjects:
                chosen.append(str(queue.pop(0)))
    chosen.sort()
    return [metadata[s] for s in chosen], [row for s in chosen for row in rows_of[s]]


def _read_sheet_rows(path: Path) -> list[tuple]:
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows = list(workbook.worksheets[0].iter_rows(values_only=True))
    finally:
        workbook.close()
    return [tuple(row[:len(SHEET_HEADER)]) for row in rows[1:] if row and row[0]]


def _synthetic_cases(subjects: int, seed: int) -> tuple[list[dict[str, str]], list[tuple]]:
    rng = np.random.default_rng([seed, 8])
    metadata, sheet = [], []
    for n in range(subjects):
        images, breasts = _PATTERNS[n % len(_PATTERNS)]
        subject = f"D{1 + n % 2}-{n + 1:04d}"
        study_uid, series_uid = _uid(seed, subject, "study"), _uid(seed, subject, "series")
        date = f"07-{10 + n % 18:02d}-{2010 + n % 3}"
        metadata.append(dict(zip(METADATA_HEADER, [
            series_uid, "CMMD", "NO", "https://doi.org/10.7937/tcia.eqde4b16", subject, study_uid, "NA", date, "NA",
            "NA", "MG", "Digital Mammography X-Ray Image Storage - For Presentation",
            DigitalMammographyXRayImageStorageForPresentation, str(images), f"{4.395 * images:.2f} MB",
            f".\\CMMD\\{subject}\\{date}-NA-NA-{study_uid[-5:]}\\1.000000-NA-{series_uid[-5:]}",
            "2022-04-06T19:50:58.958"])))
        age = int(rng.integers(30, 80))
        sheet.extend((subject, side, age, 2, abnormality, classification, subtype)
                     for side, abnormality, classification, subtype in breasts)
    return metadata, sheet


def _uid(*parts: object) -> str:
    """A 64-character UID under the CMMD root, as the real ones are, derived from `parts`."""
    digest = int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:16], "big")
    return f"{UID_ROOT}{10**29 + digest % (9 * 10**29)}"


def _choose_defects(metadata: list[dict[str, str]]) -> dict[str, str]:
    """Defect kind -> subject: the last 2-image subjects, one each."""
    two = [m["Subject ID"] for m in metadata if m["Number of Images"] == "2"]
    if len(two) < len(DEFECT_KINDS) + 1:
        raise ValueError(f"with_defects needs {len(DEFECT_KINDS) + 1} subjects with 2-image series; ask for more subjects")
    return dict(zip(DEFECT_KINDS, reversed(two)))


def _write_metadata(path: Path, metadata: list[dict[str, str]]) -> None:
    """As TCIA writes it: plain CSV, no quoting, rows sorted by subject."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, METADATA_HEADER, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(metadata, key=lambda m: m["Subject ID"]))


def _sheet_bytes(rows: list[tuple]) -> bytes:
    """The clinical sheet as .xlsx bytes, timestamps pinned so the same rows give the same bytes."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Sheet1"
    sheet.append(SHEET_HEADER)
    for row in rows:
        sheet.append(row)
    workbook.properties.created = PINNED
    buffer = io.BytesIO()
    workbook.save(buffer)
    pinned = io.BytesIO()
    stamp = PINNED.strftime("%Y-%m-%dT%H:%M:%SZ")
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(pinned, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "docProps/core.xml":  # openpyxl stamps the save time here
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>" + stamp.encode(), data)
            target.writestr(zipfile.ZipInfo(info.filename, date_time=PINNED.timetuple()[:6]), data,
                            compress_type=zipfile.ZIP_DEFLATED)
    return pinned.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a small CMMD-shaped download (made-up pixels).")
    parser.add_argument("out", type=Path, help="output folder (absent or empty)")
    parser.add_argument("--subjects", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-dir", type=Path, default=None,
                        help="folder with the real metadata.csv and CMMD_clinicaldata_revision.xlsx: use real rows")
    parser.add_argument("--image-shape", type=int, nargs=2, default=(256, 192), metavar=("H", "W"))
    parser.add_argument("--bits-stored", type=int, choices=(8, 16), default=8)
    parser.add_argument("--with-defects", action="store_true")
    args = parser.parse_args(argv)
    made = make_cmmd_sample(args.out, subjects=args.subjects, seed=args.seed, real_dir=args.real_dir,
                            image_shape=tuple(args.image_shape), bits_stored=args.bits_stored,
                            with_defects=args.with_defects)
    print(f"CMMD sample at {made.root}: {made.subjects} subjects, {made.images} images "
          f"({made.unlabelled_images} of breasts without a sheet row), {made.sheet_rows} sheet rows")
    for kind, path in made.defects.items():
        print(f"  defect {kind}: {path}")


if __name__ == "__main__":
    main()
