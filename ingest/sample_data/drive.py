"""A small DRIVE-shaped dataset on disk, made-up fundus pixels in the real layout, for tests and
benchmarks that must run without ../shared/data.

Written as the real distribution is: `DRIVE/<training|test>/images/NN_<split>.tif` (LZW RGB TIFF),
`1st_manual/NN_manual1.gif` and `mask/NN_<split>_mask.gif` (grey GIFs holding 0/255), and for the
test set `2nd_manual/NN_manual2.gif` as a palette GIF holding indices 0/1 (black/white palette), as
the real `01_manual2.gif` is. Training images are numbered from 21, test images from 01. Same
arguments, same bytes.

Defects (with_defects=True), one image each: "missing_fov" (its FOV GIF removed), "missing_manual"
(its 1st_manual GIF removed), "corrupt_image" (the TIFF cut short), "grey_mask" (a manual with
anti-aliased grey levels).
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

DEFECT_KINDS = ("missing_fov", "missing_manual", "corrupt_image", "grey_mask")


@dataclass(frozen=True)
class DriveSample:
    root: Path  # the DRIVE folder
    train: int  # images written per official split
    test: int
    defects: dict[str, str]  # defect kind -> the image (relative to root) it affects


def draw_fundus(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (RGB uint8 (H, W, 3), vessel bool (H, W), FOV bool (H, W)): an orange disc on black with
    a bright optic disc and dark branching vessels, darker in the green channel as in real fundi."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    cy, cx, radius = h / 2, w / 2, 0.46 * min(h, w)
    fov = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    disc_y, disc_x = cy + rng.uniform(-0.1, 0.1) * h, cx + rng.choice([-1, 1]) * 0.28 * w
    vessels = np.zeros(shape, np.uint8)
    for _ in range(8):
        angle = rng.uniform(0, 2 * np.pi)
        points = [(disc_x, disc_y)]
        for step in range(1, 8):
            angle += rng.normal(0, 0.35)
            points.append((points[-1][0] + np.cos(angle) * 0.06 * w, points[-1][1] + np.sin(angle) * 0.06 * h))
        width = int(rng.integers(2, 6))
        cv2.polylines(vessels, [np.round(points).astype(np.int32)], False, 1, thickness=width)
    vessel = vessels.astype(bool) & fov
    shade = 1.0 - 0.35 * ((yy - cy) ** 2 + (xx - cx) ** 2) / radius**2
    disc = np.exp(-((yy - disc_y) ** 2 + (xx - disc_x) ** 2) / (2 * (0.05 * w) ** 2))
    base = np.array([200.0, 90.0, 40.0])
    rgb = base[None, None, :] * shade[..., None] + 55.0 * disc[..., None]
    rgb[vessel] *= np.array([0.8, 0.45, 0.6])
    rgb += rng.normal(0, 3, rgb.shape)
    rgb[~fov] = rng.integers(0, 4, (int((~fov).sum()), 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), vessel, fov


def _gif(mask: np.ndarray, *, palette: bool) -> bytes:
    """A bool mask as DRIVE stores it: grey 0/255, or palette indices 0/1 (black, white)."""
    if palette:
        img = Image.fromarray(mask.astype(np.uint8), mode="P")
        img.putpalette([4, 2, 4, 252, 254, 252] + [0, 0, 0] * 254)
    else:
        img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    buf = io.BytesIO()
    img.save(buf, format="GIF")
    return buf.getvalue()


def _tiff(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="TIFF", compression="tiff_lzw")
    return buf.getvalue()


def make_drive_sample(out: Path, *, train: int = 4, test: int = 2, seed: int = 0,
                      shape: tuple[int, int] = (584, 565), with_defects: bool = False) -> DriveSample:
    """Write OUT/DRIVE/... and return what was written."""
    root = out / "DRIVE"
    rng = np.random.default_rng(seed)
    plan = [("training", 21 + i) for i in range(train)] + [("test", 1 + i) for i in range(test)]
    defect_images = {}
    if with_defects:
        if train < len(DEFECT_KINDS):
            raise ValueError(f"with_defects needs at least {len(DEFECT_KINDS)} training images")
        defect_images = {kind: f"training/images/{21 + i:02d}_training.tif" for i, kind in enumerate(DEFECT_KINDS)}
    for folder, number in plan:
        rgb, vessel, fov = draw_fundus(shape, rng)
        n = f"{number:02d}"
        rel = f"{folder}/images/{n}_{folder}.tif"
        kind = next((k for k, image in defect_images.items() if image == rel), None)
        files = {
            rel: _tiff(rgb),
            f"{folder}/1st_manual/{n}_manual1.gif": _gif(vessel, palette=False),
            f"{folder}/mask/{n}_{folder}_mask.gif": _gif(fov, palette=False),
        }
        if folder == "test":
            second = cv2.dilate(vessel.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & fov
            files[f"{folder}/2nd_manual/{n}_manual2.gif"] = _gif(second, palette=True)
        if kind == "missing_fov":
            del files[f"{folder}/mask/{n}_{folder}_mask.gif"]
        elif kind == "missing_manual":
            del files[f"{folder}/1st_manual/{n}_manual1.gif"]
        elif kind == "corrupt_image":
            files[rel] = files[rel][: len(files[rel]) // 3]
        elif kind == "grey_mask":
            blurred = cv2.GaussianBlur(vessel.astype(np.uint8) * 255, (5, 5), 0)
            buf = io.BytesIO()
            Image.fromarray(blurred, mode="L").save(buf, format="GIF")
            files[f"{folder}/1st_manual/{n}_manual1.gif"] = buf.getvalue()
        for name, data in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return DriveSample(root, train, test, defect_images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=4)
    parser.add_argument("--test", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    made = make_drive_sample(args.out, train=args.train, test=args.test, seed=args.seed)
    print(f"sample DRIVE: {made.train} training and {made.test} test images in {made.root}")


if __name__ == "__main__":
    main()
