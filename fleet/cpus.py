"""Which CPUs fleet may use, shared by ``fleetctl scale auto`` and the worker's pinning.

Both read the same two limits so they agree: the scheduler affinity mask
(taskset, systemd's CPUAffinity=, a container's cpuset) and the cgroup v2 CPU
quota (CPUQuota=, docker --cpus), whichever allows fewer.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity() -> list[int]:
    """The CPUs this process may run on, in ascending order."""
    return sorted(os.sched_getaffinity(0))


def _own_cgroup(proc_cgroup: Path = Path("/proc/self/cgroup")) -> str | None:
    try:
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return None


def cgroup_quota(cgroup: str | None = None, root: Path = CGROUP_ROOT) -> float | None:
    """The tightest ``cpu.max`` quota (in CPUs) from this cgroup up to the root, or None."""
    path = cgroup if cgroup is not None else _own_cgroup()
    if path is None:
        return None
    best: float | None = None
    node = (root / path.lstrip("/")).resolve()
    while True:
        try:
            quota, period = (node / "cpu.max").read_text().split()
            if quota != "max":
                cpus = int(quota) / int(period)
                best = cpus if best is None else min(best, cpus)
        except (OSError, ValueError):
            pass
        if node == root or root not in node.parents:
            return best
        node = node.parent


def usable_count() -> int:
    """How many workers ``scale auto`` runs: min(affinity, ceil(quota)), at least 1."""
    count = len(affinity())
    quota = cgroup_quota()
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cpu_for_instance(instance: str, cpus: list[int]) -> int | None:
    """The CPU instance ``N`` is pinned to: the N-th usable one, or None past the count.

    Instances past the count run unpinned rather than fail: pinning by
    ``CPUAffinity=%i`` fails every start past the CPU count, in a loop.
    """
    if not instance.isdigit():
        return None
    index = int(instance)
    return cpus[index - 1] if 1 <= index <= len(cpus) else None
