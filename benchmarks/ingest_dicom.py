"""`ingest dicom` and `ingest cmmd` throughput beside their decode-bound limits, and `ingest dicom`
peak memory on trees of 10,000 to 90,000 files. Prints three JSON lines.

limit:  per image, in one process and nothing else: read the file, decode_dicom, the crops, the
        PNG encode (dicom: the whole image padded to a square; cmmd: random tissue crops);
ingest: the full job (plan included) in one process (workers 0) on the same files. Target ratio >= 0.9.
memory: peak RSS (the child's own ru_maxrss, from wait4) of `ingest dicom --workers 0` run as a
        subprocess on trees of 10,000, 30,000 and 90,000 tiny images (--trees), and kb_per_extra_file
        between the two largest. The job's fixed buffers (a plan run of 8,192 rows, a manifest row
        group of 8,192 as it is written) are full from about 10,000 files, so growth is read above that.

    python benchmarks/ingest_dicom.py [--images 96 --height 2048 --width 1664] [--cmmd-subjects 24]
        [--trees 10000,30000,90000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from ingest import crops, mammogram  # noqa: E402
from ingest.dicom_pixels import decode_dicom  # noqa: E402
from ingest.pipeline import run_job  # noqa: E402
from ingest.sources import cmmd, dicom_archive  # noqa: E402
from rounds import Rounds  # noqa: E402
from shards import codecs  # noqa: E402


def dicom_limit(units: list, size: int) -> float:
    start = time.perf_counter()
    for unit in units:
        pixels = decode_dicom(Path(unit.payload.path).read_bytes(), frame=unit.payload.frame).pixels
        h, w = pixels.shape
        box = crops.square_context_box((0, 0, w, h), margin=0.0, min_side=0)
        codecs.encode_pixels(crops.resize_to(crops.crop_padded(pixels, box), size))
    return time.perf_counter() - start


def cmmd_limit(units: list, params: mammogram.CropParams) -> float:
    """Every image is decoded; only those whose breast has a sheet row are cropped (as in the job)."""
    start = time.perf_counter()
    for unit in units:
        decoded = decode_dicom(Path(unit.payload.image_file).read_bytes())
        if dict(unit.payload.breasts).get(decoded.laterality) is None:
            continue
        for crop, _ in mammogram.random_tissue_crops(decoded.pixels, [], params, random.Random(unit.unit_id)):
            codecs.encode_pixels(crop)
    return time.perf_counter() - start


def timed_ingest(make_job, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    run_job(make_job(out))
    return time.perf_counter() - start


def alternate(repeats: int, limit, make_job, out: Path) -> Rounds:
    """Alternate limit and ingest (this VM's speed drifts; see benchmarks/rounds.py). One untimed
    run of each first: the page cache, and one-time imports."""
    limit()
    timed_ingest(make_job, out)
    rounds = Rounds()
    for _ in range(repeats):
        os.sync()  # the last run's shards are written back now, not inside the next measurement
        limit_s = limit()
        os.sync()
        rounds.add(limit=limit_s, ingest=timed_ingest(make_job, out))
    return rounds


def generate(module: str, out: Path, *args: str) -> float:
    """Run a sample_data generator in a child process (its memory churn stays out of this one)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", module, str(out), *args], check=True, stdout=subprocess.DEVNULL, cwd=PROJECT)
    return time.perf_counter() - start


def throughput_line(name: str, images: int, rounds: Rounds, **extra) -> str:
    limit_s, ingest_s = rounds.best_seconds("limit"), rounds.best_seconds("ingest")
    return json.dumps({
        "benchmark": name, "images": images, **extra, "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "limit_images_per_s": round(images / limit_s, 2), "ingest_1proc_images_per_s": round(images / ingest_s, 2),
        "ratio_1proc_to_limit": round(limit_s / ingest_s, 3),
        "median_of_rounds": {"ratio_1proc_to_limit": rounds.median_ratio("limit", "ingest")},
    })


def peak_rss_mb(root: Path, out: Path) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of `ingest dicom ROOT --workers 0` in a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ingest.cli", "dicom", str(root), "--out", str(out), "--workers", "0",
                             "--no-progress", "--size", "64", "--id-salt", "public"], cwd=PROJECT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"ingest dicom {root} exited with {proc.returncode}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start  # Linux: kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96, help="dicom: images in the throughput tree")
    parser.add_argument("--height", type=int, default=2048)
    parser.add_argument("--width", type=int, default=1664)
    parser.add_argument("--cmmd-subjects", type=int, default=24, help="cmmd: subjects (2 or 4 images each)")
    parser.add_argument("--cmmd-height", type=int, default=2294, help="default: the real CMMD image size")
    parser.add_argument("--cmmd-width", type=int, default=1914)
    parser.add_argument("--trees", type=lambda text: sorted(int(n) for n in text.split(",")), default=[10000, 30000, 90000],
                        help="files in each memory tree, comma-separated (kb_per_extra_file: between the two largest)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (best and median of rounds are reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "archive"  # generated: its patient IDs are public (--id-salt public)
        generate("ingest.sample_data.dicom_archive", root, "--images", str(args.images), "--patients",
                 str(max(1, args.images // 4)), "--shape", str(args.height), str(args.width), "--no-quirks")
        units = dicom_archive.build_job(root=root, out=tmp / "plan", progress=False, id_salt="public").units
        rounds = alternate(
            args.repeats, lambda: dicom_limit(units, 224),
            lambda out: dicom_archive.build_job(root=root, out=out, workers=0, progress=False, id_salt="public"), tmp / "dicom-out")
        print(throughput_line("ingest_dicom_whole", len(units), rounds,
                              image_shape=[args.height, args.width]), flush=True)

        root = tmp / "cmmd"
        generate("ingest.sample_data.cmmd", root, "--subjects", str(args.cmmd_subjects), "--image-shape",
                 str(args.cmmd_height), str(args.cmmd_width))
        params = mammogram.CropParams()
        units = cmmd.build_job(root=root, out=tmp / "plan2", progress=False).units
        rounds = alternate(
            args.repeats, lambda: cmmd_limit(units, params),
            lambda out: cmmd.build_job(root=root, out=out, workers=0, progress=False), tmp / "cmmd-out")
        print(throughput_line("ingest_cmmd_random", len(units), rounds,
                              image_shape=[args.cmmd_height, args.cmmd_width]), flush=True)

        memory: dict = {"benchmark": "ingest_dicom_memory", "image_shape": [64, 64], "trees": []}
        for files in args.trees:
            tree = tmp / f"tree-{files}"
            generated_s = generate("ingest.sample_data.dicom_archive", tree, "--images", str(files), "--patients",
                                   str(max(1, files // 20)), "--shape", "64", "64", "--no-quirks")
            rss, seconds = peak_rss_mb(tree, tmp / f"tree-out-{files}")
            memory["trees"].append({"files": files, "peak_rss_mb": round(rss, 1), "ingest_s": round(seconds, 1),
                                    "generate_s": round(generated_s, 1)})
            shutil.rmtree(tree)
            shutil.rmtree(tmp / f"tree-out-{files}")
        trees = memory["trees"]
        first, before, last = trees[0], trees[max(0, len(trees) - 2)], trees[-1]
        memory["peak_rss_ratio_largest_to_smallest"] = round(last["peak_rss_mb"] / first["peak_rss_mb"], 3)
        memory["kb_per_extra_file"] = round((last["peak_rss_mb"] - before["peak_rss_mb"]) * 1024
                                            / max(1, last["files"] - before["files"]), 3)
        print(json.dumps(memory), flush=True)


if __name__ == "__main__":
    main()
