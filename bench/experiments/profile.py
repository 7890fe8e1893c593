"""Profile one fleet (bare) worker under the benchmark's load: where its CPU goes, and its syscalls.

    /usr/bin/python3 -m bench.experiments.profile [--module bench.experiments.nogate_worker]

py-spy (``pip install py-spy``; pass ``--py-spy PATH``) samples worker 1 for 8 s (only the
thread holding the GIL, so samples are CPU time spent in Python) while
wrk loads both workers; the samples are folded into self and inclusive time per
function. Then ``strace -c -f`` counts worker 1's syscalls over 3 s of load, divided
by the requests it answered in that time (strace slows it down; the counts per
request still hold).
"""

from __future__ import annotations

import argparse
import collections
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from bench import load  # noqa: E402
from bench.peers import FleetBare  # noqa: E402
from harness import procs  # noqa: E402


def fold(raw: str, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")[1:]]  # drop the thread frame
        frames = [re.sub(r"\(/usr/lib/python3(\.\d+)?/(dist-packages/)?", "(", f) for f in frames]
        frames = [f.replace(f"({REPO}/", "(") for f in frames]
        if not frames:
            continue
        total += n
        self_n[frames[-1]] += n
        for f in set(frames):
            incl_n[f] += n
    lines = [f"{total} samples", "", "self%  incl%  function (file)"]
    for f, n in self_n.most_common(top):
        lines.append(f"{100 * n / total:5.1f}  {100 * incl_n[f] / total:5.1f}  {f}")
    lines += ["", "inclusive, top:"]
    for f, n in incl_n.most_common(top):
        lines.append(f"{100 * n / total:5.1f}  {f}")
    return "\n".join(lines)


def syscalls(logs: Path, module: str, env: dict[str, str]) -> str:
    """Syscalls per request of a lone worker under strace -c -f for 3 s of wrk load."""
    peer = FleetBare("fleet-strace", "fleet (bare) × 1", logs, module=module, fleet_env=env, workers_wanted=1)
    try:
        peer.start()
        strace = procs.Launched(
            ["strace", "-c", "-f", "-o", str(logs / "strace.txt"), "-p", str(peer.pids()[0])]
        )
        time.sleep(1.0)  # NOTE: attaching to every thread takes a moment
        result = load.wrk(peer.port, 3)
        strace.popen.send_signal(signal.SIGINT)
        strace.popen.wait(10)
    finally:
        peer.stop()
    summary = (logs / "strace.txt").read_text()
    calls = {
        m.group(2): int(m.group(1))
        for m in re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", summary, re.M)
    }
    lines = [f"strace -c -f of one worker: {result.requests} requests in 3 s, syscalls per request:"]
    calls.pop("total", None)
    for name, n in sorted(calls.items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"{n / max(1, result.requests):7.2f}  {name}")
    lines.append(f"{sum(calls.values()) / max(1, result.requests):7.2f}  total")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.experiments.profile")
    p.add_argument("--module", default="fleet.worker")
    p.add_argument("--py-spy", default="py-spy")
    p.add_argument("--top", type=int, default=22)
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    args = p.parse_args(argv)
    logs = REPO / "bench" / "results" / ("profile-" + time.strftime("%Y%m%d-%H%M%S"))
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(e.split("=", 1) for e in args.env)
    peer = FleetBare("fleet-bare", "fleet (bare)", logs, module=args.module, fleet_env=env)
    procs.stop_on_signals()
    try:
        peer.start()
        worker = peer.pids()[0]
        wrk = load.start_wrk(peer.port, 12)
        time.sleep(2)
        raw = subprocess.run(
            [
                args.py_spy,
                "record",
                "--pid",
                str(worker),
                "--duration",
                "8",
                "--rate",
                "250",
                "--format",
                "raw",
                "--output",
                str(logs / "pyspy.txt"),
                "--nonblocking",
                "--gil",
            ],
            capture_output=True,
            text=True,
        )
        if raw.returncode != 0:
            print(raw.stderr, file=sys.stderr)
        wrk.stop()
        print(fold((logs / "pyspy.txt").read_text(), args.top))

        peer.stop()
        print(syscalls(logs, args.module, env))
    finally:
        peer.stop()
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
