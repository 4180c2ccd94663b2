"""trainer/worker_resources.py: what a worker asks Ray for, and whether given nodes can hold the run."""

from __future__ import annotations

from trainer.config import RunConfig
from trainer.worker_resources import gpu_choice, per_worker, scaling_resources, shortfall, workers_that_fit

A100_NODE = {"CPU": 96.0, "GPU": 8.0, "accelerator_type:A100": 1.0, "memory": 1e12}
V100_NODE = {"CPU": 32.0, "GPU": 4.0, "accelerator_type:V100": 1.0}
HEAD = {"CPU": 0.0, "memory": 1e10}  # infra/ray-cluster.yaml starts its head with --num-cpus=0


def test_a_worker_asks_for_what_ray_train_gives_by_default_unless_told():
    assert per_worker(RunConfig(), use_gpu=False) == {"CPU": 1.0}
    assert per_worker(RunConfig(), use_gpu=True) == {"GPU": 1.0}  # Ray Train reserves no CPU beside a GPU
    assert scaling_resources(RunConfig(), use_gpu=True) is None
    run = RunConfig(cpus_per_worker=5, accelerator_type="A100")
    assert per_worker(run, use_gpu=True) == {"CPU": 5.0, "GPU": 1.0, "accelerator_type:A100": 0.001}
    assert scaling_resources(run, use_gpu=True) == {"CPU": 5.0}


def test_workers_are_counted_per_node_not_against_the_cluster_total():
    # 2 + 2 CPUs on two nodes: 4 in all, but a 3-CPU worker fits on neither
    assert workers_that_fit({"CPU": 3.0}, [{"CPU": 2.0}, {"CPU": 2.0}]) == 0
    assert workers_that_fit({"CPU": 2.0}, [{"CPU": 2.0}, {"CPU": 3.0}]) == 2
    assert workers_that_fit({"CPU": 5.0, "GPU": 1.0}, [A100_NODE, V100_NODE, HEAD]) == 8 + 4  # GPUs bound both
    assert workers_that_fit({"CPU": 12.0, "GPU": 1.0}, [A100_NODE, V100_NODE]) == 8 + 2  # the V100 node's CPUs bound it
    assert workers_that_fit({"GPU": 1.0, "accelerator_type:A100": 0.001}, [A100_NODE, V100_NODE]) == 8


def test_a_run_the_nodes_cannot_hold_is_named_with_its_numbers_and_the_settings_to_change():
    nodes = [A100_NODE, V100_NODE, HEAD]
    assert shortfall(RunConfig(workers=12, cpus_per_worker=5), True, nodes) is None
    problem = shortfall(RunConfig(workers=9, accelerator_type="A100"), True, nodes)
    assert problem.startswith("run.workers=9 workers each need 1 GPU (on a node of GPU type A100)")
    assert "hold 8 such worker(s)" in problem and "run.accelerator_type" in problem
    problem = shortfall(RunConfig(workers=2, cpus_per_worker=3), False, [{"CPU": 2.0}])
    assert "each need 3 CPU" in problem and "hold 0 such" in problem and "(they have: 2 CPU)" in problem
    assert "run.cpus_per_worker" in problem and "run.use_gpu" not in problem
    assert "run.use_gpu" in shortfall(RunConfig(workers=1), True, [{"CPU": 2.0}])  # a GPU run on CPU-only nodes
    assert "(they have: 3 CPU; 2 CPU; 1 CPU)" in shortfall(RunConfig(workers=9), False,
                                                          [{"CPU": 1.0}, {"CPU": 3.0}, {"CPU": 2.0}])  # biggest first


def test_use_gpu_auto_takes_a_gpu_where_there_is_one_and_warns_on_a_cluster_without_one():
    assert gpu_choice(RunConfig(use_gpu="true"), 0, embedded=False) == (True, None)  # as set: Ray waits for GPUs
    assert gpu_choice(RunConfig(use_gpu="False"), 8, embedded=False) == (False, None)
    assert gpu_choice(RunConfig(), 8, embedded=False) == (True, None)
    assert gpu_choice(RunConfig(), 0, embedded=True) == (False, None)  # a laptop: CPU is what auto is for
    assert gpu_choice(RunConfig(accelerator_type="A100"), 0, embedded=False) == (True, None)  # a GPU type named
    use_gpu, warning = gpu_choice(RunConfig(workers=16), 0, embedded=False)  # GPU nodes not started yet
    assert use_gpu is False
    assert warning.startswith("run.use_gpu=auto and the cluster has no GPU now, so the 16 worker(s) train on CPUs")
    assert "set run.use_gpu=true" in warning
