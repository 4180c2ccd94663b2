"""NIH ChestX-ray14: 112,120 frontal chest radiographs of 30,805 patients (8-bit 1024x1024 PNGs)
with 14 findings text-mined from their reports (Wang et al., CVPR 2017). MLVICX (paper 002 §IV-A)
pretrains on the official train_val list resized to 224 (`--crops whole`), PCRLv2 (paper 003
§4.3) on random crops resized to 224 (`--crops random`).

Quirks handled (each seen in the real files, see ../shared/data/README.md):
- the download spreads the PNGs over images_001/images/ ... images_012/images/; mirrors keep
  them in one flat folder: both are found under ROOT;
- the labels CSV is Data_Entry_2017_v2020.csv (preferred) or the older Data_Entry_2017.csv, maybe
  gzipped. Its header `OriginalImage[Width,Height]` is unquoted, so its comma splits it in two
  and the column spans two cells; the older file's header ends in a comma (one empty name). Columns
  are found by name, bracketed names joined back, never by position;
- BBox_List_2017.csv's header reads `Bbox [x,y,w,h],,,`: one name split over four cells plus
  empty ones; it spells Infiltration `Infiltrate`; its boxes are in the 1024-pixel space of the
  published PNGs (rescaled for a mirror of smaller PNGs, counted in the notes);
- the patient is the file-name prefix (00000001_000.png -> 00000001): it is the archive's raw
  patient ID, so it is pseudonymised and never written;
- a few PNGs are RGB or RGBA though gray: reduced to one channel (ingest.image_files), counted.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ingest import pseudonym, splits
from ingest.arguments import held_out_fraction, non_negative_float, positive_int
from ingest.crops import crop_padded, resize_to, square_context_box
from ingest.nih_tables import Entry, NihInputError, read_boxes, read_entries
from ingest.unit_inputs import read_unit_image
from ingest.prior_splits import load_prior_splits
from ingest.pipeline import EncodedSample, IngestJob, Reject, UnitOutput, WorkUnit
from ingest.radiograph_crops import RadiographCropParams, radiograph_crops
from shards import codecs, schema

SOURCE = "nih-cxr14"
CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")  # preference order; each may be .gz
BBOX_NAME = "BBox_List_2017.csv"
TRAIN_VAL_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"
IMAGE_GLOBS = ("images_*/images/*.png", "images/*.png", "*.png")
BBOX_SPACE = 1024  # the side of the published PNGs, in whose pixels BBox_List_2017.csv gives boxes
CROP_CHOICES = ("whole", "random", "lesion")


@dataclass(frozen=True)
class NihImage:
    """A work unit's payload: one PNG, its labels and (for lesion crops) its boxes."""

    image_file: str
    patient: str  # pseudonym
    split: str
    official_split: str | None
    view: str | None
    labels: dict[str, Any]
    extra: dict[str, Any]
    boxes: tuple[tuple[str, tuple[float, float, float, float]], ...]  # finding, (x, y, w, h) in BBOX_SPACE


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first of `names` found in ROOT or one folder down (the download nests nothing deeper)."""
    for name in names:
        hits = sorted(root.glob(name)) + sorted(root.glob(f"*/{name}"))
        if hits:
            return hits[0]
    return None


def find_images(root: Path) -> tuple[dict[str, Path], list[Reject]]:
    """File name -> PNG under ROOT (either layout), and a Reject for each second copy of a name."""
    found: dict[str, Path] = {}
    rejects = []
    for pattern in IMAGE_GLOBS:
        for path in sorted(root.glob(pattern)):
            if path.name in found:
                rejects.append(Reject(str(path.relative_to(root)), f"duplicate image: also at {found[path.name].relative_to(root)}"))
            else:
                found[path.name] = path
    return found, rejects


def read_official_lists(root: Path) -> dict[str, str] | None:
    """image -> 'train_val' / 'test' from the official list files, or None when they are absent."""
    train_val, test = _find(root, (TRAIN_VAL_LIST,)), _find(root, (TEST_LIST,))
    if train_val is None and test is None:
        return None
    if train_val is None or test is None:
        raise NihInputError(f"{root}: found only one of {TRAIN_VAL_LIST} and {TEST_LIST}; both are needed")
    official = {}
    for path, split in ((train_val, "train_val"), (test, "test")):
        official.update({line.strip(): split for line in path.read_text().splitlines() if line.strip()})
    return official


def assign_splits(listed: dict[str, str], official: dict[str, str] | None, *, test_fraction: float,
                  val_fraction: float, seed: int, keep: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """raw patient -> split, over every patient in the CSV (image -> patient), so a partial
    download gets the same split as the full one. With the official lists a patient with an image
    in test_list.txt goes wholly to test; without them test patients are drawn with the seed
    (keep: raw patient -> its split in an earlier set, --splits-from)."""
    if official is None:
        notes = {"split": f"seeded by patient (no {TRAIN_VAL_LIST} / {TEST_LIST} under ROOT): "
                          f"test_fraction {test_fraction}, seed {seed}; val carved by patient from train"}
        return splits.split_patients(listed.values(), test_fraction=test_fraction, val_fraction=val_fraction,
                                     seed=seed, keep=keep), notes
    test = {p for image, p in listed.items() if official.get(image) == "test"}
    train = {p for image, p in listed.items() if official.get(image) == "train_val"}
    val = splits.carve_validation(train - test, fraction=val_fraction, seed=seed, keep=keep)
    notes = {"split": f"official: {TRAIN_VAL_LIST} / {TEST_LIST}; val carved by patient from train_val",
             "patients_in_both_official_lists": len(train & test)}
    return {p: "test" if p in test else "val" if p in val else "train" for p in set(listed.values())}, notes


def plan_units(root: Path, listed: dict[str, str], entries: list[Entry], images: dict[str, Path],
               boxes: dict[str, list], official: dict[str, str] | None, patient_split: dict[str, str], *,
               csv_name: str, crops: str, salt: str) -> tuple[list[WorkUnit], list[Reject], dict[str, int]]:
    """One unit per labelled PNG on disk (with lesion crops: per boxed one), sorted by pseudonymous
    id; rejects for CSV rows without a file and files without a CSV row. With lesion crops only a
    boxed image is an input: a missing one without a box is counted, not rejected (a lesion job
    over images_001 alone would otherwise reject 110,000 images it never wanted)."""
    units = []
    not_on_disk = sorted(set(listed) - set(images))
    unwanted = {image for image in not_on_disk if image not in boxes} if crops == "lesion" else set()
    rejects = [Reject(image, f"file not found: {image} is in {csv_name} but not under ROOT")
               for image in not_on_disk if image not in unwanted]
    without_box = 0
    for entry in entries:
        rel = str(images[entry.image].relative_to(root))
        if official is not None and entry.image not in official:
            rejects.append(Reject(rel, f"no official split: in neither {TRAIN_VAL_LIST} nor {TEST_LIST}"))
            continue
        if crops == "lesion" and entry.image not in boxes:
            without_box += 1
            continue
        payload = NihImage(
            image_file=str(images[entry.image]), patient=pseudonym.pseudonym(salt, f"nih-cxr14:{entry.patient}"),
            split=patient_split[entry.patient], official_split=official[entry.image] if official else None,
            view=entry.view, labels=entry.labels, extra=entry.extra,
            boxes=tuple(boxes.get(entry.image, ())) if crops == "lesion" else (),
        )
        units.append(WorkUnit(pseudonym.pseudonym(salt, f"nih-cxr14-image:{entry.image}"), rel, payload))
    for name in sorted(set(images) - set(listed)):
        rejects.append(Reject(str(images[name].relative_to(root)), f"no labels: {name} is not in {csv_name}"))
    units.sort(key=lambda u: u.unit_id)
    notes = {"images_without_box": without_box, "images_without_box_not_on_disk": len(unwanted)}
    return units, rejects, (notes if crops == "lesion" else {})


def lesion_crops(pixels, boxes, *, margin: float, size: int) -> tuple[list[tuple[str, tuple, tuple, Any]], bool]:
    """One square context crop per box -> ([(finding, crop box, lesion box, (size, size) pixels)],
    whether the boxes were rescaled from the 1024-pixel space to this image's size)."""
    h, w = pixels.shape
    sx, sy = w / BBOX_SPACE, h / BBOX_SPACE
    made = []
    for finding, (x, y, bw, bh) in boxes:
        lesion = (math.floor(x * sx), math.floor(y * sy), math.ceil((x + bw) * sx), math.ceil((y + bh) * sy))
        box = square_context_box(lesion, margin=margin, min_side=size)
        made.append((finding, box, lesion, resize_to(crop_padded(pixels, box), size)))
    return made, (h, w) != (BBOX_SPACE, BBOX_SPACE)


@dataclass(frozen=True)
class NihProcess:
    """The per-image work, run in a worker process (picklable: plain fields only)."""

    crops: str
    params: RadiographCropParams
    margin: float
    seed: int

    def __call__(self, unit: WorkUnit) -> UnitOutput:
        image: NihImage = unit.payload
        out = UnitOutput()
        loaded = read_unit_image(image.image_file, unit.source_path, out)
        if loaded is None:
            return out
        pixels, fingerprint = loaded[0].pixels, loaded[1]
        made = []  # (key suffix, crop kind, box, labels, extra, pixels)
        if self.crops == "lesion":
            found, rescaled = lesion_crops(pixels, image.boxes, margin=self.margin, size=self.params.size)
            out.notes["images_with_boxes_rescaled"] += int(rescaled)
            for i, (finding, box, lesion, crop) in enumerate(found):
                made.append((f"lesion{i}", "lesion", box, {**image.labels, "box_finding": finding},
                             {**image.extra, "lesion_box": list(lesion)}, crop))
        else:
            found, notes = radiograph_crops(pixels, self.crops, self.params, random.Random(f"{self.seed}:{unit.unit_id}"))
            out.notes.update(notes)
            for i, crop in enumerate(found):
                suffix = "whole" if crop.kind == "whole" else f"random{i}"
                made.append((suffix, crop.kind, crop.box, image.labels, image.extra, crop.pixels))
        # Waited for last, so hashing the file overlaps the decoding and cropping above.
        common = dict(
            source=SOURCE, patient=image.patient, split=image.split, official_split=image.official_split,
            view=image.view, source_size=pixels.shape, channels=1, dtype=str(pixels.dtype),
            height=self.params.size, width=self.params.size, source_fingerprint=fingerprint.result(),
        )
        for suffix, kind, box, labels, extra, crop in made:
            meta = schema.SampleMeta(key=f"nih_{unit.unit_id}_{suffix}", crop_kind=kind, crop_box=box,
                                     labels=labels, extra=extra, **common)
            member, encoded = codecs.encode_pixels(crop)
            out.samples.append(EncodedSample.of(meta, {member: encoded}, crop))
        return out


def build_job(*, root: Path, out: Path, crops: str = "whole", csv_path: Path | None = None,
              bbox_csv: Path | None = None, size: int = 224, margin: float = 0.2, random_per_image: int = 4,
              random_side: int = 512, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0,
              workers: int = 1, shard_size: int = 1000, id_salt: str | None = None,
              splits_from: list[str] | None = None, overwrite: bool = False, progress: bool = True,
              tool_version: str = "0+unknown") -> IngestJob:
    """Plan an `ingest nih-cxr14` job: read the labels (and boxes), find every PNG, assign splits."""
    if crops not in CROP_CHOICES:
        raise NihInputError(f"--crops must be one of {CROP_CHOICES}, got {crops!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise NihInputError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if not root.is_dir():
        raise NihInputError(f"{root}: not a folder")
    for option, given in (("--csv", csv_path), ("--bbox-csv", bbox_csv)):
        if given is not None and not given.is_file():
            raise NihInputError(f"{option} {given}: file not found")
    csv_path = csv_path or _find(root, tuple(n + gz for n in CSV_NAMES for gz in ("", ".gz")))
    if csv_path is None:
        raise NihInputError(f"{root}: no {' or '.join(CSV_NAMES)} (or .csv.gz) in ROOT or one folder down; pass --csv")
    boxes: dict[str, list] = {}
    box_rejects: list[Reject] = []
    if crops == "lesion":
        bbox_csv = bbox_csv or _find(root, (BBOX_NAME, BBOX_NAME + ".gz"))
        if bbox_csv is None:
            raise NihInputError(f"{root}: --crops lesion needs {BBOX_NAME} in ROOT or one folder down; pass --bbox-csv")
        boxes, box_rejects = read_boxes(bbox_csv)
    salt = pseudonym.resolve_salt(id_salt)
    prior = load_prior_splits(splits_from, salt)
    images, duplicates = find_images(root)
    listed, entries, row_rejects = read_entries(csv_path, set(images))
    official = read_official_lists(root)
    keep = prior.keep(set(listed.values()), "nih-cxr14:")
    patient_split, notes = assign_splits(listed, official, test_fraction=test_fraction,
                                         val_fraction=val_fraction, seed=seed, keep=keep)
    notes.update(prior.notes(keep, patient_split, SOURCE))
    units, plan_rejects, plan_notes = plan_units(root, listed, entries, images, boxes, official, patient_split,
                                                 csv_name=csv_path.name, crops=crops, salt=salt)
    params = RadiographCropParams(size=size, random_per_image=random_per_image, random_side=random_side)
    parameters = {
        "root": str(root), "csv": csv_path.name, "bbox_csv": bbox_csv.name if crops == "lesion" else None,
        "crops": crops, "margin": margin, "split": "official" if official is not None else "seeded",
        "test_fraction": test_fraction, "val_fraction": val_fraction, "seed": seed, "shard_size": shard_size,
        **asdict(params), "id_salt_fingerprint": pseudonym.salt_fingerprint(salt), **prior.parameters(),
    }
    return IngestJob(
        source=SOURCE, out=out, units=units, process=NihProcess(crops, params, margin, seed),
        parameters=parameters, tool_version=tool_version, workers=workers, max_samples_per_shard=shard_size,
        planning_rejects=row_rejects + box_rejects + duplicates + plan_rejects, notes={**notes, **plan_notes},
        overwrite=overwrite, progress=progress,
    )


def add_arguments(parser) -> None:
    """`ingest nih-cxr14` options beyond the common ones (ingest/cli.py adds those)."""
    parser.add_argument("root", type=Path, help="NIH ChestX-ray14 folder: images_0NN/images/*.png (or flat PNGs) and the labels CSV")
    parser.add_argument("--crops", choices=CROP_CHOICES, default="whole",
                        help="whole image, random square crops, or lesion crops from BBox_List_2017.csv (default whole)")
    parser.add_argument("--csv", type=Path, default=None,
                        help="labels CSV (default: Data_Entry_2017_v2020.csv, else Data_Entry_2017.csv, maybe .gz, under ROOT)")
    parser.add_argument("--bbox-csv", type=Path, default=None, help="box list for --crops lesion (default: BBox_List_2017.csv under ROOT)")
    parser.add_argument("--margin", type=non_negative_float, default=0.2, help="lesion context per side, fraction of the box (default 0.2)")
    parser.add_argument("--random-per-image", type=positive_int, default=4, help="random crops per image (default 4)")
    parser.add_argument("--random-side", type=positive_int, default=512, help="random crop side in source pixels (default 512)")
    parser.add_argument("--test-fraction", type=held_out_fraction, default=0.2,
                        help="test patients when the official train_val_list.txt/test_list.txt are absent (default 0.2)")


def job_from_args(args, common: dict[str, Any]) -> IngestJob:
    return build_job(root=args.root, crops=args.crops, csv_path=args.csv, bbox_csv=args.bbox_csv, margin=args.margin,
                     random_per_image=args.random_per_image, random_side=args.random_side,
                     test_fraction=args.test_fraction, **common)
