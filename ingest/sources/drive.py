"""DRIVE (Digital Retinal Images for Vessel Extraction): fundus photographs with vessel and
field-of-view masks, as distributed:

    DRIVE/training/images/21_training.tif   training/1st_manual/21_manual1.gif   training/mask/21_training_mask.gif
    DRIVE/test/images/01_test.tif           test/1st_manual/01_manual1.gif       test/mask/01_test_mask.gif
                                            test/2nd_manual/01_manual2.gif

Quirks handled (each seen in the real files, see ../shared/data/README.md):
- images are LZW-compressed RGB TIFFs (565 x 584): decoded with Pillow, as the GIF masks are;
- masks and manual labels are GIFs, which OpenCV cannot read: decoded with Pillow. Most hold 0/255
  grey levels, but `2nd_manual/01_manual2.gif` is palette-indexed with indices 0/1. Every mask is
  read through its palette to grey, checked to be two-valued, and stored as 0/255 uint8 (the
  `mask.png` and `fov.png` members; 0 = background / outside the field of view), as CBIS masks are.

Samples: the RGB image (3-channel uint8 PNG), the vessel mask of the chosen observer (`mask.png`)
and the field-of-view mask (`fov.png`). Every DRIVE image is its own patient: the official training
set gives train (validation carved by image), the official test set gives test. An image whose FOV
mask or chosen manual is missing is rejected, naming the missing file (DRIVE ships 1st_manual for
both sets, 2nd_manual for the test set only).
"""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ingest import crops, pseudonym, splits, tissue
from ingest.arguments import least_share, positive_int
from ingest.pipeline import EncodedSample, IngestError, IngestJob, Reject, UnitOutput, WorkUnit
from ingest.prior_splits import NO_PRIOR, PriorSplits, load_prior_splits
from ingest.unit_inputs import read_input
from shards import codecs, schema

SOURCE = "drive"
SPLIT_FOLDERS = {"training": "train", "test": "test"}
CROP_CHOICES = ("whole", "random")
MANUALS = ("1st", "2nd")
# TOWER (paper 001, §4.1) resizes DRIVE images to 512 x 512; random patches keep the native scale.
DEFAULT_SIZE = {"whole": 512, "random": 64}
CHANNEL_NAMES = ("red", "green", "blue")
IMAGE_RE = re.compile(r"^(?P<number>\d+)_(?P<split>training|test)\.tiff?$", re.IGNORECASE)


class DriveInputError(IngestError):
    """The DRIVE root cannot be used (no training/ or test/ folder, bad options)."""


class MaskError(ValueError):
    """A GIF mask that cannot be used; str() is 'reason kind: detail'."""


@dataclass(frozen=True)
class DriveImage:
    """A work unit's payload: one fundus photograph and its masks, paths relative to the root."""

    image: str
    manual: str
    fov: str
    has_second_manual: bool
    patient: str  # pseudonym
    split: str
    official_split: str


def find_drive_root(root: Path) -> Path:
    """ROOT is the DRIVE folder (holding training/ and/or test/) or its parent."""
    for candidate in (root, root / "DRIVE"):
        if any((candidate / folder / "images").is_dir() for folder in SPLIT_FOLDERS):
            return candidate
    raise DriveInputError(f"{root}: neither it nor {root / 'DRIVE'} holds training/images or test/images")


def manual_path(folder: str, number: str, manual: str) -> str:
    return f"{folder}/{manual}_manual/{number}_manual{manual[0]}.gif"


def plan_units(root: Path, *, manual: str, salt: str, val_fraction: float, seed: int,
               prior: PriorSplits = NO_PRIOR) -> tuple[list[WorkUnit], list[Reject], dict[str, int]]:
    """Every image under <split>/images with its masks resolved; missing files become rejects.
    Also the card's notes on `prior`'s patients (--splits-from)."""
    found, rejects = [], []
    for folder, official in SPLIT_FOLDERS.items():
        images = root / folder / "images"
        for path in sorted(images.iterdir()) if images.is_dir() else []:
            if not path.is_file():
                continue
            rel = f"{folder}/images/{path.name}"
            match = IMAGE_RE.match(path.name)
            if match is None or match["split"].lower() != folder:
                rejects.append(Reject(rel, f"unexpected file name: expected NN_{folder}.tif"))
                continue
            number = match["number"]
            fov = f"{folder}/mask/{number}_{folder}_mask.gif"
            vessels = manual_path(folder, number, manual)
            missing = [(f, what) for f, what in ((fov, "FOV mask"), (vessels, f"{manual} manual vessel mask"))
                       if not (root / f).is_file()]
            if missing:
                rejects.extend(Reject(f, f"missing {what}: {f} not found for {rel}") for f, what in missing)
                continue
            second = (root / manual_path(folder, number, "2nd")).is_file()
            found.append((rel, vessels, fov, second, official, f"drive:{folder}/{number}"))
    train_patients = {patient for *_, official, patient in found if official == "train"}
    keep = prior.keep({p for *_, p in found}, "")  # the raw IDs carry their "drive:" prefix
    val = splits.carve_validation(train_patients, fraction=val_fraction, seed=seed, keep=keep)
    units, assigned = [], {}
    for rel, vessels, fov, second, official, patient in found:
        split = assigned[patient] = "test" if official == "test" else ("val" if patient in val else "train")
        payload = DriveImage(rel, vessels, fov, second, pseudonym.pseudonym(salt, patient), split, official)
        units.append(WorkUnit(pseudonym.pseudonym(salt, f"drive-image:{rel}"), rel, payload))
    units.sort(key=lambda u: u.unit_id)
    return units, rejects, prior.notes(keep, assigned, SOURCE)


def read_gif_mask(path: Path, name: str, shape: tuple[int, int]) -> np.ndarray:
    """A DRIVE GIF (grey 0/255 or palette 0/1) -> (H, W) uint8 0/255. The palette is applied first,
    so index 1 of a black/white palette is white whatever its index value."""
    try:
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"))
    except UnidentifiedImageError:
        raise MaskError(f"undecodable GIF: {name}: Pillow cannot identify the file") from None
    except OSError as exc:
        raise MaskError(f"undecodable GIF: {name}: {exc}") from None
    if grey.shape != shape:
        raise MaskError(f"mask size mismatch: {name} is {grey.shape[1]}x{grey.shape[0]}, "
                        f"the image {shape[1]}x{shape[0]}")
    # Two levels at most: the extremes, and every pixel at one of them. minMaxLoc and two compares
    # take ~75 us for a 584 x 565 mask, the 256-bin histogram ~375 (np.unique sorts: 20x slower);
    # the histogram counts the levels only for the error message.
    low, high, _, _ = cv2.minMaxLoc(grey)
    foreground = cv2.compare(grey, high, cv2.CMP_EQ)
    if low != high and cv2.countNonZero(foreground) + cv2.countNonZero(cv2.compare(grey, low, cv2.CMP_EQ)) != grey.size:
        levels = np.count_nonzero(cv2.calcHist([grey], [0], None, [256], [0, 256]))
        raise MaskError(f"not a binary mask: {name} holds {levels} grey levels")
    # The brighter of the two levels is the foreground: 255 of 0/255, 253 of the palette's 3/253,
    # 1 of an unpaletted 0/1.
    if low != high:
        return foreground
    if high <= 127:
        raise MaskError(f"empty mask: {name} marks no pixel")
    return np.full(shape, 255, np.uint8)


def vessel_fraction(vessels: np.ndarray, fov: np.ndarray) -> float | None:
    """The label of a DRIVE sample (DRIVE has no per-image class): the fraction of the crop's
    field of view that the manual marks as vessel, on the stored masks, 4 decimals."""
    inside = cv2.countNonZero(fov)
    # The pixelwise minimum is non-zero exactly where both masks are: 50x faster than a boolean index.
    return round(cv2.countNonZero(cv2.min(vessels, fov)) / inside, 4) if inside else None


@dataclass(frozen=True)
class DriveProcess:
    """The per-image work, run in a worker process (picklable: plain fields only)."""

    root: str
    crops: str
    size: int
    random_per_image: int
    random_side: int
    min_fov: float
    seed: int
    manual: str

    def __call__(self, unit: WorkUnit) -> UnitOutput:
        image: DriveImage = unit.payload
        root = Path(self.root)
        out = UnitOutput()
        data, fingerprint = read_input(root / image.image, out)
        try:
            with Image.open(io.BytesIO(data)) as img:
                mode = img.mode
                rgb = np.asarray(img) if mode == "RGB" else None
        except UnidentifiedImageError:
            out.rejects.append(Reject(image.image, "undecodable TIFF: Pillow cannot identify the file"))
            return out
        except OSError as exc:
            out.rejects.append(Reject(image.image, f"undecodable TIFF: {exc}"))
            return out
        if rgb is None:
            out.rejects.append(Reject(image.image, f"not an RGB fundus photograph: Pillow mode {mode}"))
            return out
        try:
            vessels = read_gif_mask(root / image.manual, image.manual, rgb.shape[:2])
            fov = read_gif_mask(root / image.fov, image.fov, rgb.shape[:2])
        except MaskError as exc:
            out.rejects.append(Reject(image.image, str(exc)))
            return out
        if self.crops == "whole":
            h, w = rgb.shape[:2]
            boxes = [crops.square_context_box((0, 0, w, h), margin=0.0, min_side=0)]
        else:
            rng = random.Random(f"{self.seed}:{unit.unit_id}")
            boxes = tissue.random_tissue_boxes(fov > 0, np.zeros(fov.shape, bool), 1.0, count=self.random_per_image,
                                               side=self.random_side, min_tissue=self.min_fov, rng=rng,
                                               image_shape=fov.shape)
            out.notes["random_crop_shortfall"] += self.random_per_image - len(boxes)
        common = dict(
            source=SOURCE, patient=image.patient, split=image.split, official_split=image.official_split,
            crop_kind=self.crops, source_size=rgb.shape[:2], height=self.size, width=self.size, channels=3,
            dtype="uint8", channel_names=CHANNEL_NAMES, has_mask=True, has_fov=True,
            extra={"manual": self.manual, "has_second_manual": image.has_second_manual},
            source_fingerprint=fingerprint.result(),
        )
        for i, box in enumerate(boxes):
            key = f"drive_{unit.unit_id}_{self.crops}{i if self.crops == 'random' else ''}"
            pixels, vessel_crop, fov_crop = (self._crop(layer, box, nearest=layer is not rgb)
                                             for layer in (rgb, vessels, fov))
            labels = {"vessel_fraction": vessel_fraction(vessel_crop, fov_crop)}
            meta = schema.SampleMeta(key=key, crop_box=box, labels=labels, **common)
            out.samples.append(_encode(meta, pixels, vessel_crop, fov_crop))
        return out

    def _crop(self, layer: np.ndarray, box: crops.Box, *, nearest: bool) -> np.ndarray:
        return crops.resize_to(crops.crop_padded(layer, box), self.size, nearest=nearest)


def _encode(meta: schema.SampleMeta, pixels: np.ndarray, vessels: np.ndarray, fov: np.ndarray) -> EncodedSample:
    member, data = codecs.encode_pixels(pixels)
    members = {member: data, schema.MASK_PNG: codecs.encode_mask(vessels), schema.FOV_PNG: codecs.encode_mask(fov)}
    return EncodedSample.of(meta, members, pixels)


def build_job(*, root: Path, out: Path, crops: str = "whole", manual: str = "1st", size: int | None = None,
              random_per_image: int = 16, random_side: int | None = None, min_fov: float = 0.9,
              val_fraction: float = 0.1, seed: int = 0, workers: int = 1, shard_size: int = 1000,
              id_salt: str | None = None, splits_from: list[str] | None = None, overwrite: bool = False,
              progress: bool = True, tool_version: str = "0+unknown") -> IngestJob:
    """Plan an `ingest drive` job. size None: 512 for whole images (TOWER), 64 for random patches;
    random_side None: the output size (patches at the native scale)."""
    if crops not in CROP_CHOICES:
        raise DriveInputError(f"--crops must be one of {CROP_CHOICES}, got {crops!r}")
    if manual not in MANUALS:
        raise DriveInputError(f"--manual must be one of {MANUALS}, got {manual!r}")
    if not root.is_dir():
        raise DriveInputError(f"{root}: not a folder")
    size = size or DEFAULT_SIZE[crops]
    random_side = random_side or size
    if size < 1 or random_side < 1 or random_per_image < 0 or not 0.0 <= min_fov <= 1.0:
        raise DriveInputError("--size and --random-side must be positive, --random-per-image >= 0, --min-fov in [0, 1]")
    drive_root = find_drive_root(root)
    salt = pseudonym.resolve_salt(id_salt)
    prior = load_prior_splits(splits_from, salt)
    units, rejects, prior_notes = plan_units(drive_root, manual=manual, salt=salt, val_fraction=val_fraction,
                                             seed=seed, prior=prior)
    parameters = {
        "root": str(root), "crops": crops, "manual": manual, "size": size, "val_fraction": val_fraction,
        "seed": seed, "shard_size": shard_size, "mask_values": "0/255",
        "id_salt_fingerprint": pseudonym.salt_fingerprint(salt), **prior.parameters(),
    }
    if crops == "random":
        parameters.update(random_per_image=random_per_image, random_side=random_side, min_fov=min_fov)
    notes = {"split": "official training -> train (validation carved by image: one patient per image), "
                      "official test -> test", **prior_notes}
    process = DriveProcess(str(drive_root.resolve()), crops, size, random_per_image, random_side, min_fov, seed, manual)
    return IngestJob(source=SOURCE, out=out, units=units, process=process, parameters=parameters,
                     tool_version=tool_version, workers=workers, max_samples_per_shard=shard_size,
                     planning_rejects=rejects, notes=notes, overwrite=overwrite, progress=progress)


def add_arguments(parser) -> None:
    """`ingest drive` options beyond the common ones (ingest/cli.py adds those first)."""
    parser.add_argument("root", type=Path, help="the DRIVE folder (training/, test/) or its parent")
    parser.add_argument("--crops", choices=CROP_CHOICES, default="whole",
                        help="whole: the image padded to square and resized to --size (default 512, as TOWER); "
                             "random: patches inside the FOV (--size default 64)")
    parser.add_argument("--manual", choices=MANUALS, default="1st",
                        help="which observer's vessel labels become mask.png (2nd exists for the test set only)")
    parser.add_argument("--random-per-image", type=positive_int, default=16, help="random patches per image (default 16)")
    parser.add_argument("--random-side", type=positive_int, default=None,
                        help="random patch side in source pixels (default: --size, no resampling)")
    parser.add_argument("--min-fov", type=least_share, default=0.9,
                        help="least fraction of a random patch inside the field of view (default 0.9)")
    parser.set_defaults(size=None)  # 512 for whole images (TOWER), 64 for random patches


def job_from_args(args, common: dict[str, Any]) -> IngestJob:
    return build_job(root=args.root, crops=args.crops, manual=args.manual, random_per_image=args.random_per_image,
                     random_side=args.random_side, min_fov=args.min_fov, **common)
