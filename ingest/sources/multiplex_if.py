"""Multiplexed immunofluorescence: multi-channel crops around cells (DAMA, paper 004) or at random.

ROOT holds the images, one per entry directly under it:
- a TIFF file (`.tif`, `.tiff`, `.ome.tif`) holding every channel: channel axis and names are read
  from the file (ingest/multiplex_tiff.py: OME-XML, ImageJ Labels, PageName tags), or
- a folder of single-channel TIFFs, one per channel, the file's stem naming the channel
  (`slide1/DAPI.tif`, `slide1/NeuN.tif`, ...).
The image id is the file name without its TIFF suffix, or the folder name.

`--channels` picks channels by name, in the order given (case-insensitive exact names); an image
lacking one is rejected naming the missing and the available names. Pixels keep their dtype
(uint16 stays uint16) and are stored as (H, W, C) .npy with `channel_names`.

Cell crops (`--crops cell`) are centred on the cells of a table (ingest/cell_tables.py: `--cells
TABLE` for all images, else `<image id>.csv` beside the image) or, without one, on the nuclei found
on `--nuclear-channel` (ingest/nuclei.py). Cell types come from the table (None otherwise).

Large images: every image is split into blocks of `--block` pixels, each its own work unit (a
worker holds one block's crops, never a slide's), and read by region: only the selected channels'
pages, and of those only the strips/tiles under the block (ingest/multiplex_tiff.py). The nuclear
threshold is one Otsu threshold per image, from up to THRESHOLD_CHUNKS chunks spread over it, taken
at planning so every block of an image uses the same one.

Splits: one patient per image unless `--patients` (CSV with `image,patient`) maps images to
subjects; test and validation patients are drawn with the seed (no official split).
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ingest import crops, nuclei, pseudonym, splits
from ingest.arguments import held_out_fraction, non_negative_int, positive_int
from ingest.cell_tables import Cell, CellTableError, match_images, read_cell_table
from ingest.if_plan_reads import measure_images
from ingest.multiplex_tiff import (
    TIFF_SUFFIXES, ChannelIndex, MultiplexTiffError, Plane, RegionReader, image_files, image_stem,
    read_channel_folder, read_channel_index,
)
from ingest.pipeline import EncodedSample, IngestError, IngestJob, Reject, UnitOutput, WorkUnit
from ingest.prior_splits import NO_PRIOR, PriorSplits, load_prior_splits
from shards import codecs, schema

SOURCE = "if"
DAMA_CHANNELS = ("DAPI", "Histones", "NeuN", "S100", "Olig2", "Iba1", "RECA1")  # DAMA's 128x128x7 crops
CROP_CHOICES = ("cell", "random", "both")
BLOCK = 2048
THRESHOLD_CHUNKS = 64


class IfInputError(IngestError):
    """The inputs cannot be used (no images, unreadable --cells or --patients table, bad options)."""


@dataclass(frozen=True)
class IfBlock:
    """A work unit's payload: one block of one image, with everything resolved at planning."""

    image: str  # relative to the root, for rejects
    planes: tuple[Plane, ...]  # the selected channels, in --channels order
    dtype: str
    shape: tuple[int, int]
    pixel_spacing_mm: tuple[float, float] | None
    block: crops.Box  # the cells whose centre lies here belong to this unit
    whole_image: bool  # the block is the whole image
    cells: tuple[Cell, ...] | None  # None: find nuclei on `nuclear`
    nuclear: Plane | None
    threshold: int | None
    randoms: tuple[crops.Box, ...]
    patient: str  # pseudonym
    split: str
    fingerprint: str
    input_bytes: int  # counted on the image's first block only


def find_images(root: Path) -> tuple[list[tuple[str, Path]], int]:
    """(image id, path) of every TIFF file and every folder of TIFFs directly under ROOT, and how
    many other entries (CSV tables aside) were passed over."""
    found, other = [], 0
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix.lower() in TIFF_SUFFIXES:
            found.append((image_stem(path), path))
        elif path.is_dir() and any(p.suffix.lower() in TIFF_SUFFIXES for p in path.iterdir()):
            found.append((path.name, path))
        elif path.suffix.lower() != ".csv":
            other += 1
    return found, other


def read_patients(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise IfInputError(f"--patients {path}: {exc}") from None
    if not rows or not {"image", "patient"} <= set(rows[0]):
        raise IfInputError(f"--patients {path}: expected columns image,patient")
    return {r["image"].strip(): r["patient"].strip() for r in rows}


def assign_splits(patients: set[str], *, test_fraction: float, val_fraction: float, seed: int,
                  keep: dict[str, str] | None = None) -> dict[str, str]:
    """raw patient -> split: test drawn with `seed`, validation from the rest with `seed + 1`
    (keep: raw patient -> its split in an earlier set, --splits-from)."""
    test = splits.carve_validation(patients, fraction=test_fraction, seed=seed, keep=keep, into="test")
    val = splits.carve_validation(patients - test, fraction=val_fraction, seed=seed + 1, keep=keep)
    return {p: "test" if p in test else "val" if p in val else "train" for p in patients}


def random_boxes(shape: tuple[int, int], side: int, count: int, rng: random.Random) -> list[crops.Box]:
    """`count` boxes of `side` inside the image (at the origin, zero-padded, if the image is smaller)."""
    h, w = shape
    boxes = []
    for _ in range(count):
        x0, y0 = rng.randrange(0, max(w - side, 0) + 1), rng.randrange(0, max(h - side, 0) + 1)
        boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def _blocks(shape: tuple[int, int], block: int) -> list[crops.Box]:
    h, w = shape
    return [(x, y, min(x + block, w), min(y + block, h)) for y in range(0, h, block) for x in range(0, w, block)]


def _inside(box: crops.Box, x: float, y: float) -> bool:
    return box[0] <= x < box[2] and box[1] <= y < box[3]


def _box_in_block(box: crops.Box, block: crops.Box, shape: tuple[int, int]) -> bool:
    """Whether a random box belongs to a block: its centre, kept inside the image (a box larger
    than the image sits at the origin with its centre beyond it)."""
    h, w = shape
    return _inside(block, min((box[0] + box[2]) / 2, w - 1), min((box[1] + box[3]) / 2, h - 1))


@dataclass(frozen=True)
class ImagePlan:
    """What planning learnt of one image before its blocks are made."""

    rel: str
    path: Path
    index: ChannelIndex
    planes: tuple[Plane, ...]
    nuclear: Plane | None
    cells: list[Cell] | None


def plan_images(root: Path, *, channels: tuple[str, ...], crops_kind: str, cells_table: Path | None,
                nuclear_channel: str) -> tuple[list[tuple[str, ImagePlan]], list[Reject], dict[str, int]]:
    """Read every image's header and cell table. -> ([(image id, plan)], rejects, notes)."""
    images, other = find_images(root)
    if not images:
        raise IfInputError(f"{root}: no TIFF files or folders of TIFFs directly under it")
    rejects, notes = [], defaultdict(int, root_entries_not_images=other)
    table_cells: dict[str, list[Cell]] | None = None
    if cells_table is not None and crops_kind != "random":
        try:
            raw, row_rejects = read_cell_table(cells_table, cells_table.name)
            names = {**{image_id: image_id for image_id, _ in images}, **{p.name: i for i, p in images}}
            table_cells, unknown = match_images(raw, names, cells_table.name)
        except CellTableError as exc:
            raise IfInputError(str(exc)) from None
        rejects += row_rejects + unknown
    plans = []
    for image_id, path in images:
        rel = path.name
        try:
            index = read_channel_folder(path, rel) if path.is_dir() else read_channel_index(path, rel)
            planes = index.select(channels)
        except MultiplexTiffError as exc:
            rejects.append(Reject(rel, str(exc)))
            continue
        cells, nuclear = None, None
        if crops_kind != "random":
            beside = root / f"{image_id}.csv"
            if table_cells is not None:
                cells = table_cells.get(image_id, [])
                if not cells:
                    rejects.append(Reject(rel, f"no cells: {cells_table.name} has no rows for image {image_id!r}"))
                    continue
            elif beside.is_file():
                try:
                    raw, row_rejects = read_cell_table(beside, beside.name)
                except CellTableError as exc:
                    rejects.append(Reject(rel, f"unreadable cell table: {exc}"))
                    continue
                rejects += row_rejects
                cells = [c for rows in raw.values() for c in rows]
            else:
                try:
                    nuclear = index.select((nuclear_channel,))[0]
                except MultiplexTiffError as exc:
                    rejects.append(Reject(rel, f"{exc} (--nuclear-channel)"))
                    continue
            if cells is not None:
                h, w = index.shape
                for c in cells:
                    if not _inside((0, 0, w, h), c.x, c.y):
                        rejects.append(Reject(f"{beside.name if table_cells is None else cells_table.name}:{c.line}",
                                              f"cell outside image: ({c.x}, {c.y}) not in {rel} ({w}x{h})"))
                cells = [c for c in cells if _inside((0, 0, w, h), c.x, c.y)]
                notes["cells_from_tables"] += len(cells)
        plans.append((image_id, ImagePlan(rel, path, index, planes, nuclear, cells)))
    return plans, rejects, dict(notes)


def plan_units(plans: list[tuple[str, ImagePlan]], *, patients: dict[str, str], salt: str, side: int, block: int,
               crops_kind: str, random_per_image: int, test_fraction: float, val_fraction: float, seed: int,
               workers: int, progress: bool = False, prior: PriorSplits = NO_PRIOR,
               notes: dict | None = None) -> tuple[list[WorkUnit], list[Reject]]:
    """One unit per block of every image holding work, sorted by pseudonymous id, and the images
    that could not be read through. Each image is read whole twice here (fingerprint, nuclear
    threshold: ingest.if_plan_reads); with progress, a bar counts them."""
    raw_patient = {image_id: patients.get(image_id, image_id) for image_id, _ in plans}
    keep = prior.keep(set(raw_patient.values()), "if:")
    split_of = assign_splits(set(raw_patient.values()), test_fraction=test_fraction, val_fraction=val_fraction,
                             seed=seed, keep=keep)
    if notes is not None:
        notes.update(prior.notes(keep, split_of, SOURCE))
    measured = list(measure_images([plan for _, plan in plans], THRESHOLD_CHUNKS, workers=workers,
                                   progress=progress))
    units, rejects = [], []
    for (image_id, plan), result in zip(plans, measured):
        if isinstance(result, str):
            rejects.append(Reject(plan.rel, result))
            continue
        fingerprint, threshold = result
        patient = pseudonym.pseudonym(salt, f"if:{raw_patient[image_id]}")
        rng = random.Random(f"{seed}:{pseudonym.pseudonym(salt, f'if-image:{plan.rel}')}")
        randoms = random_boxes(plan.index.shape, side, random_per_image, rng) if crops_kind != "cell" else []
        blocks = _blocks(plan.index.shape, block)
        input_bytes = sum(p.stat().st_size for p in image_files(plan.path))
        for box in blocks:
            cells = None if plan.cells is None else tuple(c for c in plan.cells if _inside(box, c.x, c.y))
            mine = tuple(r for r in randoms if _box_in_block(r, box, plan.index.shape))
            if not mine and (crops_kind == "random" or cells == ()):
                continue
            payload = IfBlock(
                image=plan.rel, planes=plan.planes, dtype=plan.index.dtype, shape=plan.index.shape,
                pixel_spacing_mm=plan.index.pixel_spacing_mm, block=box, whole_image=len(blocks) == 1,
                cells=cells if crops_kind != "random" else (), nuclear=plan.nuclear, threshold=threshold,
                randoms=mine, patient=patient, split=split_of[raw_patient[image_id]], fingerprint=fingerprint,
                input_bytes=input_bytes,
            )
            input_bytes = 0  # counted once per image
            unit_id = pseudonym.pseudonym(salt, f"if-image:{plan.rel}:{box[0]},{box[1]}")
            units.append(WorkUnit(unit_id, plan.rel, payload))
    units.sort(key=lambda u: u.unit_id)
    return units, rejects


@dataclass(frozen=True)
class IfProcess:
    """The per-block work, run in a worker process (picklable: plain fields only)."""

    size: int
    side: int
    channel_names: tuple[str, ...]
    min_nucleus_area: int

    def __call__(self, unit: WorkUnit) -> UnitOutput:
        b: IfBlock = unit.payload
        out = UnitOutput()
        out.notes["input_bytes"] += b.input_bytes
        with RegionReader() as reader:
            if b.cells is None:
                found = nuclei.find_nuclei(lambda box: reader.read(b.nuclear, box), b.block, b.shape,
                                           threshold=b.threshold, min_area=self.min_nucleus_area)
                centres = [(float(x), float(y), None, None, "nuclei") for x, y in found]
                out.notes["cells_from_nuclei"] += len(centres)
                if not centres:
                    if b.whole_image:
                        out.rejects.append(Reject(b.image, "no cells: no nuclei found above the nuclear threshold "
                                                           f"{b.threshold}"))
                    out.notes["blocks_without_nuclei"] += 1
            else:
                centres = [(c.x, c.y, c.cell_type, c.line, "table") for c in b.cells]
            if not centres and not b.randoms:
                return out
            # One read per channel covers every crop centred in the block; outside the image it is 0.
            x0, y0, x1, y1 = b.block
            region = (x0 - self.side, y0 - self.side, x1 + self.side, y1 + self.side)
            stack = np.stack([reader.read(plane, region) for plane in b.planes], axis=-1)
        half = self.side // 2
        made = []
        for i, (x, y, cell_type, line, origin) in enumerate(centres):
            cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            box = (cx - half, cy - half, cx - half + self.side, cy - half + self.side)
            extra = {"cell_source": origin, "table_line": line}
            made.append((f"cell{i}", "cell", box, {"cell_type": cell_type}, extra))
        for i, box in enumerate(b.randoms):
            made.append((f"random{i}", "random", box, {"cell_type": None}, {}))
        common = dict(source=SOURCE, patient=b.patient, split=b.split, source_size=b.shape, height=self.size,
                      width=self.size, channels=len(b.planes), dtype=b.dtype, channel_names=self.channel_names,
                      pixel_spacing_mm=b.pixel_spacing_mm, source_fingerprint=b.fingerprint)
        for name, kind, box, labels, extra in made:
            shifted = (box[0] - region[0], box[1] - region[1], box[2] - region[0], box[3] - region[1])
            pixels = resize_channels(crops.crop_padded(stack, shifted), self.size)
            meta = schema.SampleMeta(key=f"if_{unit.unit_id}_{name}", crop_kind=kind, crop_box=box, labels=labels,
                                     extra=extra, **common)
            out.samples.append(_encode(meta, pixels))
        return out


def resize_channels(crop: np.ndarray, size: int) -> np.ndarray:
    """(side, side, C) -> (size, size, C), channel by channel: OpenCV's area resize takes at most 4
    channels and drops a trailing channel axis of 1."""
    if crop.shape[0] == size:
        return crop
    return np.stack([crops.resize_to(crop[:, :, c], size) for c in range(crop.shape[2])], axis=-1)


def _encode(meta: schema.SampleMeta, pixels: np.ndarray) -> EncodedSample:
    member, data = codecs.encode_pixels(pixels)
    return EncodedSample.of(meta, {member: data}, pixels)


def build_job(*, root: Path, out: Path, channels: tuple[str, ...] = DAMA_CHANNELS, crops: str = "cell",
              cells: Path | None = None, nuclear_channel: str = "DAPI", patients: Path | None = None,
              size: int = 128, side: int | None = None, random_per_image: int = 16, block: int = BLOCK,
              min_nucleus_area: int = 20, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0,
              workers: int = 1, shard_size: int = 1000, id_salt: str | None = None,
              splits_from: list[str] | None = None, overwrite: bool = False, progress: bool = True,
              tool_version: str = "0+unknown") -> IngestJob:
    """Plan an `ingest if` job: read every image's header and cell table, split, make block units."""
    if crops not in CROP_CHOICES:
        raise IfInputError(f"--crops must be one of {CROP_CHOICES}, got {crops!r}")
    channels = tuple(c.strip() for c in channels if c.strip())
    side = side or size
    if not channels or len({c.casefold() for c in channels}) != len(channels):
        raise IfInputError(f"--channels must name distinct channels, got {','.join(channels)!r}")
    if size < 1 or side < 1 or block < side or random_per_image < 0:
        raise IfInputError("--size and --side must be positive, --block at least --side, --random-per-image >= 0")
    if not root.is_dir():
        raise IfInputError(f"{root}: not a folder")
    if cells is not None and not cells.is_file():
        raise IfInputError(f"--cells {cells}: file not found")
    if patients is None:  # one patient an image, named by its file: as public as the files are
        salt = pseudonym.resolve_salt(id_salt)
    else:  # a lab's own subject IDs, which may be a hospital's
        salt = pseudonym.resolve_secret_salt(id_salt, ids="the patient IDs of --patients")
    prior = load_prior_splits(splits_from, salt)
    plans, rejects, notes = plan_images(root, channels=channels, crops_kind=crops, cells_table=cells,
                                        nuclear_channel=nuclear_channel)
    units, unread = plan_units(plans, patients=read_patients(patients), salt=salt, side=side, block=block,
                               crops_kind=crops, random_per_image=random_per_image, test_fraction=test_fraction,
                               val_fraction=val_fraction, seed=seed, workers=workers, progress=progress,
                               prior=prior, notes=notes)
    rejects = sorted(rejects + unread, key=lambda r: r.source_path)
    parameters = {
        "root": str(root), "channels": list(channels), "crops": crops, "cells": cells.name if cells else None,
        "nuclear_channel": nuclear_channel, "patients": patients.name if patients else None, "size": size,
        "side": side, "random_per_image": random_per_image, "block": block, "min_nucleus_area": min_nucleus_area,
        "test_fraction": test_fraction, "val_fraction": val_fraction, "seed": seed, "shard_size": shard_size,
        "id_salt_fingerprint": pseudonym.salt_fingerprint(salt), **prior.parameters(),
    }
    notes["split"] = "no official split: test and validation patients drawn with the seed (one patient per image " \
                     "unless --patients)"
    return IngestJob(source=SOURCE, out=out, units=units, process=IfProcess(size, side, channels, min_nucleus_area),
                     parameters=parameters, tool_version=tool_version, workers=workers,
                     max_samples_per_shard=shard_size, planning_rejects=rejects, notes=notes, overwrite=overwrite,
                     progress=progress)


def add_arguments(parser) -> None:
    """`ingest if` options beyond the common ones (ingest/cli.py adds those first)."""
    parser.add_argument("root", type=Path, help="folder of multi-channel TIFFs and/or folders of per-channel TIFFs")
    parser.add_argument("--channels", default=",".join(DAMA_CHANNELS),
                        help=f"channel names to keep, in this order (default: DAMA's {','.join(DAMA_CHANNELS)})")
    parser.add_argument("--crops", choices=CROP_CHOICES, default="cell")
    parser.add_argument("--cells", type=Path, default=None,
                        help="cell table for all images (default: <image>.csv beside each image, else nuclei)")
    parser.add_argument("--nuclear-channel", default="DAPI", help="channel nuclei are found on (default DAPI)")
    parser.add_argument("--min-nucleus-area", type=non_negative_int, default=20, help="smallest nucleus in pixels (default 20)")
    parser.add_argument("--side", type=positive_int, default=None, help="crop side in source pixels (default: --size)")
    parser.add_argument("--random-per-image", type=positive_int, default=16, help="random crops per image (default 16)")
    parser.add_argument("--block", type=positive_int, default=BLOCK, help=f"work unit side in pixels (default {BLOCK})")
    parser.add_argument("--patients", type=Path, default=None, help="CSV image,patient (default: a patient per image)")
    parser.add_argument("--test-fraction", type=held_out_fraction, default=0.2, help="patients drawn for test (default 0.2)")
    parser.set_defaults(size=128)  # DAMA pretrains on 128 x 128 x 7 crops (paper 004, Tables 2-7)


def job_from_args(args, common: dict[str, Any]) -> IngestJob:
    return build_job(root=args.root, channels=tuple(args.channels.split(",")), crops=args.crops, cells=args.cells,
                     nuclear_channel=args.nuclear_channel, min_nucleus_area=args.min_nucleus_area, side=args.side,
                     random_per_image=args.random_per_image, block=args.block, patients=args.patients,
                     test_fraction=args.test_fraction, **common)
