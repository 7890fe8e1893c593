"""A/B gates on Hello World: two bare workers, wrk keep-alive, the split sampled all along.

    /usr/bin/python3 -m bench.experiments.gate_ab --rounds 3 --duration 10

tune.py samples the split of connections between workers once, mid-run; an unbalanced
split comes and goes with each renewal of the connections (FLEET_KEEPALIVE_MAX_AGE), so
this samples it every half second and reports the mean share of the busiest worker.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from bench import load  # noqa: E402
from bench.experiments.tune import SETS, Variant  # noqa: E402
from bench.peers import FleetBare, usable_cpus  # noqa: E402
from bench.report import med  # noqa: E402
from harness import net, procs  # noqa: E402


def one(v: Variant, logs: Path, duration: float) -> tuple[load.Wrk, list[tuple[int, ...]]]:
    peer = FleetBare("fleet-bare", v.name, logs, fleet_env=v.env, module=v.module,
                     workers_wanted=v.workers or usable_cpus())
    samples: list[tuple[int, ...]] = []
    try:
        peer.start()
        load.Quiet.wait()
        load.wrk(peer.port, 2.0)
        load.settle(peer.port)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                conns = net.connections(peer.workers(), peer.port)
                samples.append(tuple(sorted(conns.values(), reverse=True)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = load.wrk(peer.port, duration)
        done.set()
        sampler.join(5)
    finally:
        peer.stop()
    return result, samples[1:-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.experiments.gate_ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--set", default="gate", choices=sorted(SETS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0)
    args = p.parse_args(argv)
    variants = SETS[args.set]
    logs = REPO / "bench" / "results" / ("gate-" + time.strftime("%Y%m%d-%H%M%S"))
    logs.mkdir(parents=True, exist_ok=True)
    rps: dict[str, list[float]] = {v.name: [] for v in variants}
    p99: dict[str, list[float]] = {v.name: [] for v in variants}
    share: dict[str, list[float]] = {v.name: [] for v in variants}
    procs.stop_on_signals()
    try:
        for r in range(args.rounds):
            for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                w, samples = one(v, logs, args.duration)
                top = [s[0] / max(1, sum(s)) for s in samples if s]
                rps[v.name].append(w.rps)
                p99[v.name].append(w.p99_ms)
                share[v.name].append(sum(top) / max(1, len(top)))
                splits = " ".join("/".join(map(str, s)) for s in samples)
                print(f"round {r + 1} {v.name:55} {w.rps:9,.0f} req/s p99 {w.p99_ms:6.2f} ms "
                      f"busiest {100 * share[v.name][-1]:3.0f}% splits {splits}", file=sys.stderr, flush=True)
    finally:
        procs.stop_all()
    base = rps[variants[0].name]
    print("| variant | req/s | × current | p99 ms | busiest worker's share of connections |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for v in variants:
        ratio = med([a / b for a, b in zip(rps[v.name], base, strict=True)])
        print(f"| {v.name} | {med(rps[v.name]):,.0f} | {ratio:.2f} | {med(p99[v.name]):.2f} "
              f"| {100 * med(share[v.name]):.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
