"""How fast the ingest process can write shards, beside hashing the same bytes. Prints one JSON line.

Every worker's samples are written by one process (the ingest job's), so its write rate caps a
job however many workers decode: an `ingest if` unit is 40 MB of 7-channel cell crops.

writer:     ShardWriter over `--samples` samples of `--sample-kb` (an IF cell crop: 128 x 128 x 7
            uint16 = 224 KB), checkpointed as ingest checkpoints, into a folder on `--out`'s disk
            (finished shards fsynced and renamed, as always);
sha256:     hashlib.sha256 over the same bytes, one thread;
file_write: the same bytes written to one plain file, not hashed and fsynced.
serial:     sha256 + file_write, one after the other: what a writer that hashes on its own thread
            costs at best (this one did until the hash moved to the "shard-hash" thread).
ratio_writer_to_serial > 1: the hash runs beside the writing; the most a pipeline of the two can
reach is ratio_writer_to_pipelined = 1 (the slower of hashing and writing alone).

    python benchmarks/shard_writer.py [--samples 2088] [--sample-kb 224] [--out /tmp]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rounds import Rounds  # noqa: E402
from shards.writer import ShardWriter  # noqa: E402

UNIT_SAMPLES = 174  # cells an IF work unit gave in benchmarks/ingest_fundus_if.py: a checkpoint each


def write_shards(root: Path, payloads: list[bytes], samples: int) -> float:
    start = time.perf_counter()
    with ShardWriter(root, "train") as writer:
        for i in range(samples):
            writer.write({"__key__": f"cell{i:06d}", "npy": payloads[i % len(payloads)], "json": b'{"key": "cell"}'})
            if i % UNIT_SAMPLES == UNIT_SAMPLES - 1:
                writer.checkpoint()
    elapsed = time.perf_counter() - start
    for shard in (root / "train").iterdir():
        shard.unlink()
    return elapsed


def hash_only(payloads: list[bytes], samples: int) -> float:
    start = time.perf_counter()
    digest = hashlib.sha256()
    for i in range(samples):
        digest.update(payloads[i % len(payloads)])
    digest.hexdigest()
    return time.perf_counter() - start


def write_only(path: Path, payloads: list[bytes], samples: int) -> float:
    start = time.perf_counter()
    with open(path, "wb") as fh:
        for i in range(samples):
            fh.write(payloads[i % len(payloads)])
        fh.flush()
        os.fsync(fh.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2088)
    parser.add_argument("--sample-kb", type=int, default=224)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    payloads = [os.urandom(args.sample_kb * 1024) for _ in range(64)]
    megabytes = args.samples * args.sample_kb / 1024
    rounds = Rounds()
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        tmp = Path(tmp)
        write_shards(tmp / "warm", payloads, args.samples // 4)
        for _ in range(args.repeats):  # alternate: this VM's speed drifts (see benchmarks/rounds.py)
            os.sync()
            sha256 = hash_only(payloads, args.samples)
            file_write = write_only(tmp / "plain", payloads, args.samples)
            rounds.add(writer=write_shards(tmp / "shards", payloads, args.samples), sha256=sha256,
                       file_write=file_write, serial=sha256 + file_write, pipelined=max(sha256, file_write))
    best = {name: megabytes / rounds.best_seconds(name) for name in ("writer", "sha256", "file_write")}
    serial = 1 / (1 / best["sha256"] + 1 / best["file_write"])
    pipelined = min(best["sha256"], best["file_write"])
    print(json.dumps({
        "benchmark": "shard_writer",
        "samples": args.samples,
        "sample_kb": args.sample_kb,
        "megabytes": round(megabytes, 1),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "writer_mb_per_s": round(best["writer"], 1),
        "sha256_mb_per_s": round(best["sha256"], 1),
        "file_write_mb_per_s": round(best["file_write"], 1),
        "serial_mb_per_s": round(serial, 1),
        "ratio_writer_to_serial": round(best["writer"] / serial, 3),
        "ratio_writer_to_pipelined": round(best["writer"] / pipelined, 3),
        "median_of_rounds": {"ratio_writer_to_serial": rounds.median_ratio("serial", "writer"),
                             "ratio_writer_to_pipelined": rounds.median_ratio("pipelined", "writer")},
    }))


if __name__ == "__main__":
    main()
