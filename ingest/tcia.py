"""The TCIA download layout: series found through the download's metadata.csv.

A TCIA (NBIA Data Retriever) download does not use the UID paths that collections' own CSVs spell.
It writes `<Collection>/<Subject>/<date>-<study desc>-<n>/<n>.000000-<series desc>-<n>/1-1.dcm` and a
`metadata.csv` whose `File Location` (older: `File_Location`) is a Windows path relative to the
folder holding metadata.csv, e.g. `.\\CBIS-DDSM\\Mass-Training_P_00001_LEFT_CC\\...`. The series UID
column joins the two. Older and newer downloads spell the headers with `_` or a space.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

_SERIES_COLUMNS = ("Series UID", "Series_UID", "SeriesInstanceUID")
_LOCATION_COLUMNS = ("File Location", "File_Location")
_DESCRIPTION_COLUMNS = ("Series Description", "Series_Description")
_SUBJECT_COLUMNS = ("Subject ID", "Subject_ID")
_IMAGES_COLUMNS = ("Number of Images", "Number_of_Images")


class TciaLayoutError(ValueError):
    pass


@dataclass(frozen=True)
class TciaSeries:
    uid: str
    folder: Path  # absolute
    description: str
    subject: str = ""  # Subject ID: the collection's raw patient ID, for joins and splits only
    images: int | None = None  # Number of Images, when the column is there


def _column(header: list[str], names: tuple[str, ...], path: Path) -> str:
    for name in names:
        if name in header:
            return name
    raise TciaLayoutError(f"{path}: no column {' or '.join(repr(n) for n in names)} (found {header})")


def find_metadata_csvs(root: Path, *, max_depth: int = 2) -> list[Path]:
    """metadata.csv files at the root or up to max_depth folders below it (a download is often
    unpacked one or two folders deep)."""
    found = []
    for depth in range(max_depth + 1):
        found.extend(sorted(root.glob("/".join(["*"] * depth + ["metadata.csv"]))))
    return found


def read_series_index(root: Path) -> dict[str, TciaSeries]:
    """Series UID -> series folder, from every metadata.csv under root. Empty if there is none."""
    index: dict[str, TciaSeries] = {}
    for meta_path in find_metadata_csvs(root):
        with open(meta_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            uid_col = _column(header, _SERIES_COLUMNS, meta_path)
            loc_col = _column(header, _LOCATION_COLUMNS, meta_path)
            desc_col = next((c for c in _DESCRIPTION_COLUMNS if c in header), None)
            subject_col = next((c for c in _SUBJECT_COLUMNS if c in header), None)
            images_col = next((c for c in _IMAGES_COLUMNS if c in header), None)
            for row in reader:
                parts = [p for p in PureWindowsPath(row[loc_col].strip()).parts if p not in (".", "")]
                folder = meta_path.parent.joinpath(*parts)
                uid = row[uid_col].strip()
                images = (row[images_col] or "").strip() if images_col else ""
                index[uid] = TciaSeries(uid, folder, row[desc_col].strip() if desc_col else "",
                                        row[subject_col].strip() if subject_col else "",
                                        int(images) if images.isdigit() else None)
    return index
