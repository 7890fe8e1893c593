"""kill -9 under load for variants of fleet (bare), interleaved: failures, timeouts, recovery.

/usr/bin/python3 -m bench.experiments.faults gate --rounds 3
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from bench import load  # noqa: E402
from bench.experiments.tune import BASE, Experiment, Variant  # noqa: E402
from bench.peers import FleetBare, usable_cpus  # noqa: E402
from bench.report import med  # noqa: E402
from harness import procs  # noqa: E402
from harness.wrk import Wrk  # noqa: E402

SETS: dict[str, list[Variant]] = {
    "gate": [BASE, Variant("no accept gate", module="bench.experiments.nogate_worker")],
    "keepalive": [BASE, Variant("FLEET_KEEPALIVE_MAX_AGE=1", {"FLEET_KEEPALIVE_MAX_AGE": "1"})],
    "restart": [BASE, Variant("restart after 0 ms", {"BENCH_RESTART_SEC": "0"})],
}


def main(argv: list[str] | None = None) -> int:
    exp = Experiment.parse("faults", SETS, 12.0, argv)
    variants, logs = exp.variants, exp.logs
    results: dict[str, list[load.Fault]] = {v.name: [] for v in variants}
    try:
        for r, v in exp.runs():
            env = {k: val for k, val in v.env.items() if not k.startswith("BENCH_")}
            restart = float(v.env.get("BENCH_RESTART_SEC", "0.1"))
            peer = FleetBare(
                "fleet-bare",
                v.name,
                logs,
                fleet_env=env,
                module=v.module,
                workers_wanted=v.workers or usable_cpus(),
                restart_sec=restart,
            )
            try:
                peer.start()
                load.wrk(peer.port, 2)
                f = load.fault(peer, exp.duration)
            finally:
                peer.stop()
            results[v.name].append(f)
            print(
                f"round {r + 1} {v.name:28} failed {f.wrk.failed} of {f.victim_connections} "
                f"({_errors(f.wrk)}) serving {f.replacement_serving_ms} ms, "
                f"share after {f.traffic_again_s} s, {f.wrk.rps:,.0f} req/s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        procs.stop_all()
    print("| variant | failed / victim's conns | wrk errors | replacement serving | gets its share | req/s |")
    print("| --- | --- | --- | ---: | --- | ---: |")
    for v in variants:
        fs = results[v.name]
        print(
            f"| {v.name} | {', '.join(f'{f.wrk.failed}/{f.victim_connections}' for f in fs)} "
            f"| {'; '.join(_errors(f.wrk) for f in fs)} "
            f"| {med([f.replacement_serving_ms for f in fs]):.0f} ms "
            f"| {', '.join(_s(f.traffic_again_s) for f in fs)} "
            f"| {med([f.wrk.rps for f in fs]):,.0f} |"
        )
    return 0


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def _errors(wrk: Wrk) -> str:
    if not wrk.socket_errors:
        return "none"
    return (f"connect {wrk.connect_errors}, read {wrk.read_errors}, write {wrk.write_errors}, "
            f"timeout {wrk.timeouts}")


if __name__ == "__main__":
    sys.exit(main())
