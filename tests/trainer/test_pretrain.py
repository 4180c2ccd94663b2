"""trainer/pretrain.py as users run it: in one process, and through `ray job submit` on a real
two-node local Ray cluster; checkpoints, resume at the right step, falling loss, pictures."""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


PROJECT = Path(__file__).resolve().parents[2]
TINY = PROJECT / "trainer" / "configs" / "tiny_cpu.yaml"


def epoch_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "epochs.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def overrides(shards: Path, storage: Path, epochs: int, **extra) -> list[str]:
    items = {"data.sources": f"[{{root: {shards}}}]", "run.storage_path": str(storage), "optim.epochs": str(epochs),
             "optim.warmup_epochs": "1", "data.batch_size": "8", **extra}
    return [f"{k}={v}" for k, v in items.items()]


def test_one_process_run_lowers_loss_checkpoints_and_resumes(lesion_shards, tmp_path, capsys):
    from trainer.pretrain import main

    args = ["--config", str(TINY), *overrides(lesion_shards, tmp_path, 4, **{"run.use_ray": "false"})]
    assert main(args) == 0
    run_dir = tmp_path / "tiny-cpu"
    rows = epoch_rows(run_dir)
    assert [int(float(r["epoch"])) for r in rows] == [0, 1, 2, 3]
    said = capsys.readouterr().out.splitlines()
    progress = [line for line in said if line.startswith("epoch ")]
    assert [line.split()[1] for line in progress] == ["1/4", "2/4", "3/4", "4/4"]
    assert not any(line.startswith("{") for line in said)  # the epoch line once, not the metrics again
    assert f"last checkpoint: {run_dir / 'checkpoints' / 'epoch_0003'}" in said
    assert any(line.startswith("finished after epoch 4/4, step ") for line in said)
    assert f"loss {float(rows[0]['loss']):.4f}" in progress[0] and progress[-1].endswith("eta 0m00s")
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    # One process, DataLoader workers decoding beside the step on 2 cores: some waiting for batches, not all of it
    waits = [float(r["data_wait"]) for r in rows]
    assert all(0 < w < 1 for w in waits) and f"(data wait {waits[0]:.0%})" in progress[0]
    assert (run_dir / "config.yaml").exists() and list((run_dir / "images").glob("step_*.png"))
    assert main(args) == 2  # an existing run is not silently continued
    steps_per_epoch = int(float(rows[0]["step"]))
    assert main([*args, "--resume"]) == 0  # finished: nothing trained, said so
    assert "nothing left to train: the run had finished its 4 epochs" in capsys.readouterr().out
    assert len(epoch_rows(run_dir)) == 4
    assert main([*args, "--resume", "optim.epochs=6"]) == 0
    rows = epoch_rows(run_dir)
    assert [int(float(r["epoch"])) for r in rows] == [0, 1, 2, 3, 4, 5]
    assert int(float(rows[-1]["step"])) == 6 * steps_per_epoch
    latest = sorted((run_dir / "checkpoints").glob("epoch_*"))[-1]
    state = torch.load(latest / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 5 and state["step"] == 6 * steps_per_epoch and state["config"]["optim"]["epochs"] == 6


def test_a_run_resumed_from_a_checkpoint_trains_on_as_the_uninterrupted_run_did(lesion_shards, tmp_path):
    """4 epochs straight, and the same run resumed from its epoch-2 checkpoint: the last two
    epochs are the same numbers, with DataLoader workers. Masks and drop-paths draw from torch's
    generator, seeded anew each epoch from (run.seed, rank, epoch), as the stream seeds its
    shuffles and augmentation; the DataLoader draws its workers' seed from a generator of its own
    (from torch's, the resumed run's draw at its first epoch shifted every mask after it)."""
    import shutil

    from trainer.pretrain import main

    more = {"run.use_ray": "false", "run.keep_checkpoints": "4", "data.num_workers": "2"}
    args = ["--config", str(TINY), *overrides(lesion_shards, tmp_path / "straight", 4, **more)]
    assert main(args) == 0
    straight = tmp_path / "straight" / "tiny-cpu"
    resumed = tmp_path / "resumed" / "tiny-cpu"
    shutil.copytree(straight, resumed)
    for later in sorted((resumed / "checkpoints").glob("epoch_*"))[2:]:
        shutil.rmtree(later)
    args = ["--config", str(TINY), *overrides(lesion_shards, tmp_path / "resumed", 4, **more), "--resume"]
    assert main(args) == 0
    columns = ("epoch", "step", "loss", "loss_coarse", "loss_fine", "lr")
    expected = [{k: r[k] for k in columns} for r in epoch_rows(straight)]
    assert [{k: r[k] for k in columns} for r in epoch_rows(resumed)] == expected


def test_a_resumed_run_follows_its_new_config_schedule_and_optimizer_settings(lesion_shards, tmp_path):
    """Resumed with more epochs and another weight decay: the cosine runs over the new length (the
    checkpoint's scheduler state had the old one, and the added epochs trained at min_lr), and
    the optimizer takes the new weight decay (torch restores the saved one with the moments)."""
    from trainer.pretrain import main

    more = {"run.use_ray": "false", "run.log_every_steps": "1", "optim.min_lr": "0.0"}
    args = ["--config", str(TINY), *overrides(lesion_shards, tmp_path, 2, **more)]
    assert main(args) == 0
    run_dir = tmp_path / "tiny-cpu"
    per_epoch = int(float(epoch_rows(run_dir)[0]["step"]))
    assert main([*args, "--resume", "optim.epochs=4", "optim.weight_decay=0.125"]) == 0
    with open(run_dir / "steps.csv", newline="") as fh:
        logged = {int(float(r["step"])): float(r["lr"]) for r in csv.DictReader(fh)}
    assert sorted(logged) == list(range(1, 4 * per_epoch + 1))
    peak, warmup, total = 0.1 * 8 / 256, per_epoch, 4 * per_epoch  # tiny_cpu: blr 0.1, batch 8, 1 warm-up epoch
    for step in range(2 * per_epoch + 1, 4 * per_epoch + 1):  # every step after the resume: MAE's cosine
        assert logged[step] == pytest.approx(0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))),
                                             rel=1e-6), step
    assert logged[3 * per_epoch] > 0
    latest = sorted((run_dir / "checkpoints").glob("epoch_*"))[-1]
    groups = torch.load(latest / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert sorted({g["weight_decay"] for g in groups}) == [0.0, 0.125]  # no decay on norms and biases


def test_accumulated_batches_make_one_optimizer_step_a_group(lesion_shards, tmp_path):
    """optim.accumulate_steps=3 over 5 batches an epoch: groups of 3 and 2, so 2 optimizer steps
    an epoch, each logged once, and the checkpoint's step counts steps, not batches."""
    from trainer.pretrain import main

    more = {"run.use_ray": "false", "optim.accumulate_steps": "3", "run.max_steps_per_epoch": "5",
            "run.log_every_steps": "1"}
    assert main(["--config", str(TINY), *overrides(lesion_shards, tmp_path, 2, **more)]) == 0
    run_dir = tmp_path / "tiny-cpu"
    assert [int(float(r["step"])) for r in epoch_rows(run_dir)] == [2, 4]
    with open(run_dir / "steps.csv", newline="") as fh:
        assert [int(float(r["step"])) for r in csv.DictReader(fh)] == [1, 2, 3, 4]
    latest = sorted((run_dir / "checkpoints").glob("epoch_*"))[-1]
    assert torch.load(latest / "checkpoint.pt", weights_only=True)["step"] == 4


@pytest.mark.parametrize("stop, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "stopped (SIGTERM)")])
def test_ctrl_c_or_sigterm_ends_a_one_process_run_saying_how_to_resume_and_resume_goes_on(lesion_shards, tmp_path,
                                                                                         stop, code, said):
    args = [sys.executable, str(PROJECT / "trainer" / "pretrain.py"), "--config", str(TINY),
            *overrides(lesion_shards, tmp_path, 400, **{"run.use_ray": "false"})]
    run = subprocess.Popen(args, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"))
    checkpoints = tmp_path / "tiny-cpu" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("epoch_0001")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    run.send_signal(stop)
    _, err = run.communicate(timeout=120)
    assert run.returncode == code, err[-2000:]
    assert f"{said}; the same command with --resume continues from the last checkpoint" in err
    assert "Traceback" not in err
    done = int(float(epoch_rows(tmp_path / "tiny-cpu")[-1]["epoch"]))
    resumed = subprocess.run([*args, f"optim.epochs={done + 2}", "--resume"], cwd=PROJECT, capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    epochs = [int(float(r["epoch"])) for r in epoch_rows(tmp_path / "tiny-cpu")]
    assert epochs == list(range(done + 2))  # each epoch once: rows past the checkpoint resumed from are dropped


def test_a_long_epoch_shows_step_lines_as_often_as_asked(lesion_shards, tmp_path, capsys):
    from trainer.pretrain import main

    extra = {"run.use_ray": "false", "run.log_every_steps": "1", "data.batch_size": "2"}
    assert main(["--config", str(TINY), *overrides(lesion_shards, tmp_path / "a", 1, **extra),
                 "run.progress_every_s=0"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    steps = int(float(epoch_rows(tmp_path / "a" / "tiny-cpu")[0]["step"]))
    assert len(lines) == steps >= 2
    assert lines[0].startswith(f"step 1 of epoch 1/1 (1/{steps}): loss ") and "samples/s (data wait " in lines[0]
    assert lines[-1].endswith("epoch ends in 0m00s")
    assert main(["--config", str(TINY), *overrides(lesion_shards, tmp_path / "b", 1, **extra)]) == 0  # every 60 s
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]


def test_a_bad_sample_stops_the_run_by_name_or_is_skipped_and_counted(lesion_shards, with_a_broken_png, tmp_path,
                                                                       capsys):
    from trainer.pretrain import main

    shard, key = with_a_broken_png(lesion_shards, tmp_path / "shards")
    args = ["--config", str(TINY), *overrides(tmp_path / "shards", tmp_path / "stop", 2, **{"run.use_ray": "false"})]
    assert main(args) == 1
    assert f"{shard}: sample {key}: PNG member does not decode" in capsys.readouterr().err
    args = ["--config", str(TINY), *overrides(tmp_path / "shards", tmp_path / "skip", 2, **{"run.use_ray": "false",
                                                                                        "data.bad_samples": "skip"})]
    with pytest.warns(UserWarning, match=rf"skipping a bad sample: .*{shard}: sample {key}"):
        assert main(args) == 0
    rows = epoch_rows(tmp_path / "skip" / "tiny-cpu")
    assert len(rows) == 2 and all(int(float(r["skipped_samples"])) >= 1 for r in rows)
    clean = ["--config", str(TINY), *overrides(lesion_shards, tmp_path / "clean", 1, **{"run.use_ray": "false"})]
    assert main(clean) == 0 and int(float(epoch_rows(tmp_path / "clean" / "tiny-cpu")[0]["skipped_samples"])) == 0


def test_data_that_no_worker_could_read_is_refused_before_ray_starts(lesion_shards, tmp_path, capsys):
    """Checked once on the driver (cards, splits, crop kinds, an epoch plan for every rank), where
    each Ray worker used to raise it as a traceback, after the cluster had started."""
    from trainer.pretrain import main

    cases = [
        (["data.sources=[{root: /nowhere}]"], "data error: /nowhere/dataset.json: no dataset card"),
        ([f"data.sources=[{{root: {lesion_shards}, split: nope}}]"], "no 'nope' split"),
        ([f"data.sources=[{{root: {lesion_shards}}}]", "run.workers=64"], "cannot fill one batch per rank: world_size 64"),
        ([f"data.sources=[{{root: {lesion_shards}}}]", "data.augment=simclr"], "unknown augmentation 'simclr'"),
        # tiny_cpu.yaml's MIRAM options, for a method that does not take fine_attention
        ([f"data.sources=[{{root: {lesion_shards}}}]", "model.name=mae_vit_tiny_patch16"],
         "config error: model.options: 'fine_attention' not taken by mae_vit_tiny_patch16; its options: patch_size"),
    ]
    for extra, said in cases:
        assert main(["--config", str(TINY), f"run.storage_path={tmp_path}", *extra]) == 2
        assert said in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no run folder made


def test_a_ray_run_that_checkpointed_to_s3_is_not_continued_by_accident(s3_endpoint, tmp_path, monkeypatch, capsys):
    from trainer.config import load_config
    from trainer.pretrain import has_checkpoints, main, run_folder

    monkeypatch.chdir(tmp_path)  # a URI storage_path keeps metrics and pictures in ./runs/NAME
    with s3_endpoint.fs.open_output_stream(f"{s3_endpoint.bucket}/runs/tiny-cpu/checkpoint_000003/checkpoint.pt") as out:
        out.write(b"written by Ray Train")
    args = ["--config", str(TINY), f"run.storage_path={s3_endpoint.uri('runs')}", "data.sources=[{root: /nowhere}]"]
    assert main(args) == 2
    assert "already has checkpoints" in capsys.readouterr().err
    other = load_config(TINY, [f"run.storage_path={s3_endpoint.uri('runs')}", "run.name=fresh"])
    assert not has_checkpoints(other, run_folder(other))


def test_embedded_ray_run_ends_cleanly(lesion_shards, ray_env, tmp_path):
    """`python trainer/pretrain.py` with no cluster starts an embedded Ray and finishes without
    Ray Train's placement-group cleaner losing its State API (it used to log that every second,
    or stall the run's end 12 s with a traceback; see start_embedded_ray), and its console shows
    each epoch once, without Ray Train's lines per worker per report."""
    args = ["--config", str(TINY), *overrides(lesion_shards, tmp_path, 2, **{"run.workers": "1"})]
    done = subprocess.run([sys.executable, "trainer/pretrain.py", *args], cwd=PROJECT, env=ray_env,
                          capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "finished after epoch" in done.stdout and list((tmp_path / "tiny-cpu").glob("checkpoint_*"))
    # Ray Train's controller asks its autoscaling coordinator for the workers with a fixed 5 s
    # timeout; on a loaded machine that times out, and Ray logs the traceback as "safe to ignore"
    # (autoscaling_coordinator_client.py). Not this project's output: left out of the check.
    output = re.sub(r"[^\n]*Failed to send resource request.*?GetTimeoutError[^\n]*\n", "", output, flags=re.S)
    for complaint in ("State API may be temporarily unavailable", "PlacementGroupCleaner", "Traceback",
                      "Reporting training result", "Checkpoint successfully created",  # per worker per epoch
                      "PreemptionWatcher"):  # an error line at every start, from a watcher one machine never needs
        assert complaint not in output, output[-3000:]
    for epoch in (1, 2):  # rank 0's epoch line, once (Ray Train's print patch printed it twice)
        assert output.count(f"epoch {epoch}/2 step") == 1, output[-3000:]


def test_embedded_ray_run_streams_shards_from_s3_and_checkpoints_there(s3_endpoint, lesion_shards, ray_env, tmp_path):
    """Shards and Ray Train's storage both in a bucket (no shared filesystem), as on a cloud
    cluster: the workers stream the set over S3 and Ray uploads the checkpoint next to it."""
    shards = s3_endpoint.upload(lesion_shards, "shards/cbis")
    args = ["--config", str(TINY), f"data.sources=[{{root: '{shards}'}}]", "optim.epochs=1", "optim.warmup_epochs=0",
            "data.batch_size=8", "run.workers=1", "run.name=on-s3", f"run.storage_path={s3_endpoint.uri('runs')}"]
    done = subprocess.run([sys.executable, str(PROJECT / "trainer" / "pretrain.py"), *args], cwd=tmp_path,
                          env=dict(ray_env, **{k: os.environ[k] for k in os.environ if k.startswith("AWS_")}),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "finished after epoch" in done.stdout
    import pyarrow.fs

    stored = s3_endpoint.fs.get_file_info(pyarrow.fs.FileSelector(f"{s3_endpoint.bucket}/runs/on-s3", recursive=True))
    assert any(info.base_name == "checkpoint.pt" and "/checkpoint_" in info.path for info in stored), stored
    assert list((tmp_path / "runs" / "on-s3").glob("steps.csv"))  # metrics stay on the driver


def test_workers_this_machine_cannot_hold_are_refused_before_ray_train_waits_for_them(lesion_shards, ray_env,
                                                                                       tmp_path):
    """On the embedded Ray no node will ever join: Ray Train would retry the worker group's start
    every 60 s for good. The run is refused, saying what it asked for and what there is."""
    cpus = os.cpu_count() + 1
    args = ["--config", str(TINY), *overrides(lesion_shards, tmp_path, 1, **{"run.workers": "1",
                                                                             "run.cpus_per_worker": str(cpus)})]
    done = subprocess.run([sys.executable, "trainer/pretrain.py", *args], cwd=PROJECT, env=ray_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, (done.stdout + done.stderr)[-3000:]
    assert f"pretrain: resources: run.workers=1 workers each need {cpus} CPU" in done.stderr
    assert f"(they have: {os.cpu_count()} CPU)" in done.stderr and "no node will join" in done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.glob("tiny-cpu/checkpoint_*"))


def test_a_cluster_short_of_nodes_for_the_workers_is_warned_of_while_ray_train_waits(ray_cluster, lesion_shards,
                                                                                     tmp_path):
    """Head 2 CPUs, second node 1: two workers of 2 CPUs each fit one at a time. On a cluster an
    autoscaler may add nodes, so the job warns (naming both nodes) and waits; the test stops it.
    run.use_gpu=auto on this cluster without GPUs is warned of too."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from cluster.submit import entrypoint, runtime_env

    client = JobSubmissionClient(ray_cluster.dashboard_url)
    more = overrides(lesion_shards, tmp_path, 1, **{"run.workers": "2", "run.cpus_per_worker": "2",
                                                    "run.use_gpu": "auto"})
    job = client.submit_job(entrypoint=entrypoint("trainer/configs/tiny_cpu.yaml", more, resume=False),
                            runtime_env=runtime_env(PROJECT))
    try:
        deadline = time.monotonic() + 240
        while "pretrain: warning: run.workers=2" not in (logs := client.get_job_logs(job)):
            assert client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED), logs[-3000:]
            assert time.monotonic() < deadline, logs[-3000:]
            time.sleep(1)
        assert "hold 1 such worker(s) (they have: 2 CPU; 1 CPU)" in logs, logs[-3000:]
        assert "autoscaler" in logs
        assert "pretrain: warning: run.use_gpu=auto and the cluster has no GPU now" in logs  # a CPU-only cluster
    finally:
        client.stop_job(job)
        deadline = time.monotonic() + 60
        while client.get_job_status(job) not in (JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED):
            assert time.monotonic() < deadline
            time.sleep(0.5)


def submit(cluster, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", cluster.dashboard_url,
           "--working-dir", str(PROJECT), "--", "python", "trainer/pretrain.py", *args]
    return subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=600)


def test_ray_job_submit_two_workers_checkpoints_and_resumes(ray_cluster, lesion_shards, tmp_path):
    more = {"run.workers": "2", "validation.every_epochs": "1", "validation.batch_size": "2"}
    args = ["--config", "trainer/configs/tiny_cpu.yaml", *overrides(lesion_shards, tmp_path, 3, **more)]
    done = submit(ray_cluster, args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / "tiny-cpu"
    rows = epoch_rows(run_dir)
    assert [int(float(r["epoch"])) for r in rows] == [0, 1, 2]
    assert list(run_dir.glob("checkpoint_*")), sorted(p.name for p in run_dir.iterdir())
    steps_per_epoch = int(float(rows[0]["step"]))
    # the second submission goes through the project's launcher (cluster/submit.py)
    resumed = subprocess.run([sys.executable, "-m", "cluster.submit", "--address", ray_cluster.dashboard_url, "--wait",
                              *args, "--resume", "optim.epochs=5"],
                             cwd=PROJECT, env=ray_cluster.env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "submitted pretrain-tiny-cpu-" in resumed.stdout and "SUCCEEDED" in resumed.stdout
    rows = epoch_rows(run_dir)
    assert [int(float(r["epoch"])) for r in rows] == [0, 1, 2, 3, 4]
    assert int(float(rows[3]["step"])) == 4 * steps_per_epoch
    assert all(float(r["val_loss"]) > 0 for r in rows)  # both ranks ran each pass (no collective to hang on)
    # Over the whole run, first two epochs against the last two: an epoch here is 3 steps of 16
    # crops, lesion and background mixed, so one epoch's loss against another's is mostly which
    # crops it drew (the 3-epoch run alone went 0.67, 0.84, 0.85 with one draw of crops and fell
    # with another).
    losses = [float(r["loss"]) for r in rows]
    assert sum(losses[-2:]) < sum(losses[:2]), losses


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _train_workers(pid: int) -> list[int]:
    workers = []
    for child in _descendants(pid):
        try:
            if (Path("/proc") / str(child) / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                workers.append(child)
        except OSError:
            pass
    return workers


def test_a_worker_killed_mid_run_is_replaced_and_the_run_goes_on_from_its_checkpoint(lesion_shards, ray_env, tmp_path):
    """run.max_failures: a Ray Train worker that dies (SIGKILL, as a lost node or the OOM killer)
    costs a restart from the latest checkpoint, not the run; every epoch is logged once."""
    epochs = 12
    args = ["--config", str(TINY), *overrides(lesion_shards, tmp_path, epochs, **{"run.max_failures": "1"})]
    # The survivor waits in an all-reduce for its dead peer until Ray Train's shutdown of the
    # group gives up on it (30 s by default; a few here, where nothing else is slow to end)
    env = dict(ray_env, TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S="3")
    run = subprocess.Popen([sys.executable, "trainer/pretrain.py", *args], cwd=PROJECT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "tiny-cpu"
    deadline = time.monotonic() + 300
    while not list(run_dir.glob("checkpoint_*")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = _train_workers(run.pid)
    assert len(workers) == 2, run.poll()
    os.kill(workers[-1], signal.SIGKILL)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output[-3000:]
    assert output.count("Started training worker group of size 2") == 2, output[-3000:]  # the restart
    rows = epoch_rows(run_dir)
    assert [int(float(r["epoch"])) for r in rows] == list(range(epochs))
    steps_per_epoch = int(float(rows[0]["step"]))
    assert f"finished after epoch {epochs}/{epochs}, step {epochs * steps_per_epoch}:" in output
