"""NIH ChestX-ray14's tables: Data_Entry_2017[_v2020].csv (an image's patient, findings, view and
original size) and BBox_List_2017.csv (boxes of 8 findings on 880 images), as they are really
written (ingest.sources.nih_cxr14's docstring lists their quirks): columns found by name, a
bracketed name split over cells joined back, gzipped or not. A row that cannot be used is a
Reject naming its file and line; a table without the columns it needs is an NihInputError."""

from __future__ import annotations

import csv
import gzip
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.pipeline import IngestError, Reject

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"
BBOX_SPELLINGS = {"Infiltrate": "Infiltration"}


class NihInputError(IngestError):
    """The NIH inputs cannot be used (no labels CSV, missing columns, a root that is not a folder)."""


@dataclass(frozen=True)
class Entry:  # one Data_Entry row
    image: str  # "00000001_000.png"
    patient: str  # raw file-name prefix: for splitting only, never written out
    labels: dict[str, Any]
    view: str | None
    extra: dict[str, Any]


def open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def header_columns(header: list[str]) -> dict[str, slice]:
    """Header cells -> {lower-case column name: the row cells it spans}.

    'OriginalImage[Width', 'Height]' becomes 'originalimage[width,height]' spanning two cells;
    empty names (a trailing comma) are dropped."""
    columns: dict[str, slice] = {}
    i = 0
    while i < len(header):
        start, name = i, header[i].strip()
        while name.count("[") > name.count("]") and i + 1 < len(header):
            i += 1
            name += "," + header[i].strip()
        if name:
            columns[name.lower()] = slice(start, i + 1)
        i += 1
    return columns


def _numbers(cells: list[str]) -> tuple[float, ...] | None:
    try:
        return tuple(float(c) for c in cells)
    except ValueError:
        return None


def _parse_entry(image: str, cells: list[str], columns: dict[str, slice]) -> Entry:
    """One row of an image found on disk -> Entry. Raises ValueError naming what is wrong."""
    def cell(name: str) -> list[str]:
        return [c.strip() for c in cells[columns[name]]] if name in columns else []

    findings = set("".join(cell("finding labels")).split("|"))
    unknown = findings - set(FINDINGS) - {NO_FINDING}
    if unknown:
        raise ValueError(f"unknown finding {sorted(unknown)}")
    labels: dict[str, Any] = {name: name in findings for name in FINDINGS}
    labels["no_finding"] = NO_FINDING in findings
    labels["box_finding"] = None  # set on lesion crops: the finding their box marks
    follow_up = "".join(cell("follow-up #"))
    size = _numbers(cell("originalimage[width,height]"))
    spacing = _numbers(cell("originalimagepixelspacing[x,y]"))
    extra = {
        "follow_up": int(follow_up) if follow_up.isdigit() else None,
        # The scan before NIH resized it to 1024x1024, as (rows, cols): the CSV gives (x, y).
        "original_size": [int(size[1]), int(size[0])] if size and len(size) == 2 else None,
        "original_pixel_spacing_mm": [spacing[1], spacing[0]] if spacing and len(spacing) == 2 else None,
    }
    return Entry(image, image.split("_")[0], labels, "".join(cell("view position")).upper() or None, extra)


def read_entries(path: Path, on_disk: set[str]) -> tuple[dict[str, str], list[Entry], list[Reject]]:
    """Data_Entry CSV -> (image -> raw patient for every row, an Entry for each row whose image is
    in `on_disk`, a Reject per unusable row). Only rows with a file are parsed in full: a partial
    download must not pay for the 112,120 rows it lacks."""
    listed: dict[str, str] = {}
    entries, rejects = [], []
    with open_text(path) as fh:
        reader = csv.reader(fh)
        columns = header_columns(next(reader, []))
        for required in ("image index", "finding labels"):
            if required not in columns:
                raise NihInputError(f"{path.name}: no {required!r} column (header: {sorted(columns)})")
        at_image = columns["image index"].start
        for line_no, cells in enumerate(reader, start=2):
            image = cells[at_image].strip() if len(cells) > at_image else ""
            where = f"{path.name}:{line_no}"
            if not image.endswith(".png") or "_" not in image:
                rejects.append(Reject(where, f"unreadable CSV row: image index {image!r} is no NIH file name"))
            elif image in listed:
                rejects.append(Reject(where, f"duplicate CSV row: {image} is listed twice"))
            else:
                listed[image] = image.split("_")[0]
                if image in on_disk:
                    try:
                        entries.append(_parse_entry(image, cells, columns))
                    except ValueError as exc:
                        rejects.append(Reject(where, f"unreadable CSV row: {exc}"))
    return listed, entries, rejects


def read_boxes(path: Path) -> tuple[dict[str, list[tuple[str, tuple[float, float, float, float]]]], list[Reject]]:
    """BBox_List_2017.csv -> image name -> [(finding, (x, y, w, h))] in file order, and rejects."""
    boxes: dict[str, list] = {}
    rejects = []
    with open_text(path) as fh:
        reader = csv.reader(fh)
        header = [c.strip().lower() for c in next(reader, [])]
        try:
            at_image, at_finding = header.index("image index"), header.index("finding label")
            at_box = next(i for i, name in enumerate(header) if name.startswith("bbox"))
        except (ValueError, StopIteration):
            raise NihInputError(f"{path.name}: expected columns Image Index, Finding Label, Bbox [x,y,w,h]") from None
        for line_no, cells in enumerate(reader, start=2):
            finding = cells[at_finding].strip() if len(cells) > at_finding else ""
            finding = BBOX_SPELLINGS.get(finding, finding)
            box = _numbers(cells[at_box:at_box + 4])
            if finding not in FINDINGS or box is None or len(box) != 4 or not all(map(math.isfinite, box)) \
                    or box[2] <= 0 or box[3] <= 0:
                rejects.append(Reject(f"{path.name}:{line_no}", f"unreadable bbox row: {','.join(cells)}"))
                continue
            boxes.setdefault(cells[at_image].strip(), []).append((finding, box))
    return boxes, rejects
