"""Any unlabeled DICOM archive (a hospital export, RSNA, SIIM): every decodable image becomes samples.

The archive is a folder or a prefix in an object store (`ingest dicom s3://bucket/archive?...`).
Files are found by content, not name (ingest.dicom_tree): Part-10 files and bare ones alike,
DICOMDIRs, DICOM files without pixels (reports, presentation states) and non-DICOM files are
counted in the card's notes, never ingested. The tree is walked and planned from headers alone;
pixels are decoded in the workers, one file per work unit. The plan's rows and the manifest's are
spilled to disk as they are made (ingest.dicom_plan, shards.manifest), so what the job holds in
memory grows with its patients, not with its files, and never holds pixels.

Rules (each also written into the card's notes):
- patients: PatientID; a file without one counts as one pseudonymous patient per
  StudyInstanceUID, a file without either as a patient of its own. PatientID, StudyInstanceUID and
  SeriesInstanceUID never reach the output: samples carry keyed pseudonyms (`patient`,
  `extra.study`, `extra.series`);
- splits: no official split, so a seeded split by patient (--test-fraction), then validation
  carved from the rest by patient;
- frames (--frames): `middle` by default, one sample per file: a cine loop's frames are near
  duplicates, and a tomosynthesis stack's middle slice is its most typical; `first`; `all`, one
  sample per frame, when the frames are the data (multi-frame CT/MR);
- one shard set, one pixel format (--color): `gray` (default) makes a colour image grayscale
  (ITU-R BT.601 luma) so everything is 1-channel uint16 on decode_dicom's 0..65535 scale;
  `reject` rejects colour images; `rgb` makes a 3-channel uint8 set and rejects grayscale images;
- identifying pixels (--burned-in): a file whose header says Burned In Annotation (0028,0301)
  YES, text such as the patient's name or dates drawn into the pixels (ultrasound, secondary
  captures, scanned documents), or Recognizable Visual Features (0028,0302) YES (a face), is a
  reject by default: pseudonyms in the header do not hide what the pixels show. `keep` ingests
  them (for an archive already scrubbed of it). Files that do not say are kept and counted;
- crops (--crops): `whole` pads the image to a square with 0 (air), centred, then resizes it to
  --size, so the aspect ratio is kept and crop_box is that padded square in source pixels;
  `random` takes --random-per-image squares of --random-side source pixels inside the foreground
  (the Otsu body mask of ingest.tissue, which works on any radiograph).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ingest import crops, dicom_tree, pseudonym, tissue
from ingest.arguments import held_out_fraction, least_share, positive_int
from ingest.dicom_pixels import UINT16_MAX
from ingest.unit_inputs import decode_unit_dicom, read_input
from ingest.pipeline import EncodedSample, IngestError, IngestJob, Reject, UnitOutput, WorkUnit
from ingest.dicom_plan import SOURCE, ArchiveImage, plan_archive, unreadable
from ingest.prior_splits import load_prior_splits
from shards import codecs, schema, storage

CROP_CHOICES = ("whole", "random")
FRAME_CHOICES = ("middle", "first", "all")
COLOR_CHOICES = ("gray", "reject", "rgb")
BURNED_IN_CHOICES = ("reject", "keep")


def luma16(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint16 on decode_dicom's scale (BT.601 luma x 257, as 8-bit
    monochrome is mapped)."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * np.uint16(UINT16_MAX // 255)


@dataclass(frozen=True)
class ArchiveProcess:
    """The per-file work, run in a worker process (picklable: plain fields only)."""

    crops: str
    color: str
    size: int
    random_per_image: int
    random_side: int
    min_foreground: float
    seed: int

    def __call__(self, unit: WorkUnit) -> UnitOutput:
        image: ArchiveImage = unit.payload
        out = UnitOutput()
        try:
            data, fingerprint = read_input(image.path, out)
        except OSError as exc:  # gone since the plan, or the store failed after its retries
            out.rejects.append(Reject(unit.source_path, unreadable(exc)))
            return out
        source = data if image.bare_syntax is None else dicom_tree.part10_bytes(data, image.bare_syntax)
        decoded = decode_unit_dicom(source, unit.source_path, out, frame=image.frame)
        if decoded is None:
            return out
        colour = decoded.pixels.dtype == np.uint8
        if colour and self.color == "reject":
            out.rejects.append(Reject(unit.source_path, f"colour image: {decoded.photometric} in a grayscale set (--color reject)"))
            return out
        if not colour and self.color == "rgb":
            out.rejects.append(Reject(unit.source_path, f"grayscale image: {decoded.photometric} in a colour set (--color rgb)"))
            return out
        if image.frame is None and decoded.frames > 1:
            frames = list(enumerate(decoded.pixels))
        else:
            frames = [(image.frame or 0, decoded.pixels)]
        made = []
        for index, pixels in frames:
            gray = luma16(pixels) if colour else pixels
            if colour and self.color == "gray":
                pixels = gray
                out.notes["colour_frames_made_gray"] += 1
            extra = {"study": image.study, "series": image.series, "frame": index, "frames": decoded.frames,
                     "photometric": decoded.photometric, "bits_stored": decoded.bits_stored}
            for kind, i, crop, box in self._crops(pixels, gray, random.Random(f"{self.seed}:{unit.unit_id}:{index}"), out):
                made.append((dict(key=f"dicom_{unit.unit_id}_f{index}_{kind}{i}", crop_kind=kind, crop_box=box,
                                  source_size=gray.shape, extra=extra), crop))
        common = dict(
            source=SOURCE, patient=image.patient, split=image.split, laterality=decoded.laterality,
            view=decoded.view, height=self.size, width=self.size, channels=3 if self.color == "rgb" else 1,
            dtype="uint8" if self.color == "rgb" else "uint16", labels={"modality": decoded.modality},
            pixel_spacing_mm=decoded.pixel_spacing_mm, source_fingerprint=fingerprint.result(),
        )
        out.samples.extend(_encode(schema.SampleMeta(**fields, **common), crop) for fields, crop in made)
        return out

    def _crops(self, pixels: np.ndarray, gray: np.ndarray, rng: random.Random, out: UnitOutput):
        """-> [(crop kind, index, (size, size[, 3]) pixels, box in source pixels)]."""
        h, w = gray.shape
        if self.crops == "whole":
            box = crops.square_context_box((0, 0, w, h), margin=0.0, min_side=0)
            return [("whole", "", crops.resize_to(crops.crop_padded(pixels, box), self.size), box)]
        foreground, scale = tissue.tissue_mask(gray)
        boxes = tissue.random_tissue_boxes(
            foreground, np.zeros_like(foreground), scale, count=self.random_per_image,
            side=min(self.random_side, h, w), min_tissue=self.min_foreground, rng=rng, image_shape=(h, w),
        )
        out.notes["random_crop_shortfall"] += self.random_per_image - len(boxes)
        return [("random", i, crops.resize_to(crops.crop_padded(pixels, box), self.size), box) for i, box in enumerate(boxes)]


def _encode(meta: schema.SampleMeta, pixels: np.ndarray) -> EncodedSample:
    member, data = codecs.encode_pixels(pixels)
    return EncodedSample.of(meta, {member: data}, pixels)


def parse_modalities(text: str | None) -> tuple[str, ...] | None:
    """'MG, cr,DX' -> ('CR', 'DX', 'MG'); None or '' -> None (every modality)."""
    if not text:
        return None
    found = tuple(sorted({part.strip().upper() for part in text.split(",") if part.strip()}))
    return found or None


def build_job(*, root: Path | str, out: Path, crops: str = "whole", frames: str = "middle", color: str = "gray",
              modalities: tuple[str, ...] | None = None, size: int = 224, random_per_image: int = 4,
              random_side: int = 512, min_foreground: float = 0.9, test_fraction: float = 0.1,
              val_fraction: float = 0.1, seed: int = 0, workers: int = 1, shard_size: int = 1000,
              id_salt: str | None = None, splits_from: list[str] | None = None, overwrite: bool = False,
              progress: bool = True, tool_version: str = "0+unknown", burned_in: str = "reject") -> IngestJob:
    """Plan an `ingest dicom` job: walk the tree, read headers, split by patient."""
    for name, value, choices in (("--crops", crops, CROP_CHOICES), ("--frames", frames, FRAME_CHOICES),
                                 ("--color", color, COLOR_CHOICES), ("--burned-in", burned_in, BURNED_IN_CHOICES)):
        if value not in choices:
            raise IngestError(f"{name} must be one of {choices}, got {value!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise IngestError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    in_store = storage.is_uri(root)
    if not in_store and not Path(root).is_dir():
        raise IngestError(f"{root}: not a folder")
    salt = pseudonym.resolve_secret_salt(id_salt)
    prior = load_prior_splits(splits_from, salt)
    try:
        plan = plan_archive(root, skip=None if in_store else out, salt=salt, modalities=modalities, frames=frames,
                            test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, progress=progress,
                            burned_in=burned_in, prior=prior)
    except OSError as exc:  # the store's listing failed (a file that cannot be read is a reject)
        raise IngestError(str(exc)) from exc
    if not plan.units and not plan.rejects:
        wanted = f" of modality {', '.join(modalities)}" if modalities else ""
        raise IngestError(f"{root}: no DICOM images{wanted} found ({plan.notes.get('files_seen', 0)} files looked at)")
    notes = dict(plan.notes, color={"gray": "colour images made grayscale (BT.601 luma), 1-channel uint16",
                                    "reject": "colour images rejected, 1-channel uint16",
                                    "rgb": "3-channel uint8 set, grayscale images rejected"}[color])
    parameters = {
        "root": str(root), "crops": crops, "frames": frames, "color": color, "burned_in": burned_in,
        "modalities": list(modalities) if modalities else None, "size": size, "test_fraction": test_fraction,
        "val_fraction": val_fraction, "seed": seed, "shard_size": shard_size,
        "id_salt_fingerprint": pseudonym.salt_fingerprint(salt), **prior.parameters(),
    }
    if crops == "random":
        parameters.update(random_per_image=random_per_image, random_side=random_side, min_foreground=min_foreground)
    process = ArchiveProcess(crops=crops, color=color, size=size, random_per_image=random_per_image,
                             random_side=random_side, min_foreground=min_foreground, seed=seed)
    return IngestJob(
        source=SOURCE, out=out, units=plan.units, process=process, parameters=parameters,
        tool_version=tool_version, workers=workers, max_samples_per_shard=shard_size,
        planning_rejects=plan.rejects, notes=notes, overwrite=overwrite, progress=progress,
    )


def _root(text: str) -> Path | str:
    """A folder, or a URI kept as it is (a Path would fold s3://b into s3:/b)."""
    return text if storage.is_uri(text) else Path(text)


def add_arguments(parser) -> None:
    """`ingest dicom` options beyond the common ones (ingest/cli.py adds those)."""
    parser.add_argument("root", type=_root, help="folder holding DICOM files at any depth, named anyhow; or a "
                        "prefix in an object store, s3://bucket/archive (see shards.storage for endpoints)")
    parser.add_argument("--crops", choices=CROP_CHOICES, default="whole",
                        help="whole: image padded to a square and resized (default); random: crops inside the foreground")
    parser.add_argument("--frames", choices=FRAME_CHOICES, default="middle",
                        help="multi-frame files: the middle frame (default), the first, or one sample per frame")
    parser.add_argument("--color", choices=COLOR_CHOICES, default="gray",
                        help="colour images: make them grayscale (default), reject them, or make an RGB set (rgb)")
    parser.add_argument("--modality", default=None, help="comma list of modalities to keep, e.g. MG,CR,DX (default: all)")
    parser.add_argument("--burned-in", choices=BURNED_IN_CHOICES, default="reject",
                        help="files whose header says their pixels identify the patient (Burned In Annotation or "
                             "Recognizable Visual Features YES): rejected (default), or kept")
    parser.add_argument("--test-fraction", type=held_out_fraction, default=0.1, help="fraction of patients in test (default 0.1)")
    parser.add_argument("--random-per-image", type=positive_int, default=4, help="random crops per image (default 4)")
    parser.add_argument("--random-side", type=positive_int, default=512, help="random crop side in source pixels (default 512)")
    parser.add_argument("--min-foreground", type=least_share, default=0.9,
                        help="least foreground (body) fraction of a random crop (default 0.9)")


def job_from_args(args, common: dict[str, Any]) -> IngestJob:
    return build_job(root=args.root, crops=args.crops, frames=args.frames, color=args.color, burned_in=args.burned_in,
                     modalities=parse_modalities(args.modality), test_fraction=args.test_fraction,
                     random_per_image=args.random_per_image, random_side=args.random_side,
                     min_foreground=args.min_foreground, **common)
