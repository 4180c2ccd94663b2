"""A small multiplexed immunofluorescence dataset on disk: brain-cell-like blobs in DAMA's seven
channels (plus one the ingest does not ask for), in the TIFF layouts microscopes and pipelines write.

No 7-channel brain-cell image can be had publicly (../shared/data/README.md), so the pixels are
made up: every cell is a nucleus (bright in DAPI and Histones) inside a cell body bright in its
type's marker (DAMA Fig. 6: microglia Iba1, neurons NeuN, oligodendrocytes Olig2, endothelial
RECA1, astrocytes S100), on a dim noisy background; uint16.

Layouts, one per image in turn (layout="mixed") or all alike:
- "pages": one TIFF, one uncompressed page per channel, the name in each page's PageName tag, no
  shape metadata (tifffile reads axes IYX), as MIBI writes; the channel order differs per image;
- "ome": one OME-TIFF, channel names in the OME-XML, deflate-compressed 64 x 64 tiles;
- "folder": a folder `<image>/` holding `<channel>.tif` per channel, deflate-compressed strips.
Cell tables: tables="beside" writes `<image>.csv` (x, y, cell_type) next to each image,
"shared" one `cells.csv` with an `image` column in the parent of the root, "none" no table.
Defects (with_defects=True): "missing_channel" (an image without NeuN), "no_names" (a TIFF whose
pages carry no names), "corrupt" (a .tif holding garbage). Same arguments, same bytes.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

CHANNELS = ("DAPI", "Histones", "NeuN", "S100", "Olig2", "Iba1", "RECA1", "GFAP")
CELL_TYPES = {"microglia": "Iba1", "neuron": "NeuN", "oligodendrocyte": "Olig2", "endothelial": "RECA1",
              "astrocyte": "S100"}
LAYOUTS = ("pages", "ome", "folder")
DEFECT_KINDS = ("missing_channel", "no_names", "corrupt")


@dataclass(frozen=True)
class IfSample:
    root: Path
    images: dict[str, str]  # image id -> layout, usable images only
    cells: dict[str, list[tuple[float, float, str]]]  # image id -> (x, y, cell type) as drawn
    pixels: dict[str, dict[str, np.ndarray]] = field(repr=False)  # image id -> channel -> (H, W) uint16
    cells_table: Path | None = None  # the shared table, when tables="shared"
    defects: dict[str, str] = field(default_factory=dict)  # defect kind -> file name under root


def draw_cells(shape: tuple[int, int], count: int, rng: np.random.Generator
               ) -> tuple[dict[str, np.ndarray], list[tuple[float, float, str]]]:
    """-> ({channel: (H, W) uint16}, [(x, y, cell type)]): `count` cells at least 18 px apart."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    planes = {name: rng.normal(300, 40, shape).astype(np.float32) for name in CHANNELS}
    cells: list[tuple[float, float, str]] = []
    types = sorted(CELL_TYPES)
    for _ in range(count * 20):
        if len(cells) == count:
            break
        x, y = float(rng.uniform(6, w - 6)), float(rng.uniform(6, h - 6))
        if any((x - cx) ** 2 + (y - cy) ** 2 < 18**2 for cx, cy, _ in cells):
            continue
        kind = types[int(rng.integers(len(types)))]
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        nucleus = np.exp(-r2 / (2 * 3.5**2))
        body = np.exp(-r2 / (2 * 7.0**2))
        planes["DAPI"] += 9000 * nucleus
        planes["Histones"] += 6000 * nucleus
        planes[CELL_TYPES[kind]] += 12000 * body
        planes["GFAP"] += 2000 * body * float(kind == "astrocyte")
        cells.append((round(x, 2), round(y, 2), kind))
    return {k: np.clip(v, 0, 65535).astype(np.uint16) for k, v in planes.items()}, cells


def _write(path: Path, layout: str, planes: dict[str, np.ndarray], order: list[str], *, named: bool = True) -> None:
    stack = np.stack([planes[c] for c in order])
    if layout == "pages":
        with tifffile.TiffWriter(path) as tif:
            for name, plane in zip(order, stack):
                tags = [(285, "s", 0, name, True)] if named else []
                tif.write(plane, photometric="minisblack", metadata=None, extratags=tags, software=False)
    elif layout == "ome":
        meta = {"axes": "CYX", "Channel": {"Name": order}, "Creator": "medshards sample data",
                "UUID": f"urn:uuid:00000000-0000-0000-0000-{len(order):012d}",  # tifffile's default is random
                "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
        tifffile.imwrite(path, stack, ome=True, metadata=meta, tile=(64, 64), compression="zlib",
                         photometric="minisblack", software=False)
    else:
        path.mkdir(parents=True, exist_ok=True)
        for name, plane in zip(order, stack):
            tifffile.imwrite(path / f"{name}.tif", plane, photometric="minisblack", rowsperstrip=16,
                             compression="zlib", metadata=None, software=False)


def make_if_sample(out: Path, *, images: int = 3, shape: tuple[int, int] = (200, 240), cells_per_image: int = 12,
                   seed: int = 0, layout: str = "mixed", tables: str = "beside",
                   with_defects: bool = False) -> IfSample:
    """Write OUT/if/... (and OUT/cells.csv for tables="shared"); return what was written."""
    if layout not in (*LAYOUTS, "mixed") or tables not in ("beside", "shared", "none"):
        raise ValueError(f"layout {layout!r} / tables {tables!r} not known")
    root = out / "if"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    made, all_cells, all_pixels, shared_rows = {}, {}, {}, []
    for i in range(images):
        image_id = f"slide{i + 1:02d}"
        kind = LAYOUTS[i % len(LAYOUTS)] if layout == "mixed" else layout
        planes, cells = draw_cells(shape, cells_per_image, rng)
        order = [CHANNELS[j] for j in rng.permutation(len(CHANNELS))]  # never the DAMA order by chance alone
        path = root / (image_id if kind == "folder" else f"{image_id}{'.ome.tif' if kind == 'ome' else '.tif'}")
        _write(path, kind, planes, order)
        made[image_id], all_cells[image_id], all_pixels[image_id] = kind, cells, planes
        rows = [{"x": x, "y": y, "cell_type": t} for x, y, t in cells]
        if tables == "beside":
            _write_csv(root / f"{image_id}.csv", ["x", "y", "cell_type"], rows)
        shared_rows += [{"image": image_id, **row} for row in rows]
    table = None
    if tables == "shared":
        table = out / "cells.csv"
        _write_csv(table, ["image", "x", "y", "cell_type"], shared_rows)
    defects = {}
    if with_defects:
        planes, cells = draw_cells(shape, 4, rng)
        _write(root / "lacks_neun.tif", "pages", planes, [c for c in CHANNELS if c != "NeuN"])
        _write(root / "unnamed.tif", "pages", planes, list(CHANNELS), named=False)
        (root / "corrupt.tif").write_bytes(b"II*\x00" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
        defects = {"missing_channel": "lacks_neun.tif", "no_names": "unnamed.tif", "corrupt": "corrupt.tif"}
    return IfSample(root, made, all_cells, all_pixels, table, defects)


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(200, 240), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--cells-per-image", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=(*LAYOUTS, "mixed"), default="mixed")
    parser.add_argument("--tables", choices=("beside", "shared", "none"), default="beside")
    args = parser.parse_args(argv)
    made = make_if_sample(args.out, images=args.images, shape=tuple(args.size), cells_per_image=args.cells_per_image,
                          seed=args.seed, layout=args.layout, tables=args.tables)
    print(f"sample multiplexed IF: {len(made.images)} images in {made.root}")


if __name__ == "__main__":
    main()
