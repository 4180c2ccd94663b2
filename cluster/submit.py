"""Submit a pretraining run to a Ray cluster: `ray job submit` with the project's defaults.

    python -m cluster.submit --address http://HEAD:8265 --config trainer/configs/miram_cbis.yaml \
        run.workers=8 [--resume] [--wait]

What it adds over a bare `ray job submit --working-dir . -- python trainer/pretrain.py ...`: the
config and overrides are checked here first (a typo fails in a second, not after the upload and a
cluster start-up); the upload leaves out the virtualenv, outputs and git history; the job gets a
readable id (`pretrain-<run name>-<n>`) and the environment every worker needs (plus any `--env`
you forward, e.g. bucket credentials); `--wait` follows the job's log and exits with its outcome. Training logic stays in trainer/pretrain.py.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
UPLOAD_EXCLUDES = [".venv/", "out/", "runs/", ".git/", "**/__pycache__/", "*.egg-info/"]
WORKER_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE = 0, 1, 2
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def entrypoint(config: str, overrides: list[str], resume: bool) -> str:
    import shlex

    words = ["python", "trainer/pretrain.py", "--config", config, *(["--resume"] if resume else []), *overrides]
    return " ".join(shlex.quote(w) for w in words)


def runtime_env(working_dir: Path, env: dict[str, str] | None = None) -> dict:
    return {"working_dir": str(working_dir), "excludes": UPLOAD_EXCLUDES, "env_vars": {**WORKER_ENV, **(env or {})}}


def forwarded_env(items: list[str], environ: Mapping[str, str]) -> dict[str, str]:
    """--env NAME[=VALUE] items -> {NAME: VALUE}; a bare NAME takes its value from `environ`.
    ValueError names an item that is not a variable name or a NAME that is not set."""
    env = {}
    for item in items:
        name, given, value = item.partition("=")
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"--env {item!r}: {name!r} is not an environment variable name")
        if not given:
            if name not in environ:
                raise ValueError(f"--env {name}: {name} is not set in this shell (or pass --env {name}=VALUE)")
            value = environ[name]
        env[name] = value
    return env


def bucket_locations(config) -> list[str]:
    """The config's shard roots and run storage that are URIs (s3://...): what the workers must
    have credentials for."""
    from shards.storage import is_uri

    places = [s.root for s in config.data.sources] + [config.run.storage_path]
    return [place for place in places if is_uri(place) and not str(place).startswith("file://")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster.submit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="the cluster's job server, http://HEAD:8265 (default: $RAY_ADDRESS)")
    p.add_argument("--config", required=True, help="experiment YAML, relative to the project root")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument("--wait", action="store_true", help="follow the job's log until it ends; exit with its outcome")
    p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="an environment variable for every worker, repeatable; a bare NAME takes its value from "
                        "this shell (e.g. --env AWS_ACCESS_KEY_ID --env AWS_SECRET_ACCESS_KEY for shards in a "
                        "bucket). Values are stored in the job's runtime environment, which the "
                        "Ray dashboard shows: where the nodes have credentials of their own, use those")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, as trainer/pretrain.py takes them")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    from trainer.config import ConfigError, load_config

    if not args.address:
        print("cluster.submit: error: no cluster address (--address http://HEAD:8265 or $RAY_ADDRESS)", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(PROJECT / args.config, args.overrides)
        env = forwarded_env(args.env, os.environ)
    except (ConfigError, ValueError) as exc:
        print(f"cluster.submit: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from trainer.registry import model_config_error

    if problem := model_config_error(config.model.name, config.model.options):
        print(f"cluster.submit: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    buckets = bucket_locations(config)
    if buckets and not any(name.startswith("AWS_") for name in env):
        print(f"cluster.submit: note: the run reads or writes {', '.join(map(str, buckets))}; every node needs "
              "credentials for it (its own, or --env AWS_ACCESS_KEY_ID --env AWS_SECRET_ACCESS_KEY ...)",
              file=sys.stderr)
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(args.address)
    job_id = client.submit_job(
        entrypoint=entrypoint(args.config, args.overrides, args.resume),
        runtime_env=runtime_env(PROJECT, env),
        submission_id=f"pretrain-{config.run.name}-{time.time_ns() // 1_000_000}",
    )
    print(f"submitted {job_id} to {args.address}; follow it with: ray job logs --follow --address {args.address} {job_id}")
    if not args.wait:
        return EXIT_OK
    shown = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        print(logs[shown:], end="", flush=True)
        shown = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            print(f"job {job_id}: {status.value}")
            return EXIT_OK if status == JobStatus.SUCCEEDED else EXIT_JOB_FAILED
        time.sleep(2.0)


if __name__ == "__main__":
    sys.exit(main())
