"""Self-supervised pretraining on Ray Train, streaming medshards shards into every worker.

    python trainer/pretrain.py --config trainer/configs/miram_cbis.yaml [section.key=value ...]
    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python trainer/pretrain.py --config trainer/configs/miram_cbis.yaml

Without a cluster (no RAY_ADDRESS) the script starts an embedded local Ray. `run.use_ray=false`
runs the same loop in this one process, for debugging. `--resume` continues a run from its latest
checkpoint. This is the one file that touches Ray (marked RAY below).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script (`python trainer/pretrain.py`): make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from shards import storage
from shards.stop_signal import Terminated, sigterm_as_interrupt
from shards.stream import SampleError
from shards.atomic_files import atomic_write_bytes, sync_folder
from trainer.checkpoints import (LOCAL_CHECKPOINTS, RAY_CHECKPOINT_PREFIX, SCORE, best_checkpoint, keep_by_change,
                                 kept, local_checkpoints, read_metrics, score)
from trainer.config import ConfigError, ExperimentConfig, config_from_dict, dump_config, load_config
from trainer.dry_run import dry_run
from trainer.gpu_memory import GpuMemoryError
from trainer.loop import check_data, train
from trainer.patient_overlap import held_out_patients_in_training
from trainer.registry import model_config_error
from trainer.resume_changes import DATA_RECORD, SAVED_CONFIG, data_record, refusal, resume_changes
from trainer.run_log import finished_line
from trainer.worker_resources import gpu_choice, scaling_resources, shortfall


def run_folder(config: ExperimentConfig) -> Path:
    """Where metrics, pictures and the resolved config go. Shared storage given as a URI keeps
    checkpoints there (Ray uploads them) and these files in ./runs/NAME on the driver's rank 0."""
    base = Path("runs") if storage.is_uri(config.run.storage_path) else Path(config.run.storage_path)
    return (base / config.run.name).resolve()


class LocalSession:
    """One process, no Ray: checkpoints in RUN/checkpoints/epoch_NNNN, those run.keep_by keeps."""

    rank, world_size = 0, 1

    def __init__(self, run_dir: Path, keep: int, keep_by: str = "newest"):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.run_dir, self.folder = run_dir, run_dir / LOCAL_CHECKPOINTS
        self.keep, self.keep_by = keep, keep_by

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is None:  # the epoch line said it (and epochs.csv has it)
            return
        target = self.folder / f"epoch_{int(metrics['epoch']):04d}"
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.mkdir(exist_ok=True)
        for item in checkpoint_dir.iterdir():  # on disk before the folder is named complete: a machine
            # that loses power (a preempted VM) must not leave epoch_NNNN holding an empty checkpoint.pt
            atomic_write_bytes(tmp / item.name, item.read_bytes())
        tmp.rename(target)
        sync_folder(self.folder)
        found = local_checkpoints(self.run_dir)
        keeping = kept([score(read_metrics(folder)) for folder in found], self.keep, self.keep_by)
        for old in (folder for folder, keep in zip(found, keeping, strict=True) if not keep):
            for item in old.iterdir():
                item.unlink()
            old.rmdir()

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        found = local_checkpoints(self.run_dir)
        yield found[-1] if found else None


class RaySession:
    """RAY: the few places the loop meets Ray Train: rank, device, DDP, report, restore."""

    def __init__(self, keep_by: str = "newest"):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self._train = ray.train
        self._scored = keep_by == SCORE

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP across workers. BatchNorm statistics are synchronised across GPUs (SimCLR/VICReg
        heads depend on batch statistics); a method that leaves some parameters unused in a step
        (PCRLv2 trains one pyramid level per step) says so with `uses_every_parameter = False`."""
        import ray.train.torch

        if self.world_size > 1 and self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        unused = not getattr(model, "uses_every_parameter", True)
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused})

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        checkpoint = self._train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        if self._scored and checkpoint is not None:  # Ray ranks a checkpoint without the metric highest
            metrics = {SCORE: float("nan"), **metrics}
        self._train.report(metrics, checkpoint=checkpoint)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        checkpoint = self._train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)


# RAY: Ray Train modules whose logger writes a line per worker per report ("Reporting training
# result ...", "Checkpoint successfully created ..."): 2 x workers lines an epoch on the console,
# where rank 0's epoch line says it once. Their warnings still show. (Internal modules, one of
# whose loggers is named by its file path: looked up, and left alone if they move.)
_PER_REPORT_LOGGING = ("ray.train.v2._internal.execution.context", "ray.train.v2._internal.execution.storage")


def quiet_per_report_logging() -> None:
    import importlib

    for name in _PER_REPORT_LOGGING:
        try:
            logger = importlib.import_module(name).logger
        except (ImportError, AttributeError):
            continue
        if isinstance(logger, logging.Logger):
            logger.setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict) -> None:
    """RAY: what each Ray Train worker runs."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    quiet_per_report_logging()
    config = config_from_dict(loop_config["config"])
    train(config, RaySession(config.run.keep_by), Path(loop_config["run_dir"]))


def start_embedded_ray() -> None:
    """RAY: a single-machine Ray bound to loopback (no network set-up), with its dashboard on a
    free loopback port and RAY_API_SERVER_ADDRESS naming it, set before the node starts so that
    every Ray process inherits it.

    Why: Ray Train's PlacementGroupCleaner asks the State API (served by the dashboard) every
    second whether the run's controller is alive. With no dashboard it logged "State API may be
    temporarily unavailable" each second; and where an earlier `ray start` had left its address in
    /tmp/ray/ray_current_cluster, each query waited 40 s for that dead cluster, so every run ended
    with a 12 s stall and a GetTimeoutError traceback. The dashboard's processes take about 0.8 GB."""
    import socket

    import ray

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    # One machine of our own is never preempted; Ray Train's watcher for preempted nodes only made
    # Ray log an error line ("PreemptionWatcher ... max_restarts > 0") at every start. On a cluster
    # (RAY_ADDRESS set) it stays on.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=port)


class ResourcesError(Exception):
    """The embedded Ray cannot hold the workers the config asks for (a cluster may still grow)."""


def check_resources(config: ExperimentConfig, use_gpu: bool, embedded: bool) -> None:
    """RAY: the workers checked against the nodes Ray has now. On the embedded Ray no node will
    join, so a shortfall is a ResourcesError; Ray Train would wait for it for good. On a cluster
    an autoscaler may add nodes: a warning, and the run goes on to wait for them."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    problem = shortfall(config.run, use_gpu, nodes)
    if problem is None:
        return
    if embedded:
        ray.shutdown()
        raise ResourcesError(f"{problem} (this machine's own Ray: no node will join it)")
    print(f"pretrain: warning: {problem}. Ray Train now waits for the cluster's autoscaler to add such nodes, "
          "retrying every 60 s; a cluster without one never starts the run (stop it with `ray job stop`)",
          file=sys.stderr, flush=True)


def fit_on_ray(config: ExperimentConfig, run_dir: Path) -> None:
    """RAY: TorchTrainer with ScalingConfig / RunConfig / CheckpointConfig / FailureConfig."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Ray Train turns a worker's print into a log record and, where Ray has wrapped stdout, prints
    # it as well (redirected_print in ray/train/v2/_internal/logging/patch_print.py, Ray 2.60):
    # every epoch line reached the console twice. Ray Train passes this variable on to the workers.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    embedded = not os.environ.get("RAY_ADDRESS")
    if embedded:
        start_embedded_ray()
    else:  # set by `ray job submit`, or by the user: join that cluster
        ray.init()
    use_gpu, warning = gpu_choice(config.run, ray.cluster_resources().get("GPU", 0), embedded)
    if warning:
        print(f"pretrain: warning: {warning}", file=sys.stderr, flush=True)
    check_resources(config, use_gpu, embedded)
    where = config.run.storage_path
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "run_dir": str(run_dir)},
        scaling_config=ScalingConfig(num_workers=config.run.workers, use_gpu=use_gpu,
                                     resources_per_worker=scaling_resources(config.run, use_gpu),
                                     accelerator_type=config.run.accelerator_type),
        run_config=RunConfig(
            name=config.run.name,
            storage_path=where if storage.is_uri(where) else str(Path(where).resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=config.run.keep_checkpoints, **(
                {"checkpoint_score_attribute": SCORE, "checkpoint_score_order": "min"}
                if config.run.keep_by == SCORE else {})),
            failure_config=FailureConfig(max_failures=config.run.max_failures),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.WorkerGroupError as exc:  # a worker's error that main() says in a line, not Ray's traceback
        said = [e for e in exc.worker_failures.values() if isinstance(e, (SampleError, GpuMemoryError))]
        if said:
            raise said[0] from exc
        raise
    print(finished_line(result.metrics, config.optim.epochs) if result.metrics else nothing_left(config), flush=True)
    if result.checkpoint is not None:
        print(f"last checkpoint: {result.checkpoint.path}", flush=True)


def nothing_left(config: ExperimentConfig) -> str:
    """The last line of a resumed run that had no epoch left to train."""
    return (f"nothing left to train: the run had finished its {config.optim.epochs} epochs "
            "(a higher optim.epochs with --resume trains on)")


def ray_run_location(config: ExperimentConfig) -> str:
    """Where Ray Train keeps the run's checkpoint_* folders: storage_path/NAME (a folder or a URI)."""
    return storage.join(config.run.storage_path, config.run.name)


def checkpoints_of(config: ExperimentConfig, run_dir: Path) -> str | Path:
    """Where the run's checkpoint folders are: Ray Train's, or the one-process run's folder."""
    return ray_run_location(config) if config.run.use_ray else run_dir


def has_checkpoints(config: ExperimentConfig, run_dir: Path) -> bool:
    """Whether the run already checkpointed: in one process (RUN/checkpoints/) or through Ray
    Train (checkpoint_* under storage_path/NAME, a folder or an object store's prefix)."""
    if (run_dir / LOCAL_CHECKPOINTS).is_dir() and any((run_dir / LOCAL_CHECKPOINTS).iterdir()):
        return True
    return any(name.startswith(RAY_CHECKPOINT_PREFIX) for name in storage.list_names(ray_run_location(config)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="experiment YAML (trainer/configs/)")
    parser.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config, its data and its model and print the run's plan; start nothing")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.epochs=10 run.workers=4")
    args = parser.parse_intermixed_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"pretrain: config error: {exc}", file=sys.stderr)
        return 2
    if problem := model_config_error(config.model.name, config.model.options):
        print(f"pretrain: config error: {problem}", file=sys.stderr)
        return 2
    run_dir = run_folder(config)
    if has_checkpoints(config, run_dir) and not args.resume:
        print(f"pretrain: run {config.run.name!r} already has checkpoints in {run_dir}; pass --resume to continue "
              "it, or choose another run.name", file=sys.stderr)
        return 2
    if args.resume and config.run.use_ray and (problem := keep_by_change(run_dir, config.run.keep_by)):
        print(f"pretrain: config error: {problem}", file=sys.stderr)
        return 2
    world_size = config.run.workers if config.run.use_ray else 1
    try:  # here, once: not in every worker after the cluster has started, as a traceback each
        plan = check_data(config, world_size)
        record = data_record(config, plan.channels, plan.image_size, plan.sources)
        overlaps = held_out_patients_in_training(config)
    except (OSError, ValueError) as exc:
        print(f"pretrain: data error: {exc}", file=sys.stderr)
        return 2
    refused, changed = resume_changes(run_dir, config, record) if args.resume else ([], [])
    if refused:
        print(f"pretrain: config error: {refusal(config.run.name, refused)}", file=sys.stderr)
        return 2
    for problem in overlaps:
        print(f"pretrain: warning: {problem}", file=sys.stderr, flush=True)
    if args.dry_run:
        return dry_run(config, plan, world_size, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / SAVED_CONFIG, dump_config(config).encode())  # what --resume compares with
    atomic_write_bytes(run_dir / DATA_RECORD, (json.dumps(record, indent=1) + "\n").encode())
    print(f"run folder: {run_dir}", flush=True)
    if changed:
        print(f"resuming run {config.run.name!r} with changes: " + "; ".join(changed), flush=True)
    try:
        if config.run.use_ray:
            fit_on_ray(config, run_dir)
        else:
            with sigterm_as_interrupt():  # a scheduler's stop, as Ctrl-C (a run on Ray is Ray's to stop)
                last = train(config, LocalSession(run_dir, config.run.keep_checkpoints, config.run.keep_by), run_dir)
            print(finished_line(last, config.optim.epochs) if last else nothing_left(config), flush=True)
            if found := local_checkpoints(run_dir):
                print(f"last checkpoint: {found[-1]}", flush=True)
    except ResourcesError as exc:
        print(f"pretrain: resources: {exc}", file=sys.stderr)
        return 2
    except SampleError as exc:
        print(f"pretrain: {exc}\n  `shards verify` names every damaged shard of a set; data.bad_samples=skip "
              "trains without the samples that cannot be read (each named in a warning, and counted)",
              file=sys.stderr)
        return 1
    except GpuMemoryError as exc:
        print(f"pretrain: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        stopped = isinstance(exc, Terminated)
        print(f"\npretrain: {'stopped (SIGTERM)' if stopped else 'interrupted'}; the same command with --resume "
              f"continues from the last checkpoint (written every {config.run.checkpoint_every_epochs} epoch(s))",
              file=sys.stderr)
        return 143 if stopped else 130
    print(f"metrics: {run_dir / 'epochs.csv'}, {run_dir / 'steps.csv'}, {run_dir / 'tensorboard'}\n"
          f"pictures: {run_dir / 'images'}", flush=True)
    if config.validation.every_epochs and (best := best_checkpoint(checkpoints_of(config, run_dir))):
        folder, metrics = best
        print(f"best checkpoint: {folder} (after epoch {int(metrics['epoch']) + 1}, val_loss {metrics[SCORE]:.4f}; "
              "export it with trainer/export_encoder.py RUN --best)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
