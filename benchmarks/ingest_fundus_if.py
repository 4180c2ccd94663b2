"""Ingest throughput of `ingest drive` and `ingest if --crops cell` beside their decode-bound
limits, measured in one run. Prints one JSON line per source.

drive limit: for each image, in one process and nothing else: Pillow decode of the TIFF and of its
             two GIF masks, binarised (one OpenCV threshold), pad to square and resize the three,
             PNG encode of the three;
if limit:    for each work unit (one image here), in one process: the nuclei found tile by tile on
             the nuclear channel, the region of the seven channels read, the cell crops cut, .npy
             encode of each;
ingest:      the same jobs through `run_job` in one process (workers 0; planning excluded: for `if` it reads
             every image once for its fingerprint and nuclear threshold, reported as plan_s), and
             with 2 worker processes (speedup_2proc_over_1proc).
write:       the job's output bytes (its shards' total size) written to a new file beside the
             job's output and fsynced, in 1 MB writes from one reused buffer: what making that
             much output durable costs on this disk with nothing else running (ratio_1proc_to_write).
             An `ingest if` unit is 40 MB of crops; on this VM a new file's pages cost far more
             than the crops' compute (first touch of memory the host had taken back, then the disk),
             so this, and not the decode-bound limit, can be the floor.
Target: ingest >= 0.9 x limit.

12 immunofluorescence images by default: a job's fixed costs (forking workers, the last shard's
fsync of everything not yet written back, manifest and card) are a second or so of a 1024 px IF
job's 40 MB an image. At 4 images they were most of a two-worker run, which then measured no
faster than one process (0.98x) where 12 images measured 1.4x.

    python benchmarks/ingest_fundus_if.py [--drive-images 10] [--if-images 12 --if-side 1024] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import crops, nuclei  # noqa: E402
from ingest.multiplex_tiff import RegionReader  # noqa: E402
from ingest.pipeline import run_job  # noqa: E402
from ingest.sample_data.drive import make_drive_sample  # noqa: E402
from ingest.sample_data.multiplex_if import make_if_sample  # noqa: E402
from ingest.sources import drive, multiplex_if  # noqa: E402
from rounds import Rounds  # noqa: E402
from shards import codecs  # noqa: E402


def drive_limit(job) -> float:
    root, size = Path(job.process.root), job.process.size
    start = time.perf_counter()
    for unit in job.units:
        image = unit.payload
        rgb = np.asarray(Image.open(io.BytesIO((root / image.image).read_bytes())))
        masks = [np.asarray(Image.open(root / rel).convert("L")) for rel in (image.manual, image.fov)]
        h, w = rgb.shape[:2]
        box = crops.square_context_box((0, 0, w, h), margin=0.0, min_side=0)
        codecs.encode_pixels(crops.resize_to(crops.crop_padded(rgb, box), size))
        for mask in masks:
            codecs.encode_mask(crops.resize_to(crops.crop_padded(cv2.threshold(mask, 127, 255, cv2.THRESH_BINARY)[1], box), size,
                                               nearest=True))
    return time.perf_counter() - start


def if_limit(job) -> float:
    side = job.process.side
    start = time.perf_counter()
    for unit in job.units:
        b = unit.payload
        with RegionReader() as reader:
            found = nuclei.find_nuclei(lambda box: reader.read(b.nuclear, box), b.block, b.shape,
                                       threshold=b.threshold)
            x0, y0, x1, y1 = b.block
            region = (x0 - side, y0 - side, x1 + side, y1 + side)
            stack = np.stack([reader.read(plane, region) for plane in b.planes], axis=-1)
        for x, y in found:
            cx, cy = int(np.floor(x + 0.5)) - region[0], int(np.floor(y + 0.5)) - region[1]
            box = (cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side)
            codecs.encode_pixels(crops.crop_padded(stack, box))
    return time.perf_counter() - start


def output_bytes(out: Path) -> int:
    return sum(f.stat().st_size for f in out.rglob("*.tar"))


def timed_write(folder: Path, nbytes: int) -> float:
    """Seconds to write nbytes to a new file in folder and fsync it (the file is removed after)."""
    block = np.random.default_rng(0).integers(0, 256, 1 << 20, np.uint8).tobytes()
    path = folder / "write-bound.bin"
    start = time.perf_counter()
    with open(path, "wb", buffering=0) as fh:
        for at in range(0, nbytes, len(block)):
            fh.write(block[: min(len(block), nbytes - at)])
        os.fsync(fh.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def timed_ingest(make_job, out: Path) -> tuple[float, float]:
    """(plan seconds, run seconds) of one ingest into a fresh folder."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    job = make_job(out)
    planned = time.perf_counter()
    summary = run_job(job)
    assert summary.rejects == 0, summary.describe()
    return planned - start, time.perf_counter() - planned


def measure(name: str, make_job, limit, repeats: int, tmp: Path, extra: dict) -> dict:
    """make_job(out, workers) -> IngestJob."""
    plan = make_job(tmp / "plan", 0)
    limit(plan)  # warm the page cache and imports
    rounds = Rounds()
    for _ in range(repeats):  # alternate: this VM's speed drifts (see benchmarks/rounds.py)
        os.sync()
        limit_s = limit(plan)
        os.sync()
        p, r = timed_ingest(lambda out: make_job(out, 0), tmp / "out")  # in one process
        os.sync()
        _, r2 = timed_ingest(lambda out: make_job(out, 2), tmp / "out")
        nbytes = output_bytes(tmp / "out")
        os.sync()
        rounds.add(limit=limit_s, plan=p, ingest=r, ingest2=r2, write=timed_write(tmp, nbytes))
    limit_s, plan_s, ingest_s, two_s, write_s = (rounds.best_seconds(n) for n in ("limit", "plan", "ingest", "ingest2",
                                                                                 "write"))
    images = len(plan.units)
    return {"benchmark": f"ingest_{name}", "units": images, **extra, "cpu_count": os.cpu_count(),
            "limit_units_per_s": round(images / limit_s, 2), "ingest_1proc_units_per_s": round(images / ingest_s, 2),
            "ratio_1proc_to_limit": round(limit_s / ingest_s, 3), "plan_s": round(plan_s, 3),
            "output_mb": round(nbytes / 1e6, 1), "write_units_per_s": round(images / write_s, 2),
            "ratio_1proc_to_write": round(write_s / ingest_s, 3),
            "ingest_2proc_units_per_s": round(images / two_s, 2), "speedup_2proc_over_1proc": round(ingest_s / two_s, 3),
            "median_of_rounds": {"ratio_1proc_to_limit": rounds.median_ratio("limit", "ingest"),
                                 "ratio_1proc_to_write": rounds.median_ratio("write", "ingest"),
                                 "speedup_2proc_over_1proc": rounds.median_ratio("ingest", "ingest2")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drive-images", type=int, default=10, help="per official split")
    parser.add_argument("--if-images", type=int, default=12)
    parser.add_argument("--if-side", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds (best and median of rounds are reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fundus = make_drive_sample(tmp / "drive", train=args.drive_images, test=args.drive_images, seed=0).root
        line = measure("drive_whole", lambda out, workers: drive.build_job(root=fundus, out=out, workers=workers,
                                                                            progress=False),
                       drive_limit, args.repeats, tmp / "d", {"image_shape": [584, 565], "size": 512})
        print(json.dumps(line), flush=True)
        cells = args.if_side * args.if_side // 6000
        made = make_if_sample(tmp / "if", images=args.if_images, shape=(args.if_side, args.if_side),
                              cells_per_image=cells, seed=0, layout="ome", tables="none")
        line = measure("if_cell_nuclei", lambda out, workers: multiplex_if.build_job(root=made.root, out=out,
                                                                                      workers=workers, progress=False),
                       if_limit, args.repeats, tmp / "i",
                       {"image_shape": [args.if_side, args.if_side], "channels": 7,
                        "cells_drawn": cells * args.if_images})
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
