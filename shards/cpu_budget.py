"""How many processes a job runs by default (`ingest --workers`, `shards verify --workers`): the
CPUs this process may use. In a container that is its CPU quota (Docker --cpus, a Kubernetes CPU
limit), which os.sched_getaffinity does not see: it lists every core of the host, so a pod limited
to 12 CPUs on a 128-core node started 128 ingest workers, each holding a mammogram in memory."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The CPUs this process may run on, capped by its cgroup's CPU quota rounded up (1.5 CPUs: 2)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    return cpus if quota is None else max(1, min(cpus, math.ceil(quota)))


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs allowed by the tightest CPU bandwidth limit on this process's cgroup and its ancestors
    (cgroup v2 cpu.max "QUOTA PERIOD"; v1 cpu.cfs_quota_us / cpu.cfs_period_us); None where there
    is none, or nothing can be read (not Linux)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:  # v2: one unified tree
            limits += [_v2_limit(folder / "cpu.max") for folder in _folders(cgroup_root, path)]
        elif "cpu" in controllers.split(","):  # v1: mounted as cpu,cpuacct (often linked as cpu)
            for mount in dict.fromkeys((cgroup_root / controllers, cgroup_root / "cpu")):
                limits += [_v1_limit(folder) for folder in _folders(mount, path)]
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def _folders(mount: Path, path: str) -> list[Path]:
    """The cgroup's folder and its ancestors under the mount, and the mount itself: inside a
    container /proc/self/cgroup may name the host's path while the mount is the container's own."""
    relative = Path(path.strip("/"))
    return [mount, *(mount / folder for folder in (relative, *relative.parents) if folder != Path("."))]


def _v2_limit(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
