"""Hello World throughput while idle keep-alive connections are open: what each one costs a pass.

    /usr/bin/python3 -m bench.experiments.idle_connections [--idle 2000] [--rounds 2]

Run it from each checkout to compare two versions: the workers are the checkout's own.

Bare fleet workers (as ``bench/run.py``'s fleet-bare) serve ``wrk -c50`` for 5 s while
``--idle`` connections, each of which sent one request and then stays quiet, are held
open by the hostile suite's :class:`harness.attacks.Horde`. An event loop that asks
every socket before each poll slows down with each idle connection; one that asks only
the sockets that may have changed does not. Every process is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.experiments.idle_connections")
    p.add_argument("--idle", type=int, default=2000, help="idle keep-alive connections held open")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--app", default="hello")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from bench import load
    from bench.peers import FleetBare
    from harness import procs
    from harness.attacks import Attack, Horde, raise_open_files, request

    if raise_open_files(args.idle + 1000) < args.idle + 200:
        sys.exit(f"too few open files allowed for {args.idle} connections: raise `ulimit -n` and run again")
    logs = Path(tempfile.mkdtemp(prefix="idle-connections-"))
    state = tempfile.mkdtemp(prefix="idle-connections-state-")
    procs.stop_on_signals()
    try:
        for r in range(args.rounds):
            peer = FleetBare("fleet-bare", "fleet", logs, fleet_env={"STATE_DIRECTORY": state}, app=args.app)
            try:
                peer.start()
                load.wrk(peer.port, 1.0)
                with Horde(peer.port, Attack("idle", args.idle, head=request(), reopen=False)) as horde:
                    held = horde.wait_connected(args.idle, 60)
                    pids = peer.workers()
                    cpu_before = {pid: procs.cpu_seconds(pid) for pid in pids}
                    result = load.wrk(peer.port, args.seconds)
                    cpu = sum(procs.cpu_seconds(pid) - cpu_before[pid] for pid in pids)
            finally:
                peer.stop()
            per_request = 1e6 * cpu / max(1.0, result.rps * args.seconds)
            print(f"round {r + 1}: {held} idle connections; {result.rps:8,.0f} req/s"
                  f"  p99 {result.p99_ms:6.1f} ms  workers' CPU {per_request:5.1f} µs a request", flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(state, ignore_errors=True)
    print(f"worker logs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
