"""trainer/pretrain.py on Ray: a worker's error that the driver can say in one line (a bad sample,
GPU memory) ends `ray job submit` with that line, as the same run in one process does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def test_a_bad_sample_in_a_ray_worker_ends_the_job_naming_the_shard_and_sample(ray_cluster, lesion_shards,
                                                                               with_a_broken_png, tmp_path):
    shard, key = with_a_broken_png(lesion_shards, tmp_path / "shards")
    args = ["--config", "trainer/configs/tiny_cpu.yaml", f"data.sources=[{{root: {tmp_path / 'shards'}}}]",
            f"run.storage_path={tmp_path / 'runs'}", "run.workers=1", "optim.epochs=1", "data.batch_size=8",
            "data.num_workers=2"]  # in a loader process, as every real config reads
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_cluster.dashboard_url,
           "--working-dir", str(PROJECT), "--", "python", "trainer/pretrain.py", *args]
    done = subprocess.run(cmd, env=ray_cluster.env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    said = [line for line in output.splitlines() if line.startswith("pretrain: ")]
    assert said and said[0].endswith(f"{shard}: sample {key}: PNG member does not decode: IDAT chunk at byte 33 "
                                     "fails its CRC"), output[-3000:]
    assert "data.bad_samples=skip trains without the samples that cannot be read" in output
