"""What the run ran on: CPU, kernel, versions, and how busy the machine was besides the bench."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def os_release() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "?"


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return out.split("[")[0].replace("wrk", "").strip() or "?"


def info() -> dict[str, str]:
    return {
        "cpu": f"{cpu_model()}, {len(os.sched_getaffinity(0))} usable CPUs",
        "memory": f"{memory_gib():.1f} GiB",
        "os": os_release(),
        "kernel": platform.release(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


@dataclass
class Busy:
    """CPU time spent on the whole machine, read from /proc/stat (all CPUs)."""

    busy: float
    total: float

    @classmethod
    def now(cls) -> Busy:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        total = sum(fields[:8])
        ticks = os.sysconf("SC_CLK_TCK")
        return cls((total - idle) / ticks, total / ticks)

    def since(self, earlier: Busy) -> float:
        """CPU seconds the machine was busy since ``earlier``."""
        return self.busy - earlier.busy
