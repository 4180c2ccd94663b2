"""Loader throughput beside its decode-bound limit and beside a folder of PNG files, in one run.
Prints one JSON line.

decode_bound: the train split's pixel members, read into memory first, decoded whole by N
              processes (codecs.decode_pixels, nothing else): what N cores can do at best, since a
              224 px 16-bit PNG decode is most of a sample's cost.
decode_bound_region: the same, each member decoded only in the rectangle of an MAE crop drawn
              from its header (what the stream decodes; shards.png_region);
decode_bound_opencv: the same with cv2.imdecode, the decoder before shards.png_region (the bound
              issue 3 measured, 0.66 ms a sample).
stream:       make_loader over the shards (read, shuffle, decode, "mae" augment, batch in stored
              units with each sample's normalisation) with N DataLoader workers, `--samples` per
              epoch, as GPU training runs it (resize_on_device, no labels): normalisation, and the
              resize and flip of the crops training enlarges, happen on the GPU (to_device), not
              here; samples are read at the manifest's member spans (shards.indexed_read); batches
              are handed on in the workers' own buffers, lent (shards.batch_ring);
stream_copy:  the same with every batch copied out of its worker's buffer, as a GPU run does (it
              copies into pinned memory, which this machine has not: here into plain memory);
stream_tar:   the same read through the tars, every sample's json parsed (by_index=False, labels:
              how a set without member spans, or a stream with labels, is read);
stream_cpu_resize: the same with every crop resized and flipped in the workers (CPU training);
stream_uri:   the stream over the same shards named by a file:// URI: read through pyarrow.fs and
              shards.storage's forward reader, the path an object store's shards take (s3://...),
              without the network: through the tars, with labels (compare with stream_tar);
folder:       the same crops written out as PNG files, read by a map-style Dataset (file read,
              decode, the same augment, the same hand-over) in a DataLoader with N workers.
Also, on one core and without a DataLoader's hand-over: the stream with num_workers=0 beside one
process decoding; and the cost a sample of making and filling a fresh shared-memory batch, which
a DataLoader worker pays per batch unless it reuses buffers (the folder pays it, the stream not).
And to_device's cost a sample on one CPU core for the stream's batches (to_device_cpu_us: work
a GPU does instead; why CPU training resizes in the workers).
Rounds alternate and the best of each is kept. Targets (issue 3): stream >= 0.9 x decode_bound,
and stream >= folder.

    python benchmarks/loader_throughput.py [--patients 60] [--workers N] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, RandomSampler  # noqa: E402

from shards import codecs, schema  # noqa: E402
from shards import sample_stages as stages  # noqa: E402
from shards.augment import Augment  # noqa: E402
from shards.batch_ring import shared_batch  # noqa: E402
from shards.card import read_card  # noqa: E402
from shards.heap import keep_buffers_in_heap  # noqa: E402
from shards.stream import StreamSource, make_loader, to_device  # noqa: E402
from rounds import Rounds  # noqa: E402


def train_members(root: Path) -> list[tuple[str, str, bytes]]:
    """(key, pixel extension, bytes) of every train sample, through the stream's own tar stage."""
    paths = [str(root / r["path"]) for r in read_card(root)["splits"]["train"]["shards"]]
    out = []
    for sample in stages.tar_samples(paths, stages.raise_sample_error):
        ext = next(e for e in schema.PIXEL_MEMBERS if sample.get(e) is not None)
        out.append((sample["__key__"], ext, sample[ext]))
    return out


_MEMBERS: list[tuple[str, str, bytes]] = []


def _hold_members(members: list[tuple[str, str, bytes]]) -> None:
    global _MEMBERS
    _MEMBERS = members
    cv2.setNumThreads(1)


def _opencv_decode(ext: str, data: bytes) -> None:
    cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


_CROPS = Augment("mae", 224, seed=0)


def _region_decode(ext: str, data: bytes) -> None:
    header = codecs.read_pixel_header(ext, data)
    codecs.decode_pixels(ext, data, _CROPS.draw(header.height, header.width).region, header)


_DECODERS = {"medshards": codecs.decode_pixels, "opencv": _opencv_decode, "region": _region_decode}


def _decode_share(args: tuple[int, int, int, str]) -> int:
    start, step, total, decoder = args
    decode = _DECODERS[decoder]
    count = 0
    for i in range(start, total, step):
        _, ext, data = _MEMBERS[i % len(_MEMBERS)]
        decode(ext, data)
        count += 1
    return count


def decode_bound(pool, workers: int, samples: int, decoder: str = "medshards") -> float:
    """samples/s of the pool's N processes decoding the in-memory members round robin."""
    start = time.perf_counter()
    done = sum(pool.map(_decode_share, [(w, workers, samples, decoder) for w in range(workers)]))
    return done / (time.perf_counter() - start)


def epoch_rate(loader, samples: int, epoch: int) -> float:
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    start = time.perf_counter()
    count = sum(len(batch["image"] if isinstance(batch, dict) else batch) for batch in loader)
    assert count == samples, (count, samples)
    return count / (time.perf_counter() - start)


def to_device_cpu_us(loader, batches: int = 4) -> float:
    """Microseconds a sample that to_device takes on this CPU, one thread (normalising, resizing
    and flipping; on a training GPU this is one fused pass over the batch)."""
    taken = [batch for _, batch in zip(range(batches), loader)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for batch in taken:
                to_device(dict(batch), "cpu")
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return best / sum(len(b["key"]) for b in taken) * 1e6


def shm_handoff_us(batch_size: int, side: int) -> float:
    """Microseconds a sample to make and fill a new shared-memory 16-bit batch, as a DataLoader
    worker does for every batch it hands over (default_collate; the folder baseline here), and
    the stream's workers do not (shards.batch_ring reuses their buffers)."""
    start = time.perf_counter()
    for _ in range(10):
        shared_batch((batch_size, 1, side, side), torch.int16).fill_(1)
    return (time.perf_counter() - start) / (10 * batch_size) * 1e6


class PngFolder(Dataset):
    """A folder of 16-bit PNG crops, decoded and augmented as the stream does, and handed over as
    the stream hands them over: stored units, normalised later on the device."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.augment = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.augment is None:  # built in the worker, seeded by torch's per-worker seed
            cv2.setNumThreads(1)
            self.augment = Augment("mae", 224, seed=torch.initial_seed() % 2**32)
        pixels = codecs.decode_pixels(schema.PIXELS_PNG, self.files[index].read_bytes())
        return torch.from_numpy(self.augment(pixels))


def folder_loader(folder: PngFolder, *, workers: int, batch_size: int, samples: int) -> DataLoader:
    sampler = RandomSampler(folder, num_samples=samples)
    return DataLoader(folder, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="default: all cores")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4096, help="samples per epoch")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up)")
    parser.add_argument("--shard-size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "shards"
        # In child processes: ingest forks its pool, and this process has torch's threads by now.
        ingest = [sys.executable, "-m", "ingest.cli"]
        quiet = dict(check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[1])
        subprocess.run(ingest + ["sample-data", "cbis", str(tmp / "dl"), "--patients", str(args.patients)], **quiet)
        subprocess.run(ingest + ["cbis", str(tmp / "dl"), "--out", str(root), "--crops", "both", "--random-side", "160",
                                 "--shard-size", str(args.shard_size)], **quiet)
        members = train_members(root)
        folder = tmp / "png"
        folder.mkdir()
        files = []
        for key, ext, data in members:
            files.append(folder / f"{key}.{ext}")
            files[-1].write_bytes(data)
        samples = args.samples - args.samples % args.batch_size
        stream, _ = make_loader([StreamSource(root)], batch_size=args.batch_size, image_size=224,
                                num_workers=args.workers, seed=0, augment="mae", samples_per_epoch=samples,
                                resize_on_device=True, labels=False)
        stream_copy, _ = make_loader([StreamSource(root)], batch_size=args.batch_size, image_size=224,
                                     num_workers=args.workers, seed=0, augment="mae", samples_per_epoch=samples,
                                     resize_on_device=True, labels=False)
        stream_copy.lend = False
        stream_tar, _ = make_loader([StreamSource(root)], batch_size=args.batch_size, image_size=224,
                                    num_workers=args.workers, seed=0, augment="mae", samples_per_epoch=samples,
                                    resize_on_device=True, by_index=False)
        stream_cpu, _ = make_loader([StreamSource(root)], batch_size=args.batch_size, image_size=224,
                                    num_workers=args.workers, seed=0, augment="mae", samples_per_epoch=samples,
                                    labels=False)
        stream_uri, _ = make_loader([StreamSource(root.as_uri())], batch_size=args.batch_size, image_size=224,
                                    num_workers=args.workers, seed=0, augment="mae", samples_per_epoch=samples,
                                    resize_on_device=True)
        folder = folder_loader(PngFolder(files), workers=args.workers, batch_size=args.batch_size,
                               samples=samples)
        one_core, _ = make_loader([StreamSource(root)], batch_size=args.batch_size, image_size=224, num_workers=0,
                                  seed=0, augment="mae", samples_per_epoch=samples // 4, resize_on_device=True,
                                  labels=False)
        rounds = Rounds()
        with multiprocessing.get_context("fork").Pool(args.workers, _hold_members, (members,)) as pool:
            for loader in (stream, stream_copy, stream_tar, stream_cpu, stream_uri, folder):  # warm page cache, workers, imports
                epoch_rate(loader, samples, 0)
            keep_buffers_in_heap()  # for the in-process stream, as in a worker (workers exist by now)
            for repeat in range(args.repeats):  # alternate: this VM's speed drifts (see benchmarks/rounds.py)
                rounds.add(limit=decode_bound(pool, args.workers, samples),
                           limit_opencv=decode_bound(pool, args.workers, samples, "opencv"),
                           limit_region=decode_bound(pool, args.workers, samples, "region"),
                           stream=epoch_rate(stream, samples, repeat + 1),
                           stream_copy=epoch_rate(stream_copy, samples, repeat + 1),
                           stream_tar=epoch_rate(stream_tar, samples, repeat + 1),
                           stream_cpu=epoch_rate(stream_cpu, samples, repeat + 1),
                           stream_uri=epoch_rate(stream_uri, samples, repeat + 1),
                           folder=epoch_rate(folder, samples, repeat + 1),
                           limit_1=decode_bound(pool, 1, samples // 4),
                           stream_1=epoch_rate(one_core, samples // 4, repeat))
        best = {name: rounds.best_rate(name) for name in rounds.values}
        handoff = min(shm_handoff_us(args.batch_size, 224) for _ in range(3))
        finish = to_device_cpu_us(stream)
    print(json.dumps({
        "benchmark": "loader_cbis_both_crops_224_mae",
        "train_samples": len(members),
        "shard_size": args.shard_size,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "samples_per_epoch": samples,
        "cpu_count": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "decode_bound_samples_per_s": round(best["limit"], 1),
        "stream_samples_per_s": round(best["stream"], 1),
        "stream_copy_samples_per_s": round(best["stream_copy"], 1),
        "stream_tar_samples_per_s": round(best["stream_tar"], 1),
        "stream_cpu_resize_samples_per_s": round(best["stream_cpu"], 1),
        "folder_samples_per_s": round(best["folder"], 1),
        "stream_file_uri_samples_per_s": round(best["stream_uri"], 1),
        "decode_bound_opencv_samples_per_s": round(best["limit_opencv"], 1),
        "decode_bound_region_samples_per_s": round(best["limit_region"], 1),
        "ratio_stream_to_region_decode_bound": round(best["stream"] / best["limit_region"], 3),
        "ratio_stream_to_decode_bound": round(best["stream"] / best["limit"], 3),
        "ratio_copy_stream_to_region_decode_bound": round(best["stream_copy"] / best["limit_region"], 3),
        "ratio_stream_to_opencv_decode_bound": round(best["stream"] / best["limit_opencv"], 3),
        "ratio_stream_to_folder": round(best["stream"] / best["folder"], 3),
        "ratio_stream_to_stream_tar": round(best["stream"] / best["stream_tar"], 3),
        "ratio_cpu_resize_stream_to_decode_bound": round(best["stream_cpu"] / best["limit"], 3),
        "ratio_cpu_resize_stream_to_folder": round(best["stream_cpu"] / best["folder"], 3),
        "decode_bound_1proc_samples_per_s": round(best["limit_1"], 1),
        "stream_in_process_samples_per_s": round(best["stream_1"], 1),
        "ratio_in_process_stream_to_1proc_decode": round(best["stream_1"] / best["limit_1"], 3),
        "shm_handoff_us_per_sample": round(handoff, 1),
        "to_device_cpu_us_per_sample": round(finish, 1),
        "median_of_rounds": {"ratio_stream_to_decode_bound": rounds.median_ratio("stream", "limit"),
                             "ratio_stream_to_opencv_decode_bound": rounds.median_ratio("stream", "limit_opencv"),
                             "ratio_stream_to_region_decode_bound": rounds.median_ratio("stream", "limit_region"),
                             "ratio_copy_stream_to_region_decode_bound": rounds.median_ratio("stream_copy",
                                                                                             "limit_region"),
                             "ratio_stream_to_copy_stream": rounds.median_ratio("stream", "stream_copy"),
                             "ratio_region_to_whole_decode_rate": rounds.median_ratio("limit_region", "limit"),
                             "ratio_stream_to_folder": rounds.median_ratio("stream", "folder"),
                             "ratio_stream_to_stream_tar": rounds.median_ratio("stream", "stream_tar"),
                             "ratio_cpu_resize_stream_to_decode_bound": rounds.median_ratio("stream_cpu", "limit"),
                             "ratio_file_uri_stream_to_stream_tar": rounds.median_ratio("stream_uri", "stream_tar"),
                             "ratio_in_process_stream_to_1proc_decode": rounds.median_ratio("stream_1", "limit_1")},
    }))


if __name__ == "__main__":
    main()
