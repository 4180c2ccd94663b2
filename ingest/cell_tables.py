"""Cell tables: where the cells of a multiplexed image are, as segmentation pipelines export them.

A table is a CSV with a header; column names are matched case-insensitively:
- x (column) and y (row) of the cell centre in full-resolution pixels: `x`/`y`, `centroid_x`/
  `centroid_y`, scikit-image/ark-analysis's `centroid-1`/`centroid-0` (row first there),
  MCMICRO's `X_centroid`/`Y_centroid`, CellProfiler's `Location_Center_X`/`_Y`, or QuPath's
  `Centroid X px`/`Centroid Y px` (QuPath's `µm` columns are refused by name: they need the pixel
  size, which the table does not give);
- the cell type, optional: `cell_type`, `celltype`, ark-analysis's `cell_meta_cluster` or QuPath's
  `Class` (first present wins; empty -> None). Not `label`: scikit-image's regionprops_table and
  ark-analysis write there the segmentation's instance number, one per cell, which as a type
  would give every crop a class of its own;
- the image, only in one table shared by several images: `image` or `fov`, holding the image id
  (file name without .tif/.tiff/.ome.tif, or the per-channel folder's name) or the file name.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ingest.pipeline import Reject

X_COLUMNS = ("x", "centroid_x", "centroid-1", "x_centroid", "location_center_x", "centroid x px")
Y_COLUMNS = ("y", "centroid_y", "centroid-0", "y_centroid", "location_center_y", "centroid y px")
MICROMETRE_COLUMNS = ("centroid x µm", "centroid y µm")  # QuPath's, calibrated
TYPE_COLUMNS = ("cell_type", "celltype", "cell_meta_cluster", "class")
IMAGE_COLUMNS = ("image", "fov")


class CellTableError(ValueError):
    """A table that cannot be used at all (no x/y columns, unreadable file)."""


@dataclass(frozen=True)
class Cell:
    """One table row: a cell centre in source pixels, its type if the table says, its CSV line."""

    x: float
    y: float
    cell_type: str | None
    line: int


def _column(header: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((header[n] for n in names if n in header), None)


def read_cell_table(path: Path, name: str) -> tuple[dict[str | None, list[Cell]], list[Reject]]:
    """-> ({image id or None when the table has no image column: cells in row order}, rejects for
    unreadable rows). Raises CellTableError when the table has no x/y columns."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
            x_col, y_col = _column(header, X_COLUMNS), _column(header, Y_COLUMNS)
            if (x_col is None or y_col is None) and any(name in header for name in MICROMETRE_COLUMNS):
                raise CellTableError(f"{name}: cell centres are in micrometres (QuPath's 'Centroid X µm'), and "
                                     "crops are cut in pixels; export the measurements without pixel calibration "
                                     "('Centroid X px') or add x,y columns in pixels")
            if x_col is None or y_col is None:
                raise CellTableError(f"{name}: no cell centre columns; expected one of {X_COLUMNS} and one of "
                                     f"{Y_COLUMNS}, found {sorted(header)}")
            type_col, image_col = _column(header, TYPE_COLUMNS), _column(header, IMAGE_COLUMNS)
            cells: dict[str | None, list[Cell]] = defaultdict(list)
            rejects = []
            for line, row in enumerate(reader, start=2):
                try:
                    x, y = float(row[x_col]), float(row[y_col])
                    if not (math.isfinite(x) and math.isfinite(y)):
                        raise ValueError("not finite")
                except (TypeError, ValueError):
                    rejects.append(Reject(f"{name}:{line}",
                                          f"unreadable cell row: x={row.get(x_col)!r} y={row.get(y_col)!r}"))
                    continue
                cell_type = (row.get(type_col) or "").strip() or None if type_col else None
                image = (row.get(image_col) or "").strip() if image_col else None
                cells[image].append(Cell(x, y, cell_type, line))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CellTableError(f"{name}: unreadable cell table: {exc}") from None
    return dict(cells), rejects


def match_images(cells: dict[str | None, list[Cell]], image_names: dict[str, str],
                 table: str) -> tuple[dict[str, list[Cell]], list[Reject]]:
    """Rows of a shared table -> {image id: cells}. `image_names` maps every accepted spelling
    (id, file name) to the image id. Rows naming no known image become one reject per name."""
    if None in cells:
        ids = set(image_names.values())
        if len(ids) != 1:
            raise CellTableError(f"{table}: no image column ({' or '.join(IMAGE_COLUMNS)}) but {len(ids)} images "
                                 "under ROOT; add one, or put <image>.csv beside each image")
        return {ids.pop(): cells[None]}, []
    by_image: dict[str, list[Cell]] = defaultdict(list)
    rejects = []
    for name, rows in sorted(cells.items()):
        image = image_names.get(name)
        if image is None:
            rejects.append(Reject(table, f"unknown image: {len(rows)} rows name image {name!r}, not found under ROOT"))
        else:
            by_image[image].extend(rows)
    return dict(by_image), rejects
