"""Default process counts follow a container's CPU quota, read from cgroup files laid out as Linux
mounts them (v2 unified, v1 cpu,cpuacct), not the host's core count."""

from __future__ import annotations

import os
from pathlib import Path

from shards.cpu_budget import cgroup_cpu_quota, usable_cpus

CORES = len(os.sched_getaffinity(0))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v2_quota_of_the_cgroup_or_an_ancestor_caps_the_workers(tmp_path):
    root, proc = tmp_path / "sys/fs/cgroup", tmp_path / "proc/self/cgroup"
    write(proc, "0::/kubepods/pod1/ctr\n")
    write(root / "kubepods/pod1/ctr/cpu.max", "max 100000\n")
    write(root / "kubepods/pod1/cpu.max", "150000 100000\n")  # the pod's limit: 1.5 CPUs
    write(root / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(root, proc) == 1.5
    assert usable_cpus(root, proc) == min(CORES, 2)  # a part CPU still runs a worker


def test_v2_inside_a_container_reads_its_own_mount(tmp_path):
    """/proc/self/cgroup names the host's path; the container sees its cgroup at the mount's root."""
    root, proc = tmp_path / "sys/fs/cgroup", tmp_path / "proc/self/cgroup"
    write(proc, "0::/system.slice/docker-abc.scope\n")
    write(root / "cpu.max", "50000 100000\n")
    assert cgroup_cpu_quota(root, proc) == 0.5 and usable_cpus(root, proc) == 1


def test_v1_cfs_quota(tmp_path):
    root, proc = tmp_path / "sys/fs/cgroup", tmp_path / "proc/self/cgroup"
    write(proc, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "1200000\n")
    write(root / "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(root, proc) == 12.0
    assert usable_cpus(root, proc) == min(CORES, 12)


def test_no_limit_or_nothing_readable_leaves_the_cores(tmp_path):
    root, proc = tmp_path / "sys/fs/cgroup", tmp_path / "proc/self/cgroup"
    assert cgroup_cpu_quota(root, proc) is None  # no /proc here
    write(proc, "0::/user.slice\n4:cpu,cpuacct:/\n")
    write(root / "user.slice/cpu.max", "max 100000\n")
    write(root / "cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    write(root / "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    write(root / "cpu.max", "garbage")
    assert cgroup_cpu_quota(root, proc) is None
    assert usable_cpus(root, proc) == CORES
