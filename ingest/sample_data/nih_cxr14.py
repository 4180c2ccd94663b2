"""A small NIH ChestX-ray14 tree on disk, made-up pixels in the real layout, for tests and benchmarks.

What a user has after the official download: `images_001/images/*.png`, `images_002/images/...`
(or, `layout="flat"`, every PNG in ROOT as mirrors keep them), `Data_Entry_2017_v2020.csv` (or the
older `Data_Entry_2017.csv`, `csv_style="kaggle"`, whose header ends in a comma; optionally
gzipped) and `BBox_List_2017.csv`, with their real headers (`OriginalImage[Width,Height]` and
`Bbox [x,y,w,h],,,` unquoted).

With `real_csv_dir` (../shared/data/nih-chestxray14) the CSV lines are copied byte for byte from the
real v2020 CSV and box list for the patients chosen (half of them with boxed images, all with at
most three images); without it rows are made up in the same format, under patient numbers above the
real ones (40000+). The official train_val_list.txt / test_list.txt have no public copy: with
`official_lists` they are made up, by patient.

Pixels: an 8-bit chest-like picture (body, two darker lungs, noise), a bright disc at the centre of
each box (boxes are in the 1024-pixel space of the real PNGs, scaled to `image_size`) and, on every
third image, a black frame on the left as some real films have. With `colour`, one image is saved
as RGB and one as RGBA with equal channels, as a few real PNGs are. Same arguments, same bytes.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ingest.nih_tables import FINDINGS
from ingest.sources.nih_cxr14 import BBOX_NAME, TEST_LIST, TRAIN_VAL_LIST

V2020_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
KAGGLE_HEADER = V2020_HEADER + ","  # the older file's header ends in a comma; its rows do not
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
UNLABELED_NAME = "00099999_000.png"  # a patient number beyond any real or made-up one
# The eight findings the real box list boxes (it has none for the other six).
BOXED_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                  "Pneumothorax")


@dataclass(frozen=True)
class NihSample:
    root: Path
    csv: Path
    patients: int
    rows: int  # CSV rows written
    boxes: dict[str, list[tuple[str, tuple[float, float, float, float]]]]  # image -> (finding as in the CSV, x y w h)
    defects: dict[str, str] = field(default_factory=dict)  # defect kind -> image name
    colour: dict[str, str] = field(default_factory=dict)  # "RGB"/"RGBA" -> image name saved that way


def _real_lines(real_csv_dir: Path, patients: int, seed: int) -> tuple[list[str], list[str]]:
    """Real Data_Entry lines (no header) for `patients` patients, and the real box lines of their images."""
    with gzip.open(real_csv_dir / "Data_Entry_2017_v2020.csv.gz", "rt", newline="") as fh:
        lines = fh.read().splitlines()[1:]
    box_lines = (real_csv_dir / BBOX_NAME).read_text().splitlines()[1:]
    boxed = {line.split(",", 1)[0] for line in box_lines}
    by_patient: dict[str, list[str]] = {}
    for line in lines:
        by_patient.setdefault(line.split("_", 1)[0], []).append(line)
    small = sorted(p for p, rows in by_patient.items() if len(rows) <= 3)
    with_box = [p for p in small if any(r.split(",", 1)[0] in boxed for r in by_patient[p])]
    without = [p for p in small if p not in set(with_box)]
    rng = random.Random(seed)
    chosen = rng.sample(with_box, patients // 2) + rng.sample(without, patients - patients // 2)
    rows = sorted(line for p in chosen for line in by_patient[p])
    images = {r.split(",", 1)[0] for r in rows}
    return rows, [line for line in box_lines if line.split(",", 1)[0] in images]


def _made_up_lines(patients: int, seed: int) -> tuple[list[str], list[str]]:
    """Data_Entry and box lines in the real format for made-up patients 40000+."""
    rng = random.Random(seed)
    rows, box_lines = [], []
    for k in range(patients):
        pid = 40000 + k
        for follow_up in range(rng.randint(1, 3)):
            image = f"{pid:08d}_{follow_up:03d}.png"
            findings = ["No Finding"] if rng.random() < 0.4 else rng.sample(FINDINGS, rng.randint(1, 2))
            view = rng.choice(("PA", "AP"))
            rows.append(f"{image},{'|'.join(findings)},{follow_up},{pid},{rng.randint(20, 80)},"
                        f"{rng.choice('MF')},{view},2500,2048,0.171,0.171")
            boxable = [f for f in findings if f in BOXED_FINDINGS]
            if boxable and rng.random() < 0.7:
                spelled = "Infiltrate" if boxable[0] == "Infiltration" else boxable[0]
                x, y = rng.uniform(150, 600), rng.uniform(150, 600)
                box_lines.append(f"{image},{spelled},{x!r},{y!r},{rng.uniform(60, 250)!r},{rng.uniform(60, 250)!r}")
    return rows, box_lines


def _parse_boxes(box_lines: list[str]) -> dict[str, list[tuple[str, tuple[float, float, float, float]]]]:
    boxes: dict[str, list] = {}
    for line in box_lines:
        cells = line.split(",")
        boxes.setdefault(cells[0], []).append((cells[1], tuple(float(c) for c in cells[2:6])))
    return boxes


def draw_chest(shape: tuple[int, int], rng: np.random.Generator, boxes=(), *, frame: bool = False) -> np.ndarray:
    """(H, W) uint8 chest-like picture: body, two darker lungs, noise; a bright disc at the centre
    of each (finding, (x, y, w, h)) box given in the 1024-pixel space; a black left frame if asked."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    v, u = yy / h, xx / w
    image = np.full((h, w), 20.0)
    image[((u - 0.5) / 0.45) ** 2 + ((v - 0.55) / 0.5) ** 2 < 1] = 170
    for cu in (0.32, 0.68):
        image[((u - cu) / 0.14) ** 2 + ((v - 0.5) / 0.3) ** 2 < 1] = 70
    sx, sy = w / 1024, h / 1024
    for _, (x, y, bw, bh) in boxes:
        cx, cy, r = (x + bw / 2) * sx, (y + bh / 2) * sy, max(2.0, min(bw * sx, bh * sy) / 4)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = 250
    image += rng.normal(0, 6, image.shape)
    if frame:
        image[:, : max(2, w // 40)] = 0
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_text(path: Path, text: str, *, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh:
            fh.write(text.encode())
    else:
        path.write_text(text)
    return path


def make_nih_sample(root: Path, *, patients: int = 6, seed: int = 0, image_size: int = 256, layout: str = "official",
                    real_csv_dir: Path | None = None, csv_style: str = "v2020", gzip_csv: bool = False,
                    official_lists: bool = False, colour: bool = True, with_defects: bool = False) -> NihSample:
    """Write the tree under `root` (created); see the module docstring."""
    if layout not in ("official", "flat") or csv_style not in ("v2020", "kaggle"):
        raise ValueError(f"layout official|flat and csv_style v2020|kaggle, got {layout!r}, {csv_style!r}")
    if real_csv_dir is not None and csv_style != "v2020":
        raise ValueError("real rows come from the v2020 CSV")
    root.mkdir(parents=True, exist_ok=True)
    rows, box_lines = _real_lines(real_csv_dir, patients, seed) if real_csv_dir else _made_up_lines(patients, seed)
    boxes = _parse_boxes(box_lines)
    images = [row.split(",", 1)[0] for row in rows]
    defects = {"missing_file": images[-1], "corrupt_png": images[len(images) // 2],
               "unlabeled_png": UNLABELED_NAME} if with_defects else {}
    colour_of = {images[1]: "RGB", images[2]: "RGBA"} if colour and len(images) >= 3 else {}
    per_folder = (len(images) + 2) // 2  # two images_00N folders
    rng = np.random.default_rng(seed)
    for i, name in enumerate(images + ([UNLABELED_NAME] if with_defects else [])):
        if name == defects.get("missing_file"):
            continue
        folder = root / f"images_{min(i, len(images) - 1) // per_folder + 1:03d}" / "images" if layout == "official" else root
        folder.mkdir(parents=True, exist_ok=True)
        gray = draw_chest((image_size, image_size), rng, boxes.get(name, ()), frame=i % 3 == 0)
        kind = colour_of.get(name)
        pixels = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR if kind == "RGB" else cv2.COLOR_GRAY2BGRA) if kind else gray
        data = cv2.imencode(".png", pixels)[1].tobytes()
        (folder / name).write_bytes(data[: len(data) // 2] if name == defects.get("corrupt_png") else data)
    header = KAGGLE_HEADER if csv_style == "kaggle" else V2020_HEADER
    csv_name = "Data_Entry_2017.csv" if csv_style == "kaggle" else "Data_Entry_2017_v2020.csv"
    csv_path = _write_text(root / csv_name, "\n".join([header, *rows]) + "\n", gz=gzip_csv)
    (root / BBOX_NAME).write_text("\n".join([BBOX_HEADER, *box_lines]) + "\n")
    if official_lists:
        pids = sorted({name.split("_")[0] for name in images})
        test = set(random.Random(seed).sample(pids, max(1, len(pids) // 4)))
        (root / TRAIN_VAL_LIST).write_text("".join(f"{n}\n" for n in images if n.split("_")[0] not in test))
        (root / TEST_LIST).write_text("".join(f"{n}\n" for n in images if n.split("_")[0] in test))
    return NihSample(root=root, csv=csv_path, patients=patients, rows=len(rows), boxes=boxes, defects=defects,
                     colour={kind: name for name, kind in colour_of.items()})
