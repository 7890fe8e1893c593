"""Compare variants of fleet (bare) with the current worker, interleaved in the same rounds.

    /usr/bin/python3 -m bench.experiments.tune threads          # FLEET_THREADS 1, 2, 4, 8
    /usr/bin/python3 -m bench.experiments.tune inline --rounds 5
    /usr/bin/python3 -m bench.experiments.tune threads --app django

Each variant is fleet-bare with other FLEET_* settings, another worker count, or a
prototype worker module from this folder (a monkeypatch of fleet, never product code).
Prints a Markdown table: median req/s, p99, CPU per request, and the ratio to the
baseline measured in the same round.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from bench import load  # noqa: E402
from bench.peers import FleetBare, make_django_db, site_packages, usable_cpus  # noqa: E402
from bench.report import med  # noqa: E402
from harness import procs  # noqa: E402


@dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    module: str = "fleet.worker"
    workers: int = 0  # 0: one per CPU


BASE = Variant("current worker (defaults)")
N = usable_cpus()
SETS: dict[str, list[Variant]] = {
    "threads": [BASE] + [Variant(f"FLEET_THREADS={t}", {"FLEET_THREADS": str(t)}) for t in (1, 2, 3, 8)],
    "workers": [
        BASE,
        Variant(f"{2 * N} workers (2 per CPU)", workers=2 * N),
        Variant(f"{2 * N} workers, FLEET_THREADS=1", {"FLEET_THREADS": "1"}, workers=2 * N),
    ],
    "affinity": [BASE, Variant("FLEET_CPU_AFFINITY=none", {"FLEET_CPU_AFFINITY": "none"})],
    "keepalive": [
        BASE,
        Variant("FLEET_KEEPALIVE_MAX_AGE=0", {"FLEET_KEEPALIVE_MAX_AGE": "0"}),
        Variant("FLEET_KEEPALIVE_MAX_AGE=10", {"FLEET_KEEPALIVE_MAX_AGE": "10"}),
    ],
    "limit": [
        BASE,
        Variant("FLEET_CONNECTION_LIMIT=10", {"FLEET_CONNECTION_LIMIT": "10"}),
        Variant("FLEET_CONNECTION_LIMIT=1000", {"FLEET_CONNECTION_LIMIT": "1000"}),
    ],
    "simplequeue": [
        BASE,
        Variant("requests handed over by a C SimpleQueue (prototype)",
                module="bench.experiments.simplequeue_worker"),
    ],
    "switch": [BASE] + [
        Variant(f"GIL switch interval {ms} ms (prototype)", {"SWITCH_INTERVAL": str(ms / 1000)},
                module="bench.experiments.switch_worker")
        for ms in (1, 20, 100)
    ],
    "dispatch": [
        BASE,
        Variant("FLEET_INLINE_MAX=0 (every request to a thread)", {"FLEET_INLINE_MAX": "0"}),
        Variant("FLEET_THREADS=0 (inline only)", {"FLEET_THREADS": "0"}),
    ],
    "gate": [
        BASE,
        Variant("0.1.0's worker (FLEET_TREE)", {"FLEET_TREE": os.environ.get("FLEET_TREE", "")},
                module="bench.experiments.old_worker"),
        Variant("gate patience off (prototype)", {"GATE_VARIANT": "off"},
                module="bench.experiments.gate_worker"),
        Variant("patience 5 ms from the gate closing (the previous gate)", {"GATE_VARIANT": "fixed:5"},
                module="bench.experiments.gate_worker"),
    ],
    "relief": [
        BASE,
        Variant("0.1.0's worker (FLEET_TREE)", {"FLEET_TREE": os.environ.get("FLEET_TREE", "")},
                module="bench.experiments.old_worker"),
        Variant("FLEET_THREADS=0 (no relief thread)", {"FLEET_THREADS": "0"}),
        Variant("relief looks every 20 ms (prototype)",
                {"RELIEF_CHECK_MS": "20", "RELIEF_CHECK_MAX_MS": "20"},
                module="bench.experiments.relief_worker"),
        Variant("relief backs off to 64 ms (prototype)", {"RELIEF_CHECK_MAX_MS": "64"},
                module="bench.experiments.relief_worker"),
    ],
    "tree": [
        BASE,
        Variant("FLEET_TREE's worker", {"FLEET_TREE": os.environ.get("FLEET_TREE", "")},
                module="bench.experiments.old_worker"),
        Variant("this tree's worker, started as FLEET_TREE's (the noise)", {"FLEET_TREE": str(REPO)},
                module="bench.experiments.old_worker"),
    ],
    "patience": [BASE] + [
        Variant(f"gate patience {base} ms + {per} ms a connection (prototype)",
                {"GATE_VARIANT": f"const:{base}:{per}"}, module="bench.experiments.gate_worker")
        for base, per in ((1, 0.05), (0.5, 0.02))
    ],
    "inline": [
        BASE,
        Variant("FLEET_THREADS=0 (inline)", {"FLEET_THREADS": "0"}),
        Variant(f"FLEET_THREADS=0, {2 * N} workers", {"FLEET_THREADS": "0"}, workers=2 * N),
    ],
}


@dataclass(frozen=True)
class Experiment:
    """An experiment's command line read: its variants (the baseline first), rounds and log folder."""

    variants: list[Variant]
    rounds: int
    duration: float
    logs: Path
    app: str

    @classmethod
    def parse(cls, prog: str, sets: dict[str, list[Variant]], duration: float,
              argv: list[str] | None) -> Experiment:  # fmt: skip
        p = argparse.ArgumentParser(prog=f"bench.experiments.{prog}")
        p.add_argument("set", choices=sorted(sets), nargs="+")
        p.add_argument("--rounds", type=int, default=3)
        p.add_argument("--duration", type=float, default=duration)
        p.add_argument("--app", default="hello", help="the bench/apps.py callable served (default: hello)")
        args = p.parse_args(argv)
        logs = REPO / "bench" / "results" / f"{prog}-{time.strftime('%Y%m%d-%H%M%S')}"
        logs.mkdir(parents=True, exist_ok=True)
        procs.stop_on_signals()
        variants = [BASE] + [v for s in args.set for v in sets[s] if v != BASE]
        return cls(variants, args.rounds, args.duration, logs, args.app)

    def runs(self) -> Iterator[tuple[int, Variant]]:
        """(round, variant) in running order: each round rotated, so none always runs first."""
        for r in range(self.rounds):
            k = r % len(self.variants)
            for v in self.variants[k:] + self.variants[:k]:
                yield r, v


def main(argv: list[str] | None = None) -> int:
    exp = Experiment.parse("tune", SETS, 8.0, argv)
    variants, logs = exp.variants, exp.logs
    results: dict[str, list[load.Measure]] = {v.name: [] for v in variants}
    app_env: dict[str, str] = {}
    if exp.app == "django":
        make_django_db()
        app_env["PYTHONPATH"] = f"{REPO}:{site_packages()}"  # NOTE: Django is in the bench venv
    try:
        for r, v in exp.runs():
            peer = FleetBare(
                "fleet-bare",
                v.name,
                logs,
                fleet_env={**app_env, **v.env},
                module=v.module,
                workers_wanted=v.workers or N,
                app=exp.app,
            )
            try:
                peer.start()
                m = load.measure(peer, exp.duration, 2.0)
            finally:
                peer.stop()
            results[v.name].append(m)
            print(
                f"round {r + 1} {v.name:40} {m.wrk.rps:9,.0f} req/s p99 {m.wrk.p99_ms:6.2f} ms "
                f"cpu {m.cpu_ms_per_request:.3f} other {m.other_cpu_seconds / m.wrk.seconds:.2f}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        procs.stop_all()
    base = results[BASE.name]
    lines = [
        "| variant | req/s | × current | p50 ms | p99 ms | CPU ms / req | conns per worker | unaccepted |",
        "| --- | ---: | ---: | ---: | ---: | ---: | :---: | ---: |",
    ]
    for v in variants:
        ms = results[v.name]
        ratio = med([m.wrk.rps / b.wrk.rps for m, b in zip(ms, base, strict=True)])
        split = "/".join(map(str, sorted(ms, key=lambda m: m.wrk.rps)[len(ms) // 2].split))
        lines.append(
            f"| {v.name} | {med([m.wrk.rps for m in ms]):,.0f} | {ratio:.2f} "
            f"| {med([m.wrk.p50_ms for m in ms]):.2f} | {med([m.wrk.p99_ms for m in ms]):.2f} "
            f"| {med([m.cpu_ms_per_request for m in ms]):.3f} | {split} "
            f"| {med([m.unaccepted for m in ms]):.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    (logs / "table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
