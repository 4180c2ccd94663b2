"""A small CBIS-DDSM-shaped dataset on disk, made-up pixels in the real layout, for the demo and tests.

No public copy of CBIS-DDSM pixel data can be had, so this writes what a user really has after a
download, quirks included: the four official case-description CSVs (see `cbis_ddsm_cases`), DICOM
files for every path they name, and, in the "tcia" layout, the download's `metadata.csv`.

Layouts:
- "tcia" (the NBIA Data Retriever): `CBIS-DDSM/<folder>/<date>-DDSM-NA-<n>/1.000000-<series
  description>-<n>/1-1.dcm`, <n> the last five digits of the study / series UID, and `metadata.csv`
  whose `File_Location` is a Windows path (`.\\CBIS-DDSM\\...`). The CSV paths do not exist here: a
  reader joins them through the series UID. A series holding both the ROI mask and the crop holds
  `1-1.dcm` and `1-2.dcm`, and which one is the mask alternates (it does not follow the CSV's
  000000/000001 names), so a reader must tell them apart by content: the mask is full size, 8-bit,
  0/255.
- "uid": the files at exactly the CSV paths, `<folder>/<StudyUID>/<SeriesUID>/00000N.dcm`.

DICOMs are Secondary Capture (as the real download's SOP_Class_UID column says), Modality MG,
explicit VR little endian: mammograms and crops 16-bit, masks 8-bit, all MONOCHROME2. PatientID is
the CBIS folder name (as in real CBIS); PatientName `DOE^JANE<n>` and PatientBirthDate are PHI
stand-ins, so tests can prove they never reach a shard. One mask is a few pixels off its
mammogram's size, as some real ones are. Same arguments, same bytes: UIDs come from the seed and
nothing carries a timestamp.
"""

from __future__ import annotations

import argparse
import csv
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from ingest.sample_data.cbis_ddsm_cases import (CSV_NAMES, PATH_COLUMNS, CaseTable, CsvPath, SeriesInfo,
                                                UidSource, csv_header, csv_kind, real_cases,
                                                synthetic_cases)
from ingest.sample_data.cbis_ddsm_pixels import (breast_geometry, draw_mammogram, lesion_crop,
                                                 lesion_mask, off_size_mask, place_lesions)

LAYOUTS = ("tcia", "uid")
DEFECT_KINDS = ("missing_image", "corrupt_image", "empty_mask", "outside_root")
METADATA_HEADER = ["Series_UID", "Subject_ID", "Study_UID", "Study_Date", "Series_Description", "Modality",
                   "SOP_Class_UID", "Number_of_Images", "File_Size", "File_Location"]
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
OUTSIDE_PREFIX = "../../outside/"


@dataclass(frozen=True)
class CbisSample:
    root: Path
    images: int  # full mammograms on disk (a corrupt one counts, a missing one does not)
    abnormalities: int  # CSV rows written
    patients: int
    defects: dict[str, str]  # defect kind -> the CSV path cell it affects (empty unless with_defects)


@dataclass
class _Mammogram:
    csv_name: str
    path: CsvPath
    rows: list[dict[str, str]]  # one per abnormality, abnormality id order


@dataclass(frozen=True)
class _DicomFile:
    series: SeriesInfo
    csv_path: CsvPath
    tcia_name: str  # "1-1.dcm" or "1-2.dcm"
    pixels: np.ndarray
    bits_stored: int
    row: dict[str, str]  # a CSV row it belongs to (laterality, view, patient)


def make_cbis_sample(root: Path, *, patients: int = 8, seed: int = 0, layout: str = "tcia",
                     real_csv_dir: Path | None = None, image_shape: tuple[int, int] = (512, 320),
                     with_defects: bool = False) -> CbisSample:
    """Write a CBIS-DDSM-shaped sample under root (absent or empty) and describe it.

    real_csv_dir: a folder with the four official CSVs and `tcia_metadata_roi_series.csv`; when
    given, rows, UIDs, folder names and ROI-series dates come from real patients (see
    `real_cases`), only the pixels are made up. with_defects: one mammogram missing, one corrupt
    (truncated mid pixel data), one ROI mask all zero, one CSV image path (and, in the tcia
    layout, its File_Location) pointing outside root; none on an image that carries a quirk
    (several abnormalities, split crop/mask series, the off-size mask, a patient in two splits).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if patients < 1:
        raise ValueError("patients must be >= 1")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    table = real_cases(Path(real_csv_dir), patients, seed) if real_csv_dir else synthetic_cases(patients, seed)
    mammograms = _mammograms(table)
    defects = _choose_defects(mammograms) if with_defects else {}
    skipped = {mammograms[defects[k]].path for k in ("missing_image", "outside_root") if k in defects}
    corrupt = mammograms[defects["corrupt_image"]].path if defects else None
    outside = {mammograms[defects["outside_root"]].path.series_uid} if defects else set()
    phi = _phi(table, seed)
    sop_uids = UidSource(np.random.default_rng([seed, 4]), set(table.series))
    sizes: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for item in _render(table, mammograms, defects, image_shape, seed):
        data = _dicom_bytes(item, sop_uids.new(), phi[item.row["patient_id"]])
        sizes[item.series.series_uid] += len(data)
        counts[item.series.series_uid] += 1
        if item.csv_path in skipped:
            continue
        if item.csv_path == corrupt:
            data = data[:len(data) // 2]
        if layout == "tcia":
            path = root / Path(*_tcia_parts(item.series)) / item.tcia_name
        else:
            where = item.csv_path
            path = root / where.folder / where.study_uid / where.series_uid / where.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    recorded: dict[str, str] = {}
    for kind, index in sorted(defects.items()):
        mammogram = mammograms[index]
        if kind == "outside_root":
            for row in mammogram.rows:
                row["image file path"] = OUTSIDE_PREFIX + row["image file path"]
        column = "ROI mask file path" if kind == "empty_mask" else "image file path"
        recorded[kind] = mammogram.rows[0][column].strip()
    root.mkdir(parents=True, exist_ok=True)
    _write_csvs(root, table)
    if layout == "tcia":
        _write_metadata(root / "metadata.csv", table, counts, sizes, outside)
    return CbisSample(root=root, images=sum(1 for m in mammograms if m.path not in skipped),
                      abnormalities=sum(len(rows) for rows in table.rows.values()),
                      patients=len(phi), defects=recorded)


def _mammograms(table: CaseTable) -> list[_Mammogram]:
    """Full mammograms in CSV order (mass train, mass test, calc train, calc test), rows grouped."""
    found: dict[tuple[str, str], _Mammogram] = {}
    for name in CSV_NAMES:
        for row in table.rows[name]:
            key = (name, row["image file path"])
            if key not in found:
                found[key] = _Mammogram(name, CsvPath.parse(row["image file path"]), [])
            found[key].rows.append(row)
    for mammogram in found.values():
        mammogram.rows.sort(key=lambda r: int(r["abnormality id"]))
    return list(found.values())


def _split_series(row: dict[str, str]) -> bool:
    crop, mask = (CsvPath.parse(row[c]) for c in PATH_COLUMNS[1:])
    return crop.series_uid != mask.series_uid


def _choose_defects(mammograms: list[_Mammogram]) -> dict[str, int]:
    """Defect kind -> index of the mammogram it hits. Spared: the first mammogram (its first mask
    is the off-size one), images with several abnormalities or split crop/mask series, patients in
    both a train and a test CSV, and the last clean image of each CSV."""
    splits: dict[str, set[str]] = {}
    for m in mammograms:
        splits.setdefault(m.rows[0]["patient_id"], set()).add("train" if "train" in m.csv_name else "test")
    protected = {0} | {i for i, m in enumerate(mammograms)
                       if len(m.rows) > 1 or any(map(_split_series, m.rows))
                       or len(splits[m.rows[0]["patient_id"]]) > 1}
    clean = Counter(m.csv_name for m in mammograms)
    picked: list[int] = []
    for index in reversed(range(len(mammograms))):
        name = mammograms[index].csv_name
        if index in protected or clean[name] <= 1 or len(picked) == len(DEFECT_KINDS):
            continue
        picked.append(index)
        clean[name] -= 1
    if len(picked) < len(DEFECT_KINDS):
        raise ValueError(f"with_defects needs {len(DEFECT_KINDS)} plain mammograms, found {len(picked)};"
                         " ask for more patients")
    return dict(zip(DEFECT_KINDS, picked))


def _render(table: CaseTable, mammograms: list[_Mammogram], defects: dict[str, int],
            shape: tuple[int, int], seed: int) -> Iterator[_DicomFile]:
    """Pixels for every file the CSVs name, mammogram by mammogram. In a series holding both mask
    and crop, whether the mask is 1-1.dcm or 1-2.dcm alternates from one abnormality to the next."""
    shared_series = 0
    for index, mammogram in enumerate(mammograms):
        rng = np.random.default_rng([seed, 2, index])
        first = mammogram.rows[0]
        geom = breast_geometry(shape, chest_wall_left=first["left or right breast"] == "LEFT",
                               view=first["image view"], rng=rng)
        kind = "mass" if csv_kind(mammogram.csv_name) == "mass" else "calcification"
        lesions = place_lesions(shape, geom, [kind] * len(mammogram.rows), rng)
        density = int(np.clip(int(first[csv_header(mammogram.csv_name)[1]]), 1, 4))
        pixels = draw_mammogram(shape, geom, density=density, lesions=lesions, rng=rng)
        yield _DicomFile(table.series[mammogram.path.series_uid], mammogram.path, "1-1.dcm", pixels, 16, first)
        for row, lesion in zip(mammogram.rows, lesions):
            crop_path, mask_path = (CsvPath.parse(row[c]) for c in PATH_COLUMNS[1:])
            mask = lesion_mask(shape, lesion)
            crop = lesion_crop(pixels, mask)
            if index == 0 and row is first:
                mask = off_size_mask(mask)
            if defects.get("empty_mask") == index and row is first:
                mask = np.zeros_like(mask)
            crop_name = mask_name = "1-1.dcm"
            if crop_path.series_uid == mask_path.series_uid:
                mask_first = (shared_series + seed) % 2 == 0
                mask_name, crop_name = ("1-1.dcm", "1-2.dcm") if mask_first else ("1-2.dcm", "1-1.dcm")
                shared_series += 1
            yield _DicomFile(table.series[crop_path.series_uid], crop_path, crop_name, crop, 16, row)
            yield _DicomFile(table.series[mask_path.series_uid], mask_path, mask_name, mask, 8, row)


def _phi(table: CaseTable, seed: int) -> dict[str, tuple[str, str]]:
    """patient_id -> (PatientName, PatientBirthDate): made-up PHI that must never leak."""
    patients = sorted({row["patient_id"] for rows in table.rows.values() for row in rows})
    rng = np.random.default_rng([seed, 3])
    return {pid: (f"DOE^JANE{n}", f"{rng.integers(1930, 1976)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}")
            for n, pid in enumerate(patients, start=1)}


def _tcia_parts(series: SeriesInfo) -> list[str]:
    return ["CBIS-DDSM", series.subject, f"{series.study_date}-DDSM-NA-{series.study_uid[-5:]}",
            f"1.000000-{series.description}-{series.series_uid[-5:]}"]


def _dicom_bytes(item: _DicomFile, sop_uid: str, phi: tuple[str, str]) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_uid
    month, day, year = item.series.study_date.split("-")
    ds.StudyDate = f"{year}{month}{day}"
    ds.Modality = "MG"
    ds.ConversionType = "WSD"
    ds.SeriesDescription = item.series.description
    ds.PatientName, ds.PatientBirthDate = phi
    ds.PatientID = item.series.subject
    ds.PatientSex = "F"
    ds.BodyPartExamined = "BREAST"
    ds.StudyInstanceUID = item.series.study_uid
    ds.SeriesInstanceUID = item.series.series_uid
    ds.SeriesNumber = 1
    ds.InstanceNumber = 2 if item.tcia_name == "1-2.dcm" else 1
    ds.ImageLaterality = item.row["left or right breast"][0]
    ds.ViewPosition = item.row["image view"]
    ds.set_pixel_data(item.pixels, "MONOCHROME2", item.bits_stored, generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _write_csvs(root: Path, table: CaseTable) -> None:
    """CRLF records, minimal quoting: the path cell holding a newline gets quoted, as in the real files."""
    for name in CSV_NAMES:
        with open(root / name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\r\n")
            writer.writerow(csv_header(name))
            writer.writerows([row[c] for c in csv_header(name)] for row in table.rows[name])


def _write_metadata(path: Path, table: CaseTable, counts: Counter[str], sizes: Counter[str],
                    outside: set[str]) -> None:
    """One row per series, sorted by Series_UID, every text cell quoted, as TCIA writes it."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\r\n")
        writer.writerow(METADATA_HEADER)
        for uid in sorted(table.series):
            series = table.series[uid]
            prefix = [".", "..", "..", "outside"] if uid in outside else ["."]
            size = sizes[uid] / 1024
            writer.writerow([uid, series.subject, series.study_uid, series.study_date, series.description,
                             "MG", SECONDARY_CAPTURE, counts[uid],
                             f"{size / 1024:.2f} MB" if size >= 1024 else f"{size:.2f} KB",
                             "\\".join(prefix + _tcia_parts(series))])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a small CBIS-DDSM-shaped sample (made-up pixels).")
    parser.add_argument("out", type=Path, help="output folder (absent or empty)")
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=LAYOUTS, default="tcia")
    parser.add_argument("--real-csv-dir", type=Path, default=None,
                        help="folder with the official CSVs and tcia_metadata_roi_series.csv: use real rows")
    parser.add_argument("--image-shape", type=int, nargs=2, default=(512, 320), metavar=("H", "W"))
    parser.add_argument("--with-defects", action="store_true")
    args = parser.parse_args(argv)
    sample = make_cbis_sample(args.out, patients=args.patients, seed=args.seed, layout=args.layout,
                              real_csv_dir=args.real_csv_dir, image_shape=tuple(args.image_shape),
                              with_defects=args.with_defects)
    print(f"CBIS-DDSM sample ({args.layout} layout) at {sample.root}: {sample.patients} patients, "
          f"{sample.images} mammograms, {sample.abnormalities} abnormality rows")
    for kind, path in sample.defects.items():
        print(f"  defect {kind}: {path}")


if __name__ == "__main__":
    main()
