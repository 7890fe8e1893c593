"""Benchmark fleet against granian, uWSGI, gunicorn, waitress and Node; write docs/benchmarks.md.

    /usr/bin/python3 bench/run.py            # full run (about 22 min on 2 CPUs): every app, faults, hostile
    /usr/bin/python3 bench/run.py --quick    # a short pass of everything: a smoke test (about 4 min)
    /usr/bin/python3 bench/run.py --only fleet --only granian --app sleep20 --no-faults --no-hostile
    /usr/bin/python3 bench/run.py --hostile --only fleet --only waitress    # only the attacks

Peers are started once, then loaded in turn, the order rotating every round, so
each round compares them under the same machine load; for each app every peer that
serves it is switched to it (Peer.serve) before its rounds. Every process the bench
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

from bench import apps, hostile, load, machine, report  # noqa: E402
from bench.peers import (  # noqa: E402
    UWSGI,
    FleetBare,
    FleetSystemd,
    Granian,
    Gunicorn,
    NodeCluster,
    OneWaitress,
    Peer,
    PeerError,
    ensure_venv,
    make_django_db,
    python_versions,
    usable_cpus,
)
from harness import procs  # noqa: E402

ANALYSIS = REPO / "bench" / "analysis.md"
# NOTE: no peer is pinned to CPUs: fleet's own FLEET_CPU_AFFINITY=auto is turned off
# (none of the others pins), so the comparison is between like schedules.
NO_PIN = {"FLEET_CPU_AFFINITY": "none"}
ALL = None
APPS_BEYOND_HELLO = tuple(a for a in apps.NAMES if a != "hello")

Factory = Callable[[str, str, Path], Peer]
# The .deb each fleet peer installs (None: the newest in dist/); set from --deb and --deb-before.
DEBS: dict[str, Path | None] = {"fleet": None, "fleet-inline": None, "fleet-before": None}
# key -> (label, factory, the apps it is measured with); the report keeps this order.
PEERS: dict[str, tuple[str, Factory, tuple[str, ...] | None]] = {
    "fleet": (
        "fleet (.deb, systemd)",
        lambda k, label, logs: FleetSystemd(k, label, logs, deb=DEBS[k], fleet_env=NO_PIN),
        ALL,
    ),
    "fleet-before": (
        "fleet before (--deb-before)",
        lambda k, label, logs: FleetSystemd(k, label, logs, deb=DEBS[k], fleet_env=NO_PIN),
        ALL,
    ),
    "fleet-bare": (
        "fleet (bare)",
        lambda k, label, logs: FleetBare(k, label, logs, fleet_env=NO_PIN),
        ("hello",),
    ),
    "fleet-inline": (
        "fleet (.deb, FLEET_THREADS=0)",
        lambda k, label, logs: FleetSystemd(
            k, label, logs, deb=DEBS[k], fleet_env={**NO_PIN, "FLEET_THREADS": "0"}),
        ("hello", "cpu5"),
    ),
    "granian": ("granian", lambda k, label, logs: Granian(k, label, logs), ALL),
    "uwsgi": ("uWSGI", lambda k, label, logs: UWSGI(k, label, logs), ALL),
    "node": ("Node cluster + Express", lambda k, label, logs: NodeCluster(k, label, logs), ("hello",)),
    "gunicorn-sync": ("gunicorn sync", lambda k, label, logs: Gunicorn(k, label, logs), ALL),
    "gunicorn-gthread": (
        "gunicorn gthread",
        lambda k, label, logs: Gunicorn(k, label, logs, worker_class="gthread"),
        ALL,
    ),
    "waitress": ("one waitress", lambda k, label, logs: OneWaitress(k, label, logs), ("hello",)),
}
FAULT_PEERS = (
    "fleet", "fleet-before", "fleet-bare", "node", "gunicorn-sync", "gunicorn-gthread", "granian", "uwsgi",
)
HOSTILE_PEERS = ("fleet", "waitress", "gunicorn-sync", "node", "granian")
# NOTE: --quick (without --only) runs every stage and every app, but beyond Hello World
# only with the peers the targets name, to stay a ~4-minute smoke test.
QUICK_PEERS = {
    "apps": ("fleet", "granian", "uwsgi"),
    "faults": ("fleet", "node"),
    "hostile": ("fleet", "granian"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round of everything: a smoke run")
    p.add_argument("--rounds", type=int, help="rounds of Hello World (default 3; 0: faults and attacks only)")
    p.add_argument("--fault-rounds", type=int, help="rounds of kill -9 under load (default 2)")
    p.add_argument("--duration", type=float, help="seconds of load per Hello World measurement (default 8)")
    p.add_argument("--app-rounds", type=int, help="rounds of every other app (default 1)")
    p.add_argument(
        "--app-duration", type=float, help="seconds of load per measurement of the others (default 5)"
    )
    p.add_argument(
        "--app",
        action="append",
        choices=apps.NAMES,
        metavar="APP",
        help=f"measure only this app (repeatable): {', '.join(apps.NAMES)}",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(PEERS),
        metavar="PEER",
        help=f"run only this peer (repeatable): {', '.join(PEERS)}",
    )
    p.add_argument("--no-faults", action="store_true", help="skip the kill -9 runs")
    p.add_argument("--no-scaling", action="store_true", help="skip fleet with 1..2×CPUs workers")
    p.add_argument("--no-hostile", action="store_true", help="skip the hostile-client stage")
    p.add_argument(
        "--hostile",
        action="store_true",
        help="run only the hostile-client stage (with --only, of those peers)",
    )
    p.add_argument(
        "--attack", action="append", choices=list(hostile.ATTACKS), help="only this attack (repeatable)"
    )
    p.add_argument("--deb", type=Path, help="the fleet .deb to install (default: newest in dist/)")
    p.add_argument("--deb-before", type=Path,
                   help="an earlier fleet .deb, measured as the peer fleet-before (only with it)")
    p.add_argument(
        "--report-only",
        type=Path,
        action="append",
        metavar="RUN_JSON",
        help="render the report again from a run's bench/results/<time>/run.json; measure nothing "
        "(repeatable: each section from the last run that has it)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "docs" / "benchmarks.md",
        help="the report to write (the charts go beside it as .png)",
    )
    return p


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long and how often each stage measures."""

    rounds: int
    duration: float
    warmup: float
    app_rounds: int
    app_duration: float
    app_warmup: float
    fault_rounds: int
    fault_duration: float
    scaling_rounds: int
    attack_seconds: float
    cold_runs: int
    quiet_budget: float  # seconds the whole run may wait for the machine's other work to calm down
    retries: int  # measurements made again when the machine was busy
    retry_budget: float  # seconds of load the whole run may spend on them

    @classmethod
    def of(cls, args: argparse.Namespace) -> Plan:
        quick = args.quick
        rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
        return cls(
            rounds=rounds,
            duration=args.duration or (3.0 if quick else 8.0),
            warmup=1.0 if quick else 2.0,
            app_rounds=args.app_rounds or 1,
            app_duration=args.app_duration or (2.0 if quick else 5.0),
            app_warmup=1.0,
            # NOTE: fewer than Hello World's rounds, to keep the full run near 20 minutes.
            fault_rounds=args.fault_rounds if args.fault_rounds is not None else 1 if quick else 2,
            fault_duration=6.0 if quick else 12.0,
            scaling_rounds=1 if quick else min(rounds, 2),
            attack_seconds=3.0 if quick else 10.0,
            cold_runs=1 if quick else 3,
            quiet_budget=20.0 if quick else 120.0,
            retries=0 if quick else 1,
            retry_budget=0.0 if quick else 120.0,
        )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.report_only:
        run = report.merge([report.load_run(path) for path in args.report_only], list(PEERS))
        if ANALYSIS.exists():
            run.extra_md = ANALYSIS.read_text()
        write_report(run, args.out)
        return 0
    plan = Plan.of(args)
    load.Quiet.budget = plan.quiet_budget
    load.RETRIES = plan.retries
    load.RETRY_BUDGET = plan.retry_budget
    kill_at = 3.0
    cpus = usable_cpus()
    wanted_apps = [a for a in apps.NAMES if not args.app or a in args.app]
    if args.hostile:
        wanted_apps = []
    DEBS["fleet"] = DEBS["fleet-inline"] = args.deb
    DEBS["fleet-before"] = args.deb_before
    keys = [k for k in PEERS if not args.only or k in args.only]
    keys = [k for k in keys if k != "fleet-before" or args.deb_before]
    if args.hostile:
        keys = [k for k in keys if k in HOSTILE_PEERS]
    else:
        keys = [
            k
            for k in keys
            if any(serves(k, a) for a in wanted_apps) or (k in HOSTILE_PEERS and not args.no_hostile)
        ]
    do_hostile = not args.no_hostile and any(k in HOSTILE_PEERS for k in keys)
    narrow = args.quick and not args.only

    def subset(stage: str) -> Callable[[str], bool]:
        return lambda key: not narrow or key in QUICK_PEERS[stage]

    hello = "hello" in wanted_apps
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = REPO / "bench" / "results" / stamp
    results.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    Clock.start = started
    run = report.Run(
        started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        seconds=0.0,
        config={
            "load": (
                f"-t{load.THREADS} -c{load.CONNECTIONS} -d{plan.duration:g}s "
                f"--timeout {load.TIMEOUT} --latency"
            ),
            "rounds": str(plan.rounds),
            "warm-up": f"{plan.warmup:g} s of the same load before each measurement",
            "other apps": (
                f"{plan.app_rounds} round(s) of {plan.app_duration:g} s after {plan.app_warmup:g} s warm-up"
            ),
            "fault load": f"-t{load.THREADS} -c{load.CONNECTIONS} -d{plan.fault_duration:g}s",
            "fault rounds": str(plan.fault_rounds),
            "kill at": f"{kill_at:g} s",
            "attacks": f"{plan.attack_seconds:g} s of probing each",
            "cpus": str(cpus),
        },
        machine=machine.info(),
        versions={},
        labels={k: PEERS[k][0] for k in keys},
    )
    procs.stop_on_signals()
    peers: dict[str, Peer] = {}
    try:
        say("the bench venv (granian, pyuwsgi, Django from PyPI)")
        ensure_venv()
        if "django" in wanted_apps:
            make_django_db()
        for key in keys:
            label, make, _ = PEERS[key]
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

        if hello:
            run.rounds = measure_rounds(peers, "hello", plan.rounds, plan.duration, plan.warmup, results)

        if hello and not args.no_scaling and "fleet-bare" in keys:
            counts = list(range(1, cpus + 1)) if args.quick else list(range(1, 2 * cpus + 1))
            scaling(run, results, counts, plan.scaling_rounds, plan.duration, plan.warmup)

        if hello and not args.no_faults:
            for r in range(plan.fault_rounds):
                for key in [k for k in FAULT_PEERS if k in peers and subset("faults")(k)]:
                    try:
                        f = load.fault(peers[key], plan.fault_duration, kill_at)
                        run.faults.setdefault(key, []).append(f)
                        revive(peers[key], run)
                    except (PeerError, OSError, ValueError) as exc:
                        run.notes.append(f"kill -9 of {peers[key].label} failed: {exc}".splitlines()[0])
                        say(f"  kill -9 of {key} failed: {exc}")
                        continue
                    load.save_raw(results / f"fault-{key}.txt", f"# round {r + 1}\n{f.wrk.raw}")
                    say(
                        f"fault {r + 1}/{plan.fault_rounds} {key:17} failed {f.wrk.failed} (victim had "
                        f"{f.victim_connections} connections), "
                        f"serving after {fmt(f.replacement_serving_ms)} ms, "
                        f"its share after {fmt(f.traffic_again_s)} s"
                    )

        for app in [a for a in wanted_apps if a != "hello"]:
            serving = switch({k: p for k, p in peers.items() if subset("apps")(k)}, app, run)
            if serving:
                run.apps[app] = measure_rounds(
                    serving, app, plan.app_rounds, plan.app_duration, plan.app_warmup, results
                )

        back = switch(peers, "hello", run)
        if "fleet" in back and hello:
            fleet = back["fleet"]
            assert isinstance(fleet, FleetSystemd)
            for _ in range(plan.cold_runs):
                run.cold_ms.append(fleet.cold_start())
                say(f"cold first request: {run.cold_ms[-1]:.0f} ms")

        if do_hostile:
            chosen = {k: p for k, p in back.items() if subset("hostile")(k)}
            attacks(run, chosen, args.attack or list(hostile.ATTACKS), plan.attack_seconds)
    except KeyboardInterrupt:
        say("interrupted: stopping every process the bench started")
        raise
    except Exception:
        traceback.print_exc()
        run.notes.append(report.STOPPED_EARLY)
    finally:
        for peer in peers.values():
            peer.stop()
        procs.stop_all()

    run.seconds = time.monotonic() - started
    if ANALYSIS.exists():
        run.extra_md = ANALYSIS.read_text()
    (results / "run.json").write_text(json.dumps(dataclasses.asdict(run), indent=1, default=str))
    write_report(run, args.out)
    say(f"wrote {args.out} and its charts ({run.seconds / 60:.1f} min); raw results in {results}")
    return 0


def revive(peer: Peer, run: report.Run) -> None:
    """After a kill -9: wait for the peer to serve again; start it anew if it cannot.

    NOTE: granian, by default, shuts down entirely when a worker dies unexpectedly
    (``--respawn-failed-workers`` is off); the report says so rather than the run ending.
    """
    try:
        peer.wait_ready(timeout=10)
        return
    except PeerError:
        pass
    note = f"{peer.label} stopped serving after one worker was killed; the bench started it again"
    if note not in run.notes:
        run.notes.append(note)
    say(f"  {note}")
    peer.stop()
    peer.start()


def serves(key: str, app: str) -> bool:
    measured = PEERS[key][2]
    return measured is None or app in measured


def switch(peers: dict[str, Peer], app: str, run: report.Run) -> dict[str, Peer]:
    """Switch every peer measured with ``app`` to it; the ones that could, by key."""
    out: dict[str, Peer] = {}
    for key, peer in peers.items():
        if not serves(key, app):
            continue
        try:
            peer.serve(app)
            out[key] = peer
        except (PeerError, OSError, RuntimeError) as exc:
            run.notes.append(f"{peer.label} could not serve {app}: {exc}".splitlines()[0])
            say(f"  {peer.label} could not serve {app}: {exc}")
            peer.stop()
    if out:
        say(f"serving {app}: {', '.join(out)}")
    return out


def measure_rounds(
    peers: dict[str, Peer], app: str, rounds: int, duration: float, warmup: float, results: Path
) -> list[dict[str, load.Measure]]:
    """``rounds`` rounds of every peer with ``app``, the order rotating each round."""
    keys = [k for k in peers if serves(k, app)]
    out: list[dict[str, load.Measure]] = []
    for r in range(rounds):
        order = keys[r % max(1, len(keys)) :] + keys[: r % max(1, len(keys))]
        measured: dict[str, load.Measure] = {}
        for key in order:
            try:
                m = load.measure(peers[key], duration, warmup)
            except (PeerError, OSError, ValueError) as exc:
                say(f"  {key} not measured with {app}: {exc}")
                continue
            measured[key] = m
            load.save_raw(results / f"wrk-{app}-{key}.txt", f"# round {r + 1}\n{m.wrk.raw}")
            say(
                f"{app:8} round {r + 1}/{rounds} {key:17} {m.wrk.rps:9,.0f} req/s  "
                f"p99 {m.wrk.p99_ms:8.2f} ms  cpu {m.cpu_ms_per_request:.3f} ms/req  "
                f"errors {m.wrk.failed}  other load {m.other_cpu_seconds / duration:.2f} cores"
            )
        out.append(measured)
    return out


def attacks(run: report.Run, peers: dict[str, Peer], names: list[str], seconds: float) -> None:
    """Every attack against every hostile peer (the kill storm against fleet only)."""
    limit = hostile.raise_fd_limit()
    say(f"hostile clients: {', '.join(names)} (open files allowed: {limit})")
    for name in names:
        for key in [k for k in HOSTILE_PEERS if k in peers]:
            if name == "kill-storm" and not key.startswith("fleet"):
                continue
            try:
                h = hostile.run(peers[key], name, seconds)
            except (PeerError, OSError) as exc:
                run.notes.append(f"{name} against {run.labels[key]} failed: {exc}".splitlines()[0])
                continue
            run.hostile.append(h)
            p99 = "-" if h.p99_ms is None else f"{h.p99_ms:.0f} ms"
            back = "never (60 s)" if h.recovery_s is None else f"{h.recovery_s:.1f} s"
            say(
                f"attack {name:15} {key:15} answered {h.answered_pct:5.1f}% p99 {p99:>8}, "
                f"serving again after {back}; {h.verdict}"
            )


def write_report(run: report.Run, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.markdown(run))
    report.chart(run, out.with_suffix(".png"))
    report.app_chart(run, out.with_name(out.stem + "-apps.png"))


def scaling(
    run: report.Run, results: Path, counts: list[int], rounds: int, duration: float, warmup: float
) -> None:
    """fleet (bare) with each worker count, interleaved over rounds."""
    for r in range(rounds):
        for n in counts:
            peer = FleetBare(
                f"fleet-bare-{n}", f"fleet (bare) × {n}", results, workers_wanted=n, fleet_env=NO_PIN
            )
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


class Clock:
    start = time.monotonic()


def say(message: str) -> None:
    elapsed = int(time.monotonic() - Clock.start)
    print(f"bench [{elapsed // 60:2d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
