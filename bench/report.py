"""Turn a run's measurements into docs/benchmarks.md and docs/benchmarks.png.

Every figure is a median over the run's rounds; ratios are medians of per-round
ratios, so two peers are only ever compared within one round (the machine is
shared and its load drifts between rounds).
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.hostile import ATTACKS, Hostile
from bench.load import CONNECTIONS, Fault, Measure

MiB = 2**20


@dataclass
class Run:
    """Everything one ``bench/run.py`` run measured."""

    started: str
    seconds: float
    config: dict[str, str]
    machine: dict[str, str]
    versions: dict[str, str]
    labels: dict[str, str]  # peer key -> label, in the report's order
    rounds: list[dict[str, Measure]] = field(default_factory=list)  # Hello World
    apps: dict[str, list[dict[str, Measure]]] = field(default_factory=dict)  # every other app
    scaling: dict[int, list[Measure]] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    cold_ms: list[float] = field(default_factory=list)
    fleet_key: str = "fleet"
    hostile: list[Hostile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra_md: str = ""


def load_run(path: Path) -> Run:
    """Read back a run.json written by bench/run.py, to render its report again."""
    import json

    from harness.wrk import Wrk

    data = json.loads(path.read_text())

    # NOTE: each wrk result is read again from wrk's own output, kept whole in run.json:
    # so runs saved before the parser's fields changed still load.
    def measure(d: dict[str, Any]) -> Measure:
        return Measure(**{**d, "wrk": Wrk.parse(d["wrk"]["raw"]), "split": tuple(d["split"])})

    def fault(d: dict[str, Any]) -> Fault:
        return Fault(**{**d, "wrk": Wrk.parse(d["wrk"]["raw"]), "timeline": []})

    data["rounds"] = [{k: measure(m) for k, m in r.items()} for r in data["rounds"]]
    data["apps"] = {
        app: [{k: measure(m) for k, m in r.items()} for r in rounds]
        for app, rounds in data.get("apps", {}).items()
    }
    data["hostile"] = [Hostile(**h) for h in data.get("hostile", [])]
    data["scaling"] = {int(n): [measure(m) for m in ms] for n, ms in data["scaling"].items()}
    data["faults"] = {k: [fault(f) for f in fs] for k, fs in data["faults"].items()}
    return Run(**data)


STOPPED_EARLY = "The run stopped early on an error; see the bench's output."


def merge(runs: list[Run], order: Sequence[str]) -> Run:
    """One report from several runs of different stages: each section from the last run that has it.

    Example: Hello World from a full run that stopped in the kill -9 stage, the rest
    from ``bench/run.py --rounds 0`` (``--report-only A/run.json --report-only B/run.json``).
    """
    parts = [f"{run.started} (measured: {', '.join(stages(run)) or 'nothing'})" for run in runs]
    out = runs[0]
    for later in runs[1:]:
        for name in ("rounds", "apps", "scaling", "faults", "cold_ms", "hostile"):
            if getattr(later, name):
                setattr(out, name, getattr(later, name))
        out.labels = {**out.labels, **later.labels}
        out.versions = {**out.versions, **later.versions}
        out.config = {**out.config, **{k: v for k, v in later.config.items() if k not in ("load", "rounds")}}
        kept = [n for n in out.notes if n != STOPPED_EARLY]
        out.notes = kept + [n for n in later.notes if n not in kept]
        out.seconds += later.seconds
        if later.fleet_key == "fleet":
            out.fleet_key = "fleet"
    rank = {k: i for i, k in enumerate(order)}
    out.labels = {k: out.labels[k] for k in sorted(out.labels, key=lambda k: rank.get(k, len(rank)))}
    if len(runs) > 1:
        out.notes.insert(
            0,
            "This report joins runs of different stages, each section from the last run that "
            "measured it: " + "; ".join(parts) + ".",
        )
    return out


def stages(run: Run) -> list[str]:
    named = (
        ("Hello World", run.rounds),
        ("scaling", run.scaling),
        ("kill -9", run.faults),
        ("other apps", run.apps),
        ("cold start", run.cold_ms),
        ("hostile", run.hostile),
    )
    return [name for name, value in named if value]


def med(values: Sequence[float | None]) -> float:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(clean) if clean else float("nan")


@dataclass(frozen=True)
class Summary:
    rps: float
    rps_min: float
    rps_max: float
    p50: float
    p99: float
    cpu_ms: float  # CPU seconds per 1,000 requests == CPU ms per request
    rss: float
    pss: float
    all_rss: float
    split: str
    failed: int
    other_cores: float  # mean cores busy with other work during the runs
    unaccepted: float  # wrk's clients waiting to be accepted mid-run: left out of p50 and p99


def summarize(run: Run, app: str = "hello") -> dict[str, Summary]:
    out: dict[str, Summary] = {}
    rounds = rounds_of(run, app)
    for key in run.labels:
        ms = [r[key] for r in rounds if key in r]
        if ms:
            out[key] = _summary(ms)
    return out


def rounds_of(run: Run, app: str) -> list[dict[str, Measure]]:
    return run.rounds if app == "hello" else run.apps.get(app, [])


def _summary(ms: list[Measure]) -> Summary:
    rps = [m.wrk.rps for m in ms]
    middle = sorted(ms, key=lambda m: m.wrk.rps)[len(ms) // 2]
    return Summary(
        rps=med(rps),
        rps_min=min(rps),
        rps_max=max(rps),
        p50=med([m.wrk.p50_ms for m in ms]),
        p99=med([m.wrk.p99_ms for m in ms]),
        cpu_ms=med([m.cpu_ms_per_request for m in ms]),
        rss=med([m.rss_bytes / MiB for m in ms]),
        pss=med([m.pss_bytes / MiB for m in ms]),
        all_rss=med([m.all_rss_bytes / MiB for m in ms]),
        split="/".join(str(n) for n in middle.split) or "-",
        failed=sum(m.wrk.failed for m in ms),
        other_cores=med([m.other_cpu_seconds / max(0.001, m.wrk.seconds) for m in ms]),
        unaccepted=med([m.unaccepted for m in ms]),
    )


def ratio(
    run: Run, a: str, b: str, value: Callable[[Measure], float] = lambda m: m.wrk.rps, app: str = "hello"
) -> float:
    """Median over rounds of value(a) / value(b), both measured in the same round."""
    return med([value(r[a]) / value(r[b]) for r in rounds_of(run, app) if a in r and b in r and value(r[b])])


# -- targets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    what: str
    measured: str
    met: bool | None  # None: not measured in this run


def targets(run: Run, f: str | None = None) -> list[Target]:
    """The issue's targets for peer ``f`` (default: fleet under systemd, else fleet bare)."""
    f = f or run.fleet_key
    present = {k for r in run.rounds for k in r}
    result: list[Target] = []

    def cmp(what: str, a: str, b: str, goal: float) -> None:
        if a in present and b in present:
            r = ratio(run, a, b)
            # NOTE: CPU per request does not depend on how much CPU the machine's other
            # work left the peer: the noise-proof view of the same comparison.
            cpu = ratio(run, b, a, lambda m: m.cpu_ms_per_request)
            result.append(Target(what, f"{r:.2f}× (requests per CPU second: {cpu:.2f}×)", r >= goal))
        else:
            result.append(Target(what, "not measured", None))

    cmp("req/s ≥ 1.0× uWSGI", f, "uwsgi", 1.0)
    cmp("req/s ≥ 1.5× Node cluster + Express", f, "node", 1.5)
    cmp("req/s ≥ 1.5× gunicorn sync", f, "gunicorn-sync", 1.5)
    if f in present and "node" in present:
        p99 = ratio(run, f, "node", lambda m: m.wrk.p99_ms)
        s = summarize(run)
        result.append(
            Target(
                "p99 ≤ Express's",
                f"{s[f].p99:.1f} ms vs {s['node'].p99:.1f} ms ({p99:.2f}× in the same rounds)",
                p99 <= 1.0,
            )
        )
    else:
        result.append(Target("p99 ≤ Express's", "not measured", None))
    lin = scaling_efficiency(run)
    if lin is not None:
        n, eff = lin
        result.append(Target(f"workers 1→{n} ≥ 90% of linear", f"{eff:.0%}", eff >= 0.9))
    else:
        result.append(Target("workers 1→N ≥ 90% of linear", "not measured", None))
    faults = run.faults.get(f, [])
    if faults:
        over = [x for x in faults if x.wrk.failed > x.victim_connections]
        result.append(
            Target(
                "kill -9: failed ≤ victim's open connections",
                ", ".join(
                    f"{x.wrk.failed} ≤ {x.victim_connections}"
                    if x.wrk.failed <= x.victim_connections
                    else f"{x.wrk.failed} > {x.victim_connections}"
                    for x in faults
                ),
                not over,
            )
        )
        serving = med([x.replacement_serving_ms for x in faults if x.replacement_serving_ms is not None])
        result.append(Target("kill -9: replacement serving ≤ 300 ms", _ms(serving), serving <= 300))
        again = [x.traffic_again_s for x in faults]
        worst = max((a for a in again if a is not None), default=float("nan"))
        ok = all(a is not None and a <= 5 for a in again)
        result.append(
            Target(
                "kill -9: traffic again within 5 s",
                ", ".join(_s(a) for a in again) + f" (worst {_s(worst)})",
                ok,
            )
        )
    else:
        for what in (
            "failed ≤ victim's open connections",
            "replacement serving ≤ 300 ms",
            "traffic again within 5 s",
        ):
            result.append(Target(f"kill -9: {what}", "not measured", None))
    if run.cold_ms:
        cold = med(run.cold_ms)
        result.append(
            Target(
                "cold first request ≤ 300 ms",
                f"{cold:.0f} ms (runs: {', '.join(f'{c:.0f}' for c in run.cold_ms)})",
                cold <= 300,
            )
        )
    else:
        result.append(Target("cold first request ≤ 300 ms", "not measured", None))
    if f in present and "node" in present:
        s = summarize(run)
        result.append(
            Target(
                "total RSS ≤ Express cluster's",
                f"{s[f].all_rss:.0f} MiB vs {s['node'].all_rss:.0f} MiB "
                f"(PSS {s[f].pss:.0f} vs {s['node'].pss:.0f})",
                s[f].all_rss <= s["node"].all_rss,
            )
        )
    else:
        result.append(Target("total RSS ≤ Express cluster's", "not measured", None))
    return result


#: the apps whose targets are set against granian and uWSGI
TARGET_APPS = ("sleep2", "sleep20", "sleep200", "mix", "django")
APP_TITLES = {
    "hello": "Hello World",
    "sleep2": "waits 2 ms",
    "sleep20": "waits 20 ms",
    "sleep200": "waits 200 ms",
    "cpu5": "5 ms of CPU",
    "django": "Django view (ORM + template)",
    "mix": "mix: 90% fast, 10% wait 50 ms",
}


def app_targets(run: Run, app: str, f: str = "fleet") -> list[Target]:
    """fleet at its defaults against granian and uWSGI on ``app``: req/s ≥ 1.0×, p99 ≤ the better."""
    rounds = rounds_of(run, app)
    present = {k for r in rounds for k in r}
    result = []
    peers = (("granian", "granian"), ("uwsgi", "uWSGI"))
    for peer, label in peers:
        what = f"{APP_TITLES[app]}: req/s ≥ 1.0× {label}"
        if f in present and peer in present:
            r = ratio(run, f, peer, app=app)
            result.append(Target(what, f"{r:.2f}×", r >= 1.0))
        else:
            result.append(Target(what, "not measured", None))
    what = f"{APP_TITLES[app]}: p99 ≤ the better of granian's and uWSGI's"
    both = [r for r in rounds if f in r and "granian" in r and "uwsgi" in r]
    if both:
        mine = med([r[f].wrk.p99_ms for r in both])
        best = med([min(r["granian"].wrk.p99_ms, r["uwsgi"].wrk.p99_ms) for r in both])
        worse = med([r[f].wrk.p99_ms / min(r["granian"].wrk.p99_ms, r["uwsgi"].wrk.p99_ms) for r in both])
        measured = f"{mine:.1f} ms vs {best:.1f} ms"
        # NOTE: wrk times only the clients a server accepted; say so where a peer left some waiting.
        left = {label: med([r[k].unaccepted for r in both]) for k, label in peers}
        unserved = [f"{label} left {n:.0f} of {CONNECTIONS} clients unaccepted"
                    for label, n in left.items() if n > 0]  # fmt: skip
        if unserved:
            measured += f" ({'; '.join(unserved)})"
        result.append(Target(what, measured, worse <= 1.0))
    else:
        result.append(Target(what, "not measured", None))
    return result


def scaling_efficiency(run: Run) -> tuple[int, float] | None:
    """(N CPUs, req/s with N workers / (N × req/s with 1)), medians of per-round ratios."""
    cpus = int(run.config.get("cpus", "0"))
    if 1 not in run.scaling or cpus not in run.scaling:
        return None
    pairs = zip(run.scaling[1], run.scaling[cpus], strict=False)
    return cpus, med([b.wrk.rps / (cpus * a.wrk.rps) for a, b in pairs if a.wrk.rps])


def _mark(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "—"}[met]


def _ms(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.0f} ms"


def _s(v: float | None) -> str:
    return "never" if v is None or math.isnan(v) else f"{v:.1f} s"


# -- markdown ------------------------------------------------------------------------------


def markdown(run: Run) -> str:
    s = summarize(run)
    keys = [k for k in run.labels if k in s]
    lines = [
        "# Benchmarks",
        "",
        "fleet against the ways Python and Node usually run one web worker per CPU, on the same",
        "machine in the same run. Made by `make bench` (`bench/run.py`); how to run it and what",
        "each figure means: [bench/README.md](../bench/README.md). Every peer runs one worker per",
        "usable CPU on 127.0.0.1 and, where it has threads, 4 per worker (fleet's default). No peer",
        "is pinned to CPUs: fleet runs with `FLEET_CPU_AFFINITY=none` (its default, `auto`, pins each",
        "worker), as none of the others pins. First Hello World (`GET /` → `200 Hello World!`), then",
        "apps that wait, compute and render (`bench/apps.py`), then hostile clients.",
        "",
        "The peers (exact command lines: [bench/README.md](../bench/README.md#the-peers)):",
        "",
        "- **fleet**: the `.deb` under a real systemd in a throwaway container, its defaults but",
        "  `FLEET_APP=bench.apps:NAME` and `FLEET_CPU_AFFINITY=none`; *fleet (bare)*: the same workers",
        "  on a socket the bench holds; *FLEET_THREADS=0*: the event-loop-only option.",
        "- **granian** `--interface wsgi --workers N --blocking-threads 4`; **uWSGI** `--http11-socket",
        "  --master --processes N --threads 4`; **gunicorn** sync and gthread (`--threads 4`); **one",
        "  waitress** (4 threads): the same Python, falcon and apps as fleet.",
        "- **Node cluster + Express** as the classic example writes it, except the example's",
        "  per-request `console.log`, which the bench leaves out (it would measure logging).",
        "- Each peer runs in a session of its own as a systemd service would (fleet: one per worker,",
        "  as each `fleet-worker@N.service` is); no peer is pinned to CPUs.",
        "",
        f"Run {run.started}, {run.seconds / 60:.1f} min. "
        + ", ".join(f"{k}: {v}" for k, v in run.config.items() if k != "cpus")
        + ".",
        "",
        "## Hello World: throughput, latency and cost",
        "",
        "| peer | req/s (median) | min–max | p50 ms | p99 ms | CPU s / 1k req | RSS MiB (workers) "
        "| RSS MiB (all) | PSS MiB | conns per worker | unaccepted | other load (cores) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: | ---: |",
    ]
    for k in keys:
        x = s[k]
        lines.append(
            f"| {run.labels[k]} | {x.rps:,.0f} | {x.rps_min:,.0f}–{x.rps_max:,.0f} "
            f"| {x.p50:.2f} | {x.p99:.2f} | {x.cpu_ms:.3f} | {x.rss:.0f} | {x.all_rss:.0f} | {x.pss:.0f} "
            f"| {x.split} | {x.unaccepted:.0f} | {x.other_cores:.2f} |"
        )
    lines += ["", "Each round, req/s (and the machine's other load in cores during that run):", ""]
    lines.append("| peer | " + " | ".join(f"round {i + 1}" for i in range(len(run.rounds))) + " |")
    lines.append("| --- |" + " ---: |" * len(run.rounds))
    for k in keys:
        cells = [
            f"{r[k].wrk.rps:,.0f} ({r[k].other_cpu_seconds / max(0.001, r[k].wrk.seconds):.2f})"
            if k in r
            else "-"
            for r in run.rounds
        ]
        lines.append(f"| {run.labels[k]} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios of req/s, row ÷ column (median of per-round ratios):", ""]
    lines.append("| | " + " | ".join(run.labels[k] for k in keys) + " |")
    lines.append("| --- |" + " ---: |" * len(keys))
    for a in keys:
        lines.append(
            f"| {run.labels[a]} | "
            + " | ".join("—" if a == b else f"{ratio(run, a, b):.2f}" for b in keys)
            + " |"
        )
    lines += [
        "",
        "![req/s and p99 per peer](benchmarks.png)",
        "",
        "## Targets",
        "",
        f"For {run.labels.get(run.fleet_key, run.fleet_key)}, in this run; the last column is the same "
        "figure with FLEET_THREADS=0 (requests served on each worker's event loop: for apps that never "
        "wait on I/O), where it was measured.",
        "",
        "| target | measured | met | FLEET_THREADS=0 | met |",
        "| --- | --- | :---: | --- | :---: |",
    ]
    # NOTE: FLEET_THREADS=0 changes only the request path: start-up, faults and
    # scaling are measured with the defaults, so only the throughput rows are its own.
    proto = {t.what: t for t in targets(run, "fleet-inline")[:4]}
    for t in targets(run):
        p = proto.get(t.what, Target(t.what, "not measured", None))
        lines.append(f"| {t.what} | {t.measured} | {_mark(t.met)} | {p.measured} | {_mark(p.met)} |")
    lines += app_sections(run)
    lines += hostile_sections(run)
    if run.faults:
        lines += [
            "",
            "## kill -9 of one worker under load",
            "",
            f"wrk {run.config.get('fault load', '')}; at t = {run.config.get('kill at', '3 s')} the bench",
            "SIGSTOPs a worker, counts its open connections, then SIGKILLs it. Medians over rounds; failed",
            "counts every round.",
            "",
            "| peer | failed requests | victim's open connections | new worker exists | "
            "replacement serving | replacement gets its share | its CPU share, last 2 s | req/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for k in [k for k in run.labels if k in run.faults]:
            fs = run.faults[k]
            again = [f.traffic_again_s for f in fs]
            again_txt = "never" if all(a is None for a in again) else ", ".join(_s(a) for a in again)
            lines.append(
                f"| {run.labels[k]} | {', '.join(str(f.wrk.failed) for f in fs)} "
                f"| {', '.join(str(f.victim_connections) for f in fs)} "
                f"| {_ms(med([f.replacement_exists_ms for f in fs]))} "
                f"| {_ms(med([f.replacement_serving_ms for f in fs]))} "
                f"| {again_txt} | {med([f.share_after for f in fs]):.0%} "
                f"| {med([f.wrk.rps for f in fs]):,.0f} |"
            )
    if run.scaling:
        cpus = int(run.config.get("cpus", "1"))
        base = med([m.wrk.rps for m in run.scaling.get(1, [])])
        lines += [
            "",
            f"## Scaling: {run.labels.get('fleet-bare', 'fleet (bare)')} with 1…{max(run.scaling)} workers",
            "",
            f"{cpus} usable CPUs; wrk shares them. Linear = workers × the 1-worker req/s, "
            f"capped at {cpus} CPUs.",
            "",
            "| workers | req/s (median) | p99 ms | CPU s / 1k req | % of linear "
            "| requests per CPU second, vs 1 worker | other load (cores) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        cpu1 = med([m.cpu_ms_per_request for m in run.scaling.get(1, [])])
        for n in sorted(run.scaling):
            ms = run.scaling[n]
            rps = med([m.wrk.rps for m in ms])
            cpu = med([m.cpu_ms_per_request for m in ms])
            lin = f"{rps / (min(n, cpus) * base):.0%}" if base else "-"
            other = med([m.other_cpu_seconds / max(0.001, m.wrk.seconds) for m in ms])
            lines.append(
                f"| {n} | {rps:,.0f} | {med([m.wrk.p99_ms for m in ms]):.2f} | {cpu:.3f} | {lin} "
                f"| {cpu1 / cpu:.0%} | {other:.2f} |"
            )
    if run.cold_ms:
        lines += [
            "",
            "## Cold start",
            "",
            "`systemctl stop fleet.service fleet.socket`, `systemctl start fleet.socket`, then one",
            "`GET /` on a new connection: the time until its response, which includes socket",
            f"activation, the workers' start and the app's import. Runs: "
            f"{', '.join(f'{c:.0f} ms' for c in run.cold_ms)}; median {med(run.cold_ms):.0f} ms.",
        ]
    if run.notes:
        lines += ["", "## Notes from this run", ""] + [f"- {n}" for n in run.notes]
    lines += ["", "## Machine and versions", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in {**run.machine, **run.versions}.items()]
    if run.extra_md:
        lines += ["", run.extra_md.strip()]
    return "\n".join(lines) + "\n"


# -- chart ---------------------------------------------------------------------------------


def chart(run: Run, path: Path) -> None:
    """Bar charts of req/s (with the rounds' min–max) and p99 latency per peer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarize(run)
    keys = [k for k in run.labels if k in s]
    labels = [textwrap.fill(run.labels[k], 10) for k in keys]
    palette = {"fleet-inline": "#8cc0e3"}  # NOTE: an option, not the defaults: paler
    colors = [palette.get(k, "#2a7ab0" if k.startswith("fleet") else "#9aa5b1") for k in keys]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.2))
    rps = [s[k].rps for k in keys]
    err = [[s[k].rps - s[k].rps_min for k in keys], [s[k].rps_max - s[k].rps for k in keys]]
    left.bar(labels, rps, color=colors, yerr=err, capsize=4)
    left.set_title("requests per second (median, min–max of rounds)")
    for i, v in enumerate(rps):
        left.text(i, v / 2, f"{v:,.0f}", ha="center", color="white", fontsize=9)
    p99 = [s[k].p99 for k in keys]
    right.bar(labels, p99, color=colors)
    right.set_title("p99 latency, ms (lower is better)")
    for i, v in enumerate(p99):
        right.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=9)
    for ax in (left, right):
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"GET / Hello World, wrk {run.config.get('load', '')}, {run.config.get('cpus', '?')} CPUs "
        f"({run.started})",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def app_sections(run: Run) -> list[str]:
    """Targets against granian and uWSGI, then a table per app."""
    if not run.apps:
        return []
    f = run.fleet_key
    lines = [
        "",
        "## Apps that wait, compute and render",
        "",
        "The same WSGI callables from `bench/apps.py` in every Python peer (`FLEET_APP=bench.apps:NAME`",
        "for fleet); Node serves only Hello World. `sleepN` waits N ms in `time.sleep`, as for a",
        "database; `cpu5` computes ~5 ms in pure Python; `django` is a Django view, an ORM query",
        "(20 of 1,000 rows, SQLite opened read-only) rendered by a template; `mix` answers 9 requests",
        "in 10 at once and makes every 10th wait 50 ms.",
        "",
        f"Load: wrk -t1 -c50 --timeout 10s, {run.config.get('other apps', '')}. *errors* are wrk's",
        "socket errors (timeouts included) and non-2xx answers. *fleet ÷ this*: fleet's req/s over the",
        "row's, measured in the same round. *unaccepted*: wrk's clients still in the listening",
        "socket's accept queue mid-run (the kernel's count). wrk times only the requests it got an",
        "answer to, so a server that serves a few clients and leaves the rest unaccepted shows the",
        "few clients' latencies: its p50 and p99 are theirs alone.",
        "",
        f"Targets for {run.labels.get(f, f)} at its defaults:",
        "",
        "| target | measured | met |",
        "| --- | --- | :---: |",
    ]
    for app in [a for a in TARGET_APPS if a in run.apps]:
        for t in app_targets(run, app, f):
            lines.append(f"| {t.what} | {t.measured} | {_mark(t.met)} |")
    lines += ["", "![req/s and p99 per app and peer](benchmarks-apps.png)"]
    for app in run.apps:
        s = summarize(run, app)
        keys = [k for k in run.labels if k in s]
        lines += [
            "",
            f"### {APP_TITLES.get(app, app)} (`bench.apps:{app}`)",
            "",
            "| peer | req/s | p50 ms | p99 ms | unaccepted | CPU ms / req | RSS MiB (workers) | errors "
            "| fleet ÷ this | other load (cores) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for k in keys:
            x = s[k]
            vs = "—" if k == f else f"{ratio(run, f, k, app=app):.2f}×" if f in s else "-"
            lines.append(
                f"| {run.labels[k]} | {x.rps:,.0f} | {x.p50:.2f} | {x.p99:.2f} | {x.unaccepted:.0f} "
                f"| {x.cpu_ms:.3f} | {x.rss:.0f} | {x.failed} | {vs} | {x.other_cores:.2f} |"
            )
    return lines


def hostile_sections(run: Run) -> list[str]:
    """Legitimate clients' success and p99 under each attack, side by side; then each verdict."""
    if not run.hostile:
        return []
    keys = [k for k in run.labels if any(h.peer == k for h in run.hostile)]
    attacks = [a for a in ATTACKS if any(h.attack == a for h in run.hostile)]
    by = {(h.attack, h.peer): h for h in run.hostile}
    lines = [
        "",
        "## Hostile clients",
        "",
        "Each attack (`bench/hostile.py`) runs on loopback against the peer serving Hello World, bounded",
        "in connections and time. During it a legitimate client opens a NEW connection every 100 ms for",
        f"`GET /` with a 2 s limit ({run.config.get('attacks', '')}): the share answered",
        "`200 Hello World!` within 2 s,",
        "and the p99 of all probes (*—* when more than 1% went unanswered). fleet is the .deb under",
        "systemd at its defaults; *one waitress* is waitress alone (4 threads).",
        "",
    ]
    for a in attacks:
        what, n = ATTACKS[a]
        lines.append(f"- **{a}**: {f'{n:,} ' if n else ''}{what}.")
    lines += [
        "",
        "| attack | " + " | ".join(run.labels[k] for k in keys) + " |",
        "| --- |" + " :---: |" * len(keys),
    ]
    for a in attacks:
        cells = []
        for k in keys:
            h = by.get((a, k))
            if h is None:
                cells.append("—")
                continue
            p99 = "—" if h.p99_ms is None else f"{h.p99_ms:.0f} ms"
            cells.append(f"{h.answered_pct:.0f}% · {p99}")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "What each peer did about the attack's own connections (its verdict), and how long after the",
        "attack's sockets closed it served `GET /` again:",
        "",
        "| attack | peer | answered | p50 | verdict | serving again after |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    for a in attacks:
        for k in keys:
            h = by.get((a, k))
            if h is None:
                continue
            p50 = "—" if h.p50_ms is None else f"{h.p50_ms:.0f} ms"
            back = "not in 60 s" if h.recovery_s is None else f"{h.recovery_s:.1f} s"
            lines.append(f"| {a} | {run.labels[k]} | {h.answered_pct:.0f}% | {p50} | {h.verdict} | {back} |")
    return lines


def app_chart(run: Run, path: Path) -> None:
    """One row per app beyond Hello World: req/s and p99 per peer."""
    if not run.apps:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(run.apps)
    fig, axes = plt.subplots(len(names), 2, figsize=(13, 2.9 * len(names)), squeeze=False)
    for row, app in zip(axes, names, strict=True):
        s = summarize(run, app)
        keys = [k for k in run.labels if k in s]
        labels = [textwrap.fill(run.labels[k], 12) for k in keys]
        colors = [
            "#2a7ab0" if k == "fleet" else "#8cc0e3" if k.startswith("fleet") else "#9aa5b1" for k in keys
        ]
        left, right = row
        rps = [s[k].rps for k in keys]
        left.bar(labels, rps, color=colors)
        left.set_title(f"{APP_TITLES.get(app, app)}: requests per second", fontsize=10)
        for i, v in enumerate(rps):
            if math.isfinite(v):
                left.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
        p99 = [s[k].p99 for k in keys]
        right.bar(labels, p99, color=colors)
        right.set_title(f"{APP_TITLES.get(app, app)}: p99 ms (lower is better)", fontsize=10)
        for i, v in enumerate(p99):
            if math.isfinite(v):
                right.text(i, v, f"{v:.0f}" if v >= 10 else f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        for ax in row:
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"bench.apps, wrk -c50, {run.config.get('cpus', '?')} CPUs ({run.started})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
