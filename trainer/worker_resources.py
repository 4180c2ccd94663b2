"""What each Ray Train worker asks Ray for, and whether the nodes there are can ever hold them.

Ray Train asks for a placement group of `run.workers` bundles, one per worker, each on one node.
A bundle that no node can hold is not an error to Ray: the worker group's start times out every
60 s and is tried again, for good (Ray 2.60), printing a long traceback each time. On the
machine's own embedded Ray no node will ever join, so such a run is refused before it starts;
on a cluster an autoscaler may still add nodes, so it is a warning there.

Plain dictionaries in, so this is tested without a cluster; trainer/pretrain.py asks Ray.
"""

from __future__ import annotations

import math

from trainer.config import RunConfig

ACCELERATOR_PREFIX = "accelerator_type:"  # how Ray names a node's GPU type as a resource
_TINY = 0.001  # what Ray Train asks of the accelerator resource: any node that has it


def per_worker(run: RunConfig, use_gpu: bool) -> dict[str, float]:
    """The resources one worker asks for, as Ray Train's ScalingConfig fills them in: run.cpus_per_worker
    CPUs (default: 1 without a GPU, none beside one), a GPU when use_gpu, and a share of the
    accelerator-type resource when run.accelerator_type names one."""
    cpus = run.cpus_per_worker if run.cpus_per_worker is not None else (0.0 if use_gpu else 1.0)
    need = {"CPU": float(cpus)} if cpus else {}
    if use_gpu:
        need["GPU"] = 1.0
    if run.accelerator_type:
        need[ACCELERATOR_PREFIX + run.accelerator_type] = _TINY
    return need


def scaling_resources(run: RunConfig, use_gpu: bool) -> dict[str, float] | None:
    """ScalingConfig's resources_per_worker: None (Ray's default) unless run.cpus_per_worker is set.
    The GPU and accelerator type are added by ScalingConfig itself from use_gpu and accelerator_type."""
    return None if run.cpus_per_worker is None else {"CPU": float(run.cpus_per_worker)}


def workers_that_fit(need: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """How many bundles of `need` the nodes hold at most (each bundle on one node)."""
    total = 0
    for node in nodes:
        counts = [math.floor(node.get(name, 0.0) / amount + 1e-9) for name, amount in need.items() if amount > 0]
        total += min(counts) if counts else math.inf
    return total


def describe(resources: dict[str, float]) -> str:
    """{'CPU': 4.0, 'GPU': 1.0} -> '4 CPU + 1 GPU'; an accelerator type as where they must be."""
    kinds = [name[len(ACCELERATOR_PREFIX):] for name in resources if name.startswith(ACCELERATOR_PREFIX)]
    amounts = " + ".join(f"{amount:g} {name}" for name, amount in resources.items()
                         if not name.startswith(ACCELERATOR_PREFIX)) or "nothing"
    return amounts + "".join(f" (on a node of GPU type {kind})" for kind in kinds)


def shortfall(run: RunConfig, use_gpu: bool, nodes: list[dict[str, float]]) -> str | None:
    """None when the nodes can hold run.workers workers; else a sentence saying what is asked,
    what there is, and which settings change it."""
    need = per_worker(run, use_gpu)
    fits = workers_that_fit(need, nodes)
    if fits >= run.workers:
        return None
    biggest_first = sorted(nodes, key=lambda node: [-node.get(name, 0.0) for name in need])  # Ray's order varies
    there = "; ".join(describe({k: v for k, v in node.items() if k in need}) for node in biggest_first) or "no node"
    knobs = ["run.workers"]
    if "CPU" in need:
        knobs.append("run.cpus_per_worker")
    if "GPU" in need:
        knobs.append("run.use_gpu")
    if run.accelerator_type:
        knobs.append("run.accelerator_type")
    return (f"run.workers={run.workers} workers each need {describe(need)}, and the {len(nodes)} node(s) "
            f"hold {fits:g} such worker(s) (they have: {there}); lower {' or '.join(knobs)}")


def configured_gpu(run: RunConfig) -> bool | None:
    """Whether the workers take GPUs as far as the config alone says: run.use_gpu true / false, or
    auto with run.accelerator_type naming a GPU type (True); None when auto leaves it to the cluster."""
    setting = run.use_gpu.lower()
    if setting in ("true", "false"):
        return setting == "true"
    return True if run.accelerator_type else None


def gpu_choice(run: RunConfig, cluster_gpus: float, embedded: bool) -> tuple[bool, str | None]:
    """run.use_gpu resolved, and a warning where `auto` may not mean what the user wants.

    true / false are taken as set. auto means a GPU when the cluster has one now, or when
    run.accelerator_type names a GPU type (that asks for GPUs whether or not a node has one yet).
    A cluster whose GPU nodes an autoscaler starts on demand has no GPU before the run asks, so
    auto there would train on CPUs with gloo: said in the warning. The embedded Ray is this
    machine, so a CPU run there is what auto is for."""
    configured = configured_gpu(run)
    if configured is not None:
        return configured, None
    if cluster_gpus >= 1:
        return True, None
    if embedded:
        return False, None
    return False, (f"run.use_gpu=auto and the cluster has no GPU now, so the {run.workers} worker(s) train on "
                   "CPUs (gloo); where an autoscaler adds GPU nodes on demand, set run.use_gpu=true "
                   "(or run.accelerator_type) so that the run asks for them")
