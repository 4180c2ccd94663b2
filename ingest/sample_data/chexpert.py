"""A small CheXpert tree on disk, made-up pixels in the real layout, for tests and benchmarks.

No CheXpert file can be had here (its licence forbids redistribution), so this writes what a
download holds: `CheXpert-v1.0-small/` with `train.csv` and `valid.csv` under the real header,
Path cells that repeat the folder name (`CheXpert-v1.0-small/train/patient00001/study1/
view1_frontal.jpg`), and 8-bit grayscale JPEGs at those paths, portrait as the films are. The first
train row is the real first row of train.csv (as quoted in many public readers). Train labels mix
1.0, 0.0, -1.0 and blanks; valid.csv (radiologist labels) holds only 1.0 and 0.0; valid patients
are numbered from 64541, as in the real set. Studies have a frontal view and sometimes a lateral
one (AP/PA blank, as in the real files).

`with_defects` adds a row whose JPEG is missing, a truncated JPEG, a Path that climbs out of the
folder and a row with an impossible label value; `colour` saves one frontal view as a 3-channel
JPEG. Same arguments, same bytes (libjpeg output depends only on pixels and quality).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ingest.sample_data.nih_cxr14 import draw_chest
from ingest.sources.chexpert import OBSERVATIONS

HEADER = ",".join(("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS))
REAL_FIRST_ROW = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0"
FIRST_VALID_PATIENT = 64541


@dataclass(frozen=True)
class ChexpertSample:
    root: Path  # the dataset folder, e.g. <parent>/CheXpert-v1.0-small
    train_rows: int
    valid_rows: int
    frontal: int  # rows of frontal views (defect rows included)
    lateral: int
    defects: dict[str, str] = field(default_factory=dict)  # defect kind -> its Path cell
    colour: str | None = None  # Path cell of the 3-channel JPEG


def _labels(rng: random.Random, valid: bool) -> list[str]:
    if valid:
        return [rng.choice(("1.0", "0.0", "0.0")) for _ in OBSERVATIONS]
    return [rng.choice(("", "", "1.0", "0.0", "-1.0")) for _ in OBSERVATIONS]


def _study_rows(folder: str, split: str, patient: int, rng: random.Random) -> list[tuple[str, list[str]]]:
    """(Path cell, the other cells) for every view of every study of one patient."""
    rows = []
    sex, age = rng.choice(("Female", "Male")), str(rng.randint(18, 90))
    for study in range(1, rng.randint(1, 2) + 1):
        stem = f"{folder}/{split}/patient{patient:05d}/study{study}"
        rows.append((f"{stem}/view1_frontal.jpg", [sex, age, "Frontal", rng.choice(("AP", "PA"))]))
        if rng.random() < 0.5:
            rows.append((f"{stem}/view2_lateral.jpg", [sex, age, "Lateral", ""]))
    return [(path, cells + _labels(rng, split == "valid")) for path, cells in rows]


def make_chexpert_sample(parent: Path, *, train_patients: int = 6, valid_patients: int = 2, seed: int = 0,
                         image_shape: tuple[int, int] = (390, 320), folder: str = "CheXpert-v1.0-small",
                         colour: bool = True, with_defects: bool = False) -> ChexpertSample:
    """Write `parent/folder/` (created); see the module docstring. image_shape is (H, W)."""
    root = parent / folder
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train = [row for p in range(1, train_patients + 1) for row in _study_rows(folder, "train", p, rng)]
    first_cells = REAL_FIRST_ROW.split(",")
    train[0] = (first_cells[0], first_cells[1:])
    valid = [row for p in range(FIRST_VALID_PATIENT, FIRST_VALID_PATIENT + valid_patients)
             for row in _study_rows(folder, "valid", p, rng)]
    defects: dict[str, str] = {}
    if with_defects:
        extra = train_patients + 1
        defects = {
            "missing_file": f"{folder}/train/patient{extra:05d}/study1/view1_frontal.jpg",
            "corrupt_jpeg": f"{folder}/train/patient{extra:05d}/study2/view1_frontal.jpg",
            "outside_root": f"{folder}/train/../../outside/patient{extra:05d}/study1/view1_frontal.jpg",
            "bad_label": f"{folder}/train/patient{extra:05d}/study3/view1_frontal.jpg",
        }
        base = ["Male", "50", "Frontal", "PA"] + ["0.0"] * len(OBSERVATIONS)
        train += [(path, base if kind != "bad_label" else base[:-1] + ["2.0"]) for kind, path in defects.items()]
    colour_path = next((path for path, cells in train[1:] if cells[2] == "Frontal"), None) if colour else None
    pixels_rng = np.random.default_rng(seed)
    for path, cells in train + valid:
        if path in (defects.get("missing_file"), defects.get("outside_root")):
            continue
        gray = draw_chest(image_shape, pixels_rng)
        pixels = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR) if path == colour_path else gray
        data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        target = parent / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[: len(data) // 2] if path == defects.get("corrupt_jpeg") else data)
    for name, rows in (("train.csv", train), ("valid.csv", valid)):
        (root / name).write_text("\n".join([HEADER, *(",".join([path, *cells]) for path, cells in rows)]) + "\n")
    views = [cells[2] for _, cells in train + valid]
    return ChexpertSample(root=root, train_rows=len(train), valid_rows=len(valid), frontal=views.count("Frontal"),
                          lateral=views.count("Lateral"), defects=defects, colour=colour_path)
