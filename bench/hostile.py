"""Hostile clients against a peer, with legitimate traffic measured alongside.

Each attack runs against 127.0.0.1 only, for a bounded time with a bounded number of
connections, and closes every socket it opened before it returns. While it runs, a
probe opens a NEW connection every 100 ms for ``GET /`` with a 2 s limit, as a
visitor arriving during the attack would: the share it got answered (``200 Hello
World!`` within 2 s) and its latency are the legitimate client's view. The attack's own
connections say what the peer did about them: its *verdict* (answered, rejected with a
status, closed by the server, or left hanging).

    silent            N connections that send nothing
    idle-keepalive    N connections that each send one request, then stay quiet
    slowloris         N connections sending their headers a byte a second
    slow-body         N POSTs with a 100 kB Content-Length, sending a byte a second
    many-headers      4 clients in a loop, each request carrying 10,000 headers
    kill-storm        fleet only: kill -9 one worker every second (systemd replaces them)

The clients and the probe are the e2e suite's own (:mod:`harness.attacks`); this module
only says which attacks the bench runs and how it reports them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.peers import Peer, PeerError
from harness.attacks import (
    SLOWLORIS_DRIP,
    SLOWLORIS_HEAD,
    Attack,
    Horde,
    HordeReport,
    Probe,
    many_headers,
    raise_open_files,
    request,
    slow_body,
)

PROBE_EVERY = 0.1
PROBE_TIMEOUT = 2.0
RAMP_MAX = 5.0  # the longest an attack may take to open its connections before probing starts

# NOTE: the held attacks open their connections once (a closed one is not replaced), so
# the verdict says what the peer did to each; many-headers replaces each answered one.
SHAPES: dict[str, Attack] = {
    "silent": Attack("silent", 64, reopen=False),
    "idle-keepalive": Attack("idle-keepalive", 2000, head=request(), reopen=False),
    "slowloris": Attack("slowloris", 400, head=SLOWLORIS_HEAD, drip=SLOWLORIS_DRIP, reopen=False),
    "slow-body": Attack("slow-body", 400, head=slow_body(100_000), drip=b"x", reopen=False),
    "many-headers": Attack("many-headers", 4, head=many_headers(10_000)),
}

WHAT = {
    "silent": "TCP connections that send nothing",
    "idle-keepalive": "keep-alive connections: one request each, then quiet",
    "slowloris": "connections sending their headers a byte per second",
    "slow-body": "POSTs of Content-Length 100 kB sending a byte per second",
    "many-headers": "clients in a loop, each request with 10,000 headers",
    "kill-storm": "kill -9 of one worker every second (fleet only)",
}
#: name -> (what it is, connections), in the report's order
ATTACKS: dict[str, tuple[str, int]] = {
    name: (what, SHAPES[name].connections if name in SHAPES else 0) for name, what in WHAT.items()
}


@dataclass
class Hostile:
    """One attack on one peer: what legitimate clients got, and what the peer did."""

    peer: str
    attack: str
    seconds: float
    probes: int
    answered: int  # 200 Hello World! within PROBE_TIMEOUT
    latencies_ms: list[float] = field(default_factory=list)  # of the answered probes
    verdict: str = ""
    recovery_s: float | None = 0.0  # after the attack ended, until the peer served again

    @property
    def answered_pct(self) -> float:
        return 100.0 * self.answered / max(1, self.probes)

    @property
    def p99_ms(self) -> float | None:
        """p99 over every probe, an unanswered one counting as slower than any answer."""
        if not self.probes or self.answered < 0.99 * self.probes:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.99 * self.probes))]

    @property
    def p50_ms(self) -> float | None:
        if not self.probes or self.answered < 0.5 * self.probes:
            return None
        return statistics.median(sorted(self.latencies_ms) + [float("inf")] * (self.probes - self.answered))


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit: the attacks hold thousands."""
    return raise_open_files()


def run(peer: Peer, attack: str, seconds: float) -> Hostile:
    """Run ``attack`` on ``peer`` for ``seconds`` of probing; wait until it serves again."""
    if attack == "kill-storm":
        with KillStorm(peer) as storm, Probe(peer.port, PROBE_EVERY, PROBE_TIMEOUT) as probe:
            time.sleep(seconds)
        verdict = f"{storm.kills} workers killed, one a second"
    else:
        shape = SHAPES[attack]
        with Horde(peer.port, shape) as horde:
            horde.wait_connected(shape.connections, RAMP_MAX)
            with Probe(peer.port, PROBE_EVERY, PROBE_TIMEOUT) as probe:
                time.sleep(seconds)
            report = horde.stop()
        verdict = requests_verdict(report) if shape.reopen else held_verdict(report, shape.connections)
    answered = [round(s.seconds * 1000, 2) for s in probe.samples if s.ok]
    result = Hostile(peer=peer.key, attack=attack, seconds=seconds, probes=len(probe.samples),
                     answered=len(answered), latencies_ms=answered, verdict=verdict)  # fmt: skip
    started = time.monotonic()
    try:
        peer.wait_ready(timeout=60)
        result.recovery_s = time.monotonic() - started
    except PeerError:
        result.recovery_s = None
    return result


def held_verdict(report: HordeReport, wanted: int) -> str:
    """What the server did to the attack's connections, in one line."""
    parts = [f"{report.connected} of {wanted} connected"]
    statuses = Counter({s: n for s, n in (report.statuses + report.open_statuses).items() if s is not None})
    if statuses:
        parts.append("answered " + ", ".join(f"{s} ×{n}" for s, n in sorted(statuses.items())))
    if report.close_ages:
        median = statistics.median(report.close_ages)
        parts.append(f"server closed {report.closed_by_server} (median after {median:.1f} s)")
    if report.errors:
        parts.append(", ".join(f"{e} ×{n}" for e, n in report.errors.most_common(2)))
    parts.append(f"{report.held} held open to the end")
    return "; ".join(parts)


def requests_verdict(report: HordeReport) -> str:
    """How the server answered an attack of one request per connection, again and again."""
    answers = ", ".join(f"{s or 'closed or reset'} ×{n}" for s, n in report.statuses.most_common())
    took = report.close_ages
    median = f"; median {statistics.median(took) * 1000:.0f} ms per request" if took else ""
    failed = "".join(f"; {e} ×{n}" for e, n in report.errors.most_common(2))
    unanswered = f"; {report.held} still in flight at the end" if report.held else ""
    return f"{report.closed_by_server} requests: {answers or 'none answered'}{median}{failed}{unanswered}"


class KillStorm:
    """kill -9 one of the peer's workers a second, taking turns, while the ``with`` lasts."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kill-storm", daemon=True)

    def __enter__(self) -> KillStorm:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            workers = sorted(self.peer.workers())
            if workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(workers[self.kills % len(workers)], signal.SIGKILL)
                    self.kills += 1
            self._stop.wait(1.0)
