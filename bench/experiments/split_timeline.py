"""How the workers split wrk's connections over a whole run, not only at its middle.

    /usr/bin/python3 -m bench.experiments.split_timeline --app sleep20 [--rounds 2] \\
        [--env K=V ...] [--module bench.experiments.reshuffle_worker]

Runs bare fleet workers (with the --env settings) and granian in turn, samples every
worker's open connections every 50 ms during a wrk run, and prints each run's p99 next
to how long the busiest worker held each share of the 50 connections. A p99 that follows
the split's worst moments, not its middle, says the connections' reshuffles are what to fix.
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from bench import load  # noqa: E402
from bench.peers import FleetBare, Granian, Peer  # noqa: E402
from harness import net, procs  # noqa: E402

SAMPLE_EVERY = 0.05


def timeline(peer: Peer, duration: float) -> tuple[load.Wrk, list[int]]:
    """Run wrk against ``peer``; return its result and the busiest worker's connections, sampled."""
    load.wrk(peer.port, 2.0)
    load.settle(peer.port)
    busiest: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_EVERY):
            conns = net.connections(peer.workers(), peer.port)
            if sum(conns.values()) >= load.CONNECTIONS - 2:  # NOTE: a moment wrk is not reconnecting
                busiest.append(max(conns.values()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result = load.wrk(peer.port, duration)
    done.set()
    sampler.join(5)
    return result, busiest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.experiments.split_timeline")
    p.add_argument("--app", default="sleep20")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--env", action="append", default=[], help="K=V for fleet's workers")
    p.add_argument("--module", default="fleet.worker", help="the worker module (a prototype from here)")
    args = p.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    logs = REPO / "bench" / "results" / f"split-{time.strftime('%Y%m%d-%H%M%S')}"
    logs.mkdir(parents=True, exist_ok=True)
    procs.stop_on_signals()
    try:
        for r in range(args.rounds):
            fleet = FleetBare("fleet-bare", "fleet", logs, fleet_env=env, module=args.module, app=args.app)
            for peer in (fleet, Granian("granian", "granian", logs, app=args.app)):
                try:
                    peer.start()
                    result, busiest = timeline(peer, args.duration)
                finally:
                    peer.stop()
                shares = collections.Counter(busiest)
                total = max(1, len(busiest))
                spread = " ".join(f"{k}:{100 * v / total:.0f}%" for k, v in sorted(shares.items()))
                print(f"round {r + 1} {peer.label:8} {result.rps:8,.0f} req/s p99 {result.p99_ms:7.1f} ms"
                      f"  busiest worker held (share of the run): {spread}", flush=True)
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
