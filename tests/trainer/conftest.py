"""A real local Ray cluster for the trainer tests: a head and a second node on 127.0.0.1, each a
`ray start --block` process of ours, stopped by PID at the end of the session."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

PROJECT = Path(__file__).resolve().parents[2]

# The trainer tests run tiny models: one intra-op thread is as fast, and on a loaded 2-core machine
# two threads per test made a step up to ten times slower.
torch.set_num_threads(1)
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RayCluster:
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]


def _ray_env() -> dict[str, str]:
    # RAY_AUTH_MODE=disabled: this cluster listens on loopback only, and Ray turns token auth on for
    # every later cluster once any run on the machine has written a token (~/.ray).
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="disabled",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):  # the user's cluster, not the test's
        env.pop(name, None)
    return env


@pytest.fixture
def ray_env() -> dict[str, str]:
    """The environment of a Ray process started by a test: loopback only, no usage stats, no
    cluster of the user's named."""
    return _ray_env()


def _gloo_rank(rank: int, port: int, world: int, target, args: tuple) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        target(rank, *args)
    finally:
        dist.destroy_process_group()


@pytest.fixture
def gloo_ranks():
    """run(target, *args, world=2): target(rank, *args) in `world` forked processes that form a gloo
    process group on 127.0.0.1 (what DistributedDataParallel on CPU workers runs on); it returns
    when all have, and raises if any failed. Results come back through files the target writes."""
    import torch.multiprocessing as mp

    def run(target, *args, world: int = 2) -> None:
        mp.start_processes(_gloo_rank, args=(_free_port(), world, target, args), nprocs=world, start_method="fork")

    return run


def _alive_nodes(dashboard_url: str) -> int:
    try:
        with urllib.request.urlopen(f"{dashboard_url}/nodes?view=summary", timeout=5) as resp:
            nodes = json.load(resp)["data"]["summary"]
        return sum(1 for n in nodes if n.get("raylet", {}).get("state") == "ALIVE")
    except (OSError, ValueError, KeyError):
        return 0


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory) -> RayCluster:
    gcs_port, dash_port = _free_port(), _free_port()
    env = _ray_env()
    logs = tmp_path_factory.mktemp("ray-logs")
    common = ["--node-ip-address", "127.0.0.1", "--block", "--disable-usage-stats"]
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dash_port), "--num-cpus", "2", *common],
        env=env, stdout=open(logs / "head.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    procs = [head]
    dashboard = f"http://127.0.0.1:{dash_port}"
    try:
        deadline = time.monotonic() + 90
        while _alive_nodes(dashboard) < 1:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not start: {(logs / 'head.log').read_text()[-2000:]}")
            time.sleep(0.5)
        node = subprocess.Popen(
            [str(BIN / "ray"), "start", "--address", f"127.0.0.1:{gcs_port}", "--num-cpus", "1", *common],
            env=env, stdout=open(logs / "node.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(node)
        while _alive_nodes(dashboard) < 2:
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"second ray node did not join: {(logs / 'node.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield RayCluster(f"127.0.0.1:{gcs_port}", dashboard, env)
    finally:
        for proc in reversed(procs):  # `ray start --block` stops the processes it started on SIGTERM
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


@pytest.fixture(scope="session")
def lesion_shards(tmp_path_factory) -> Path:
    """CBIS-shaped sample shards, lesion and random crops: enough samples (~60 train) for a loss
    curve over a few epochs."""
    from ingest.pipeline import run_job
    from ingest.sample_data.cbis_ddsm import make_cbis_sample
    from ingest.sources import cbis

    base = tmp_path_factory.mktemp("data")
    root = make_cbis_sample(base / "cbis", patients=12, seed=4, layout="tcia").root
    run_job(cbis.build_job(root=root, out=base / "shards", crops="both", random_side=96, shard_size=9,
                           val_fraction=0.1, progress=False))
    return base / "shards"


@pytest.fixture(scope="session")
def with_a_broken_png():
    """copy(shards, folder) -> (shard, key): a copy of the shard set whose first train shard's
    first image PNG is cut short (a real damaged member, for the bad-sample paths)."""
    return _with_a_broken_png


def _with_a_broken_png(shards: Path, copy: Path) -> tuple[str, str]:
    """A copy of the shard set whose first train shard's first PNG is zeros after its first 100
    bytes (its size, and so every member span, unchanged); (shard, key)."""
    shutil.copytree(shards, copy)
    shard = sorted((copy / "train").glob("shard-*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar]
    info, data = next((i, d) for i, d in members if i.name.endswith(".png") and ".mask." not in i.name)
    broken = data[:100] + bytes(len(data) - 100)
    members = [(i, broken if i is info else d) for i, d in members]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for member, payload in members:
            out.addfile(member, io.BytesIO(payload))
    shard.write_bytes(buf.getvalue())
    return f"train/{shard.name}", info.name.split(".", 1)[0]


@pytest.fixture(scope="session")
def exported_encoder(lesion_shards, tmp_path_factory) -> Path:
    """A tiny MIRAM pretrained briefly (one process) on lesion_shards and exported for timm:
    the .safetensors, its .json recipe beside it, and the run folder as `parent / "tiny-cpu"`."""
    from trainer.export_encoder import main as export_main
    from trainer.pretrain import main as pretrain_main

    base = tmp_path_factory.mktemp("probe-encoder")
    args = ["--config", str(PROJECT / "trainer" / "configs" / "tiny_cpu.yaml"), f"data.sources=[{{root: {lesion_shards}}}]",
            f"run.storage_path={base}", "run.use_ray=false", "optim.epochs=1", "data.batch_size=4",
            "run.max_steps_per_epoch=2"]
    assert pretrain_main(args) == 0
    out = base / "tiny-cpu.safetensors"
    assert export_main([str(base / "tiny-cpu"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def mlvicx_run(lesion_shards, tmp_path_factory) -> Path:
    """A tiny MLVICX (ResNet with context blocks in line) pretrained briefly in one process on
    lesion_shards: its run folder."""
    from trainer.pretrain import main as pretrain_main

    base = tmp_path_factory.mktemp("mlvicx-run")
    args = ["--config", str(PROJECT / "trainer" / "configs" / "tiny_cpu.yaml"), f"data.sources=[{{root: {lesion_shards}}}]",
            f"run.storage_path={base}", "run.use_ray=false", "run.name=mlvicx-tiny", "model.name=mlvicx_resnet18_tiny",
            "model.options={}", "data.augment=none", "optim.epochs=1", "data.batch_size=4", "run.max_steps_per_epoch=2"]
    assert pretrain_main(args) == 0
    return base / "mlvicx-tiny"
