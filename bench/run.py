"""Benchmark fleet against Node cluster + Express, gunicorn and waitress; write docs/benchmarks.md.

    /usr/bin/python3 bench/run.py            # full run: 3 rounds of 8 s, faults, scaling, cold start
    /usr/bin/python3 bench/run.py --quick    # one short round of everything: a smoke test
    /usr/bin/python3 bench/run.py --only fleet-bare --only node --rounds 5

Peers are started once, then loaded in turn, the order rotating every round, so
each round compares them under the same machine load. Every process the bench
starts is stopped by PID when it ends, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import load, machine, procs, report  # noqa: E402
from bench.peers import (  # noqa: E402
    FleetBare,
    FleetSystemd,
    Gunicorn,
    NodeCluster,
    OneWaitress,
    Peer,
    PeerError,
    python_versions,
    usable_cpus,
)

ANALYSIS = REPO / "bench" / "analysis.md"

# key -> (label, factory); the report keeps this order.
PEERS: dict[str, tuple[str, Callable[[str, str, Path], Peer]]] = {
    "fleet": ("fleet (.deb, systemd)", lambda k, label, logs: FleetSystemd(k, label, logs)),
    "fleet-bare": ("fleet (bare)", lambda k, label, logs: FleetBare(k, label, logs)),
    "fleet-inline": (
        "fleet (.deb, FLEET_THREADS=0)",
        lambda k, label, logs: FleetSystemd(k, label, logs, fleet_env={"FLEET_THREADS": "0"}),
    ),
    "node": ("Node cluster + Express", lambda k, label, logs: NodeCluster(k, label, logs)),
    "gunicorn-sync": ("gunicorn sync", lambda k, label, logs: Gunicorn(k, label, logs)),
    "gunicorn-gthread": (
        "gunicorn gthread",
        lambda k, label, logs: Gunicorn(k, label, logs, worker_class="gthread"),
    ),
    "waitress": ("one waitress", lambda k, label, logs: OneWaitress(k, label, logs)),
}
FAULT_PEERS = ("fleet", "fleet-bare", "node", "gunicorn-sync", "gunicorn-gthread")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round of 3 s, short faults: a smoke run")
    p.add_argument("--rounds", type=int, help="rounds of every measurement (default 3)")
    p.add_argument("--duration", type=float, help="seconds of load per measurement (default 8)")
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(PEERS),
        metavar="PEER",
        help=f"run only this peer (repeatable): {', '.join(PEERS)}",
    )
    p.add_argument("--no-faults", action="store_true", help="skip the kill -9 runs")
    p.add_argument("--no-scaling", action="store_true", help="skip fleet with 1..2×CPUs workers")
    p.add_argument("--deb", type=Path, help="the fleet .deb to install (default: newest in dist/)")
    p.add_argument(
        "--report-only",
        type=Path,
        metavar="RUN_JSON",
        help="render the report again from a run's bench/results/<time>/run.json; measure nothing",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "docs" / "benchmarks.md",
        help="the report to write (the chart goes beside it as .png)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.report_only:
        run = report.load_run(args.report_only)
        if ANALYSIS.exists():
            run.extra_md = ANALYSIS.read_text()
        write_report(run, args.out)
        return 0
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (3.0 if args.quick else 8.0)
    warmup = 1.0 if args.quick else 2.0
    fault_duration = 8.0 if args.quick else 12.0
    kill_at = 3.0
    cpus = usable_cpus()
    keys = [k for k in PEERS if not args.only or k in args.only]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = REPO / "bench" / "results" / stamp
    results.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    run = report.Run(
        started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        seconds=0.0,
        config={
            "load": f"-t{load.THREADS} -c{load.CONNECTIONS} -d{duration:g}s --latency",
            "rounds": str(rounds),
            "warm-up": f"{warmup:g} s of the same load before each measurement",
            "fault load": f"-t{load.THREADS} -c{load.CONNECTIONS} -d{fault_duration:g}s",
            "kill at": f"{kill_at:g} s",
            "cpus": str(cpus),
        },
        machine=machine.info(),
        versions={},
        labels={k: PEERS[k][0] for k in keys},
    )
    procs.stop_on_signals()
    peers: dict[str, Peer] = {}
    try:
        for key in keys:
            label, make = PEERS[key]
            peer = make(key, label, results)
            say(f"starting {label}")
            try:
                peer.start()
            except (PeerError, OSError, RuntimeError) as exc:
                peer.stop()
                run.notes.append(f"{label} was not measured: {exc}".splitlines()[0])
                say(f"  not measured: {exc}")
                del run.labels[key]
                continue
            peers[key] = peer
            run.notes += getattr(peer, "notes", [])
        run.fleet_key = "fleet" if "fleet" in peers else "fleet-bare"
        run.versions = versions(peers)

        for r in range(rounds):
            order = list(peers)[r % max(1, len(peers)) :] + list(peers)[: r % max(1, len(peers))]
            measured: dict[str, load.Measure] = {}
            for key in order:
                m = load.measure(peers[key], duration, warmup)
                measured[key] = m
                load.save_raw(results / f"wrk-{key}.txt", f"# round {r + 1}\n{m.wrk.raw}")
                say(
                    f"round {r + 1}/{rounds} {key:17} {m.wrk.rps:9,.0f} req/s  "
                    f"p99 {m.wrk.p99_ms:7.2f} ms  cpu {m.cpu_ms_per_request:.3f} ms/req  "
                    f"other load {m.other_cpu_seconds / duration:.2f} cores"
                )
            run.rounds.append(measured)

        if not args.no_scaling and "fleet-bare" in keys:
            counts = list(range(1, cpus + 1)) if args.quick else list(range(1, 2 * cpus + 1))
            scaling(run, results, counts, rounds, duration, warmup)

        if not args.no_faults:
            for r in range(rounds):
                for key in [k for k in FAULT_PEERS if k in peers]:
                    f = load.fault(peers[key], fault_duration, kill_at)
                    peers[key].wait_ready()
                    run.faults.setdefault(key, []).append(f)
                    load.save_raw(results / f"fault-{key}.txt", f"# round {r + 1}\n{f.wrk.raw}")
                    say(
                        f"fault {r + 1}/{rounds} {key:17} failed {f.wrk.failed} (victim had "
                        f"{f.victim_connections} connections), "
                        f"serving after {fmt(f.replacement_serving_ms)} ms, "
                        f"its share after {fmt(f.traffic_again_s)} s"
                    )

        if "fleet" in peers:
            fleet = peers["fleet"]
            assert isinstance(fleet, FleetSystemd)
            for _ in range(1 if args.quick else 3):
                run.cold_ms.append(fleet.cold_start())
                say(f"cold first request: {run.cold_ms[-1]:.0f} ms")
    except KeyboardInterrupt:
        say("interrupted: stopping every process the bench started")
        raise
    except Exception:
        traceback.print_exc()
        run.notes.append("The run stopped early on an error; see the bench's output.")
    finally:
        for peer in peers.values():
            peer.stop()
        procs.stop_all()

    run.seconds = time.monotonic() - started
    if ANALYSIS.exists():
        run.extra_md = ANALYSIS.read_text()
    (results / "run.json").write_text(json.dumps(dataclasses.asdict(run), indent=1, default=str))
    write_report(run, args.out)
    say(
        f"wrote {args.out} and {args.out.with_suffix('.png')} ({run.seconds / 60:.1f} min); "
        f"raw results in {results}"
    )
    return 0


def write_report(run: report.Run, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.markdown(run))
    report.chart(run, out.with_suffix(".png"))


def scaling(
    run: report.Run, results: Path, counts: list[int], rounds: int, duration: float, warmup: float
) -> None:
    """fleet (bare) with each worker count, interleaved over rounds."""
    for r in range(rounds):
        for n in counts:
            peer = FleetBare(f"fleet-bare-{n}", f"fleet (bare) × {n}", results, workers_wanted=n)
            try:
                peer.start()
                m = load.measure(peer, duration, warmup)
            finally:
                peer.stop()
            run.scaling.setdefault(n, []).append(m)
            say(f"scaling {r + 1}/{rounds} {n} workers {m.wrk.rps:9,.0f} req/s")


def versions(peers: dict[str, Peer]) -> dict[str, str]:
    out = python_versions()
    for key, peer in peers.items():
        if key != "fleet-bare" or "fleet" not in peers:
            text = peer.version()
            if text:
                out[peer.label] = text
    out["wrk"] = machine.wrk_version()
    return out


def fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}" if value < 20 else f"{value:.0f}"


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
