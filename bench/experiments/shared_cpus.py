"""Two apps sharing the CPUs: pin each app's workers as if it were alone, or let the scheduler place them.

With FLEET_CPU_AFFINITY=auto, worker N pins itself to the N-th CPU. Alone, that
keeps a worker on one core. With two apps of one worker each, both would pin to
CPU 0; this measures what that costs against unpinned workers, with both apps
loaded at once and with only one loaded (the other idle), on Hello World.

    sudo python3 -m bench.experiments.shared_cpus [--rounds 3] [--seconds 8]

Each app is one fleet-worker run by hand (binding FLEET_LISTEN itself), started and
stopped by PID; wrk runs on loopback.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from harness import procs
from harness.http import get_text
from harness.net import free_port
from harness.wrk import Load

ROOT = Path(__file__).resolve().parents[2]


def start_worker(port: int, cpu: int | None) -> procs.Launched:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLEET_LISTEN": f"127.0.0.1:{port}",
           "FLEET_CPU_AFFINITY": "none", "FLEET_INSTANCE": "1", "FLEET_LOG_LEVEL": "warning"}
    argv = [sys.executable, "-m", "fleet.worker"]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    worker = procs.Launched(argv, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if get_text(port, "/", timeout=1)[0] == 200:
                return worker
        except OSError:
            time.sleep(0.05)
    worker.stop()
    raise SystemExit(f"the worker on port {port} did not answer within 20 s")


def measure(pinned: bool, both: bool, seconds: float) -> tuple[float, float]:
    """req/s of app A and app B (0 when B is idle), each app one worker."""
    ports = [free_port(), free_port()]
    workers = [start_worker(port, 0 if pinned else None) for port in ports]
    try:
        loads = [Load(ports[0], seconds=seconds, connections=50).start()]
        if both:
            loads.append(Load(ports[1], seconds=seconds, connections=50).start())
        results = [load.result().rps for load in loads]
    finally:
        for worker in workers:
            worker.stop()
    return results[0], results[1] if both else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args(argv)
    cases = [(pinned, both) for both in (True, False) for pinned in (True, False)]
    seen: dict[tuple[bool, bool], list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case in cases:  # NOTE: interleaved, so drift on a shared machine hits every case
            a, b = measure(*case, args.seconds)
            seen[case].append(a + b)
    print(f"{os.cpu_count()} CPUs, 2 apps of 1 worker each, wrk -c50 per loaded app, "
          f"{args.rounds} rounds, median of total req/s")
    for (pinned, both), totals in seen.items():
        layout = "both pinned to CPU 0" if pinned else "unpinned"
        load = "both apps loaded" if both else "one app loaded, one idle"
        print(f"  {load:26} {layout:22} {statistics.median(totals):9,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
