"""The CPU instructions each server spends on a request, counted by callgrind: a figure noise cannot move.

    /usr/bin/python3 -m bench.experiments.instructions [--app hello --app sleep2 --app django]
                                                       [--requests 400] [--server fleet-pool ...]

On this shared two-core machine a peer's throughput moves 5-20% from one round to
the next, more than fleet and the peers differ by on the apps that wait and
compute. callgrind counts the user-space instructions a process runs, the same for
the same code and requests whatever else the machine does. Each server runs one
worker under valgrind; it is warmed up, its counts are zeroed
(``callgrind_control -z``), it serves N requests on 8 keep-alive connections, and
its counts are dumped (``-d``). The figure is instructions a request, split by the
object they ran in: the interpreter (the app, and any server code in Python), the
server's native code, libc. Then the same for 20 s with no request: what runs on
timers, which valgrind's ~50-fold slowdown inflates per request, is given apart.

Not counted: the kernel's work for each (system calls, wake-ups, context switches),
and lock waits: valgrind runs one thread at a time. So each server also serves
natively, and /proc gives its context switches and CPU time a request (timed,
so noisy; the switches are steadier). fleet's dispatch is fixed under valgrind
(``fleet-inline``: FLEET_THREADS=0, as computing apps are served; ``fleet-pool``:
FLEET_INLINE_MAX=0, as waiting apps are), because each request there takes ~50
times as long, which would change what the default dispatch decides; ``fleet``,
the default, is only run natively. Every peer runs the bench venv's interpreter,
so the app's own cost is the same in each. Every process is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from bench.peers import UWSGI, VENV, FleetBare, Granian, Peer, make_django_db, python  # noqa: E402
from harness import procs  # noqa: E402
from harness.net import HOST  # noqa: E402

SERVERS = ("fleet", "fleet-inline", "fleet-pool", "granian", "uwsgi")
NOT_COUNTED = ("fleet",)  # its default dispatch decides by time, which valgrind stretches ~50-fold
CONNECTIONS = 8  # the load's keep-alive connections: two per pool thread of a worker
WARM_UP = 64  # requests before counting: imports, caches, Django's set-up
IDLE_SECONDS = 20.0
THREADS = 4  # fleet's default per worker, given to every peer


@dataclass
class Counted:
    """One server's instructions over one stretch, by the object (ELF file) they ran in."""

    by_object: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    requests: int = 0

    def total(self) -> int:
        return sum(self.by_object.values())


@dataclass
class Kernel:
    """A process's context switches (all its threads, voluntary or not), user and system CPU seconds."""

    switches: float
    user: float
    system: float

    @classmethod
    def of(cls, pid: int) -> Kernel:
        return cls(procs.context_switches(pid), *procs.user_system_seconds(pid))


def valgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p", "--trace-children=yes",
            "--vgdb=yes", "-q"]


class Server:
    """One worker of ``name`` serving ``app`` on a port of loopback, as the bench starts it (bench/peers.py):
    under callgrind, or natively."""

    def __init__(self, name: str, app: str, work: Path, counted: bool = True) -> None:
        self.name = name
        self.out = work / f"{name}-{app}" / ("callgrind" if counted else "native")
        self.out.mkdir(parents=True)
        under = tuple(valgrind(self.out)) if counted else ()
        # NOTE: valgrind makes start-up ~10 times as long
        common: dict[str, Any] = dict(key=name, label=name, log_dir=self.out, workers_wanted=1, app=app,
                                      under=under, start_timeout=120.0)
        self.peer: Peer
        if name.startswith("fleet"):
            fleet_env = {"FLEET_CPU_AFFINITY": "none", "STATE_DIRECTORY": str(self.out),
                         "FLEET_THREADS": str(THREADS)}
            if name == "fleet-inline":
                fleet_env["FLEET_THREADS"] = "0"
            elif name == "fleet-pool":
                fleet_env["FLEET_INLINE_MAX"] = "0"
            self.peer = FleetBare(**common, fleet_env=fleet_env)
        elif name == "granian":
            self.peer = Granian(**common, threads=THREADS)
        elif name == "uwsgi":
            self.peer = UWSGI(**common, threads=THREADS)
        else:
            raise SystemExit(f"no server {name!r}: pick from {', '.join(SERVERS)}")
        try:
            self.peer.start()
        except BaseException:
            self.peer.stop()
            raise
        self.port = self.peer.port

    def count(self, stretch: str, work: float | int) -> Counted:
        """Zero the counts, serve ``work`` requests (an int) or idle ``work`` seconds, dump the counts."""
        pids = self.peer.pids()
        for pid in pids:
            _control("-z", pid)
        started = time.monotonic()
        if isinstance(work, int):
            load(self.port, work, CONNECTIONS)
        else:
            time.sleep(work)  # NOTE: the stretch is a length of time: what runs on timers
        seconds = time.monotonic() - started
        counted = Counted(seconds=seconds, requests=work if isinstance(work, int) else 0)
        for pid in pids:
            before = set(self.out.glob(f"cg.{pid}.*"))
            _control("-d", pid)
            for dump in set(self.out.glob(f"cg.{pid}.*")) - before:
                text = dump.read_text(errors="replace")
                counted.by_object.update(shares(self_cost_by_object(text), summary(text)))
                dump.rename(dump.with_name(f"{stretch}.{dump.name}"))
        if not counted.by_object and isinstance(work, int):
            raise SystemExit(f"{self.name}: callgrind_control dumped no counts for {pids}: is vgdb allowed "
                             "to attach (ptrace)? Run as root, or set kernel.yama.ptrace_scope=0")
        return counted

    def kernel_side(self, requests: int) -> Kernel:
        """Serve ``requests`` requests (not under valgrind); what the kernel did for them, by /proc."""
        pids = self.peer.pids()
        before = [Kernel.of(pid) for pid in pids]
        load(self.port, requests, CONNECTIONS)
        after = [Kernel.of(pid) for pid in pids]
        pairs = list(zip(after, before, strict=True))
        return Kernel(*(sum(getattr(a, f) - getattr(b, f) for a, b in pairs) / requests
                        for f in ("switches", "user", "system")))

    def stop(self) -> None:
        self.peer.stop()


def _control(flag: str, pid: int) -> None:
    # NOTE: the master of a forking server and its helpers may be gone or not under valgrind
    subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, timeout=120)


def load(port: int, requests: int, connections: int) -> None:
    """``requests`` GETs of / over ``connections`` keep-alive connections; raise unless each got 200."""
    failures: list[str] = []

    def client(count: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=300)
        try:
            for _ in range(count):
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(f"{response.status} {response.reason}")
        except (OSError, http.client.HTTPException) as error:
            failures.append(repr(error))
        finally:
            conn.close()

    shares = [requests // connections + (i < requests % connections) for i in range(connections)]
    threads = [threading.Thread(target=client, args=(share,)) for share in shares if share]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise OSError(f"{len(failures)} of {requests} requests failed, first: {failures[0]}")


_NAMED = re.compile(r"\((\d+)\)(?: (.*))?")


def self_cost_by_object(text: str) -> Counter[str]:
    """Sum a callgrind dump's self cost (Ir) by object file.

    The format (callgrind's docs, "Callgrind Format Specification"): ``ob=`` sets the
    object of the cost lines that follow; names may be compressed as ``(id) name``
    and then ``(id)``, and ob= and cob= share the ids; the cost line after a
    ``calls=`` line is the inclusive cost of that call, already counted in the
    callee, so it is skipped.
    """
    names: dict[str, str] = {}
    costs: Counter[str] = Counter()
    current = "?"
    after_call = False
    for line in text.splitlines():
        if not line:
            continue
        head = line[0]
        if head.isdigit() or head in "+-*":
            if after_call:
                after_call = False
                continue
            parts = line.split()
            if len(parts) > 1:
                costs[current] += int(parts[1])
        elif line.startswith("ob="):
            current = _name(names, line[3:])
        elif line.startswith("cob="):
            _name(names, line[4:])  # NOTE: a called object's name may be given here first
        elif line.startswith("calls="):
            after_call = True
    return costs


def summary(text: str) -> int:
    """A dump's own count of what ran in it (its ``summary:`` line)."""
    match = re.search(r"^summary: (\d+)$", text, re.M)
    return int(match[1]) if match else 0


def shares(costs: Counter[str], total: int) -> Counter[str]:
    """``total`` split as ``costs`` are.

    NOTE: a dump's cost lines added up to 0.3-3% more than its summary here. The
    summary is callgrind's own count of what ran in the dump, so it is the total,
    and the cost lines give only each object's share of it.
    """
    whole = sum(costs.values())
    if not whole:
        return Counter()
    return Counter({name: round(total * cost / whole) for name, cost in costs.items()})


def _name(names: dict[str, str], value: str) -> str:
    match = _NAMED.fullmatch(value)
    if not match:
        return value
    key, name = match.groups()
    if name is not None:
        names[key] = name
    return names.get(key, value)


def kind(path: str) -> str:
    """An object's part in serving: the interpreter, a server's native code, the C library, the rest."""
    name = os.path.basename(path)
    if name.startswith(("python3", "libpython")):
        return "interpreter"
    if "granian" in path or "uwsgi" in path:
        return "server (native)"
    if name.startswith(("libc.", "libc-", "ld-linux", "libm.", "libpthread")):
        return "libc"
    return "other"


def by_kind(counted: Counted) -> Counter[str]:
    kinds: Counter[str] = Counter()
    for path, cost in counted.by_object.items():
        kinds[kind(path)] += cost
    return kinds


@dataclass
class Row:
    """One server on one app: run natively, and counted under callgrind (serving, then idle) unless
    its figures would mean nothing there (NOT_COUNTED)."""

    app: str
    server: str
    kernel: Kernel
    served: Counted | None = None
    idle: Counted | None = None

    def per_request(self) -> tuple[float, float] | None:
        """Instructions a request as counted, and less what the same seconds cost with no request."""
        served, idle = self.served, self.idle
        if served is None or idle is None:
            return None
        idle_rate = idle.total() / idle.seconds if idle.seconds else 0.0
        total = served.total()
        return total / served.requests, (total - idle_rate * served.seconds) / served.requests

    def line(self) -> str:
        k = self.kernel
        native = (f"natively {k.switches:.2f} context switches, {k.user * 1e6:.0f} µs user and "
                  f"{k.system * 1e6:.0f} µs system CPU a request")
        counted = self.per_request()
        if counted is None or self.served is None or self.idle is None:
            return f"{self.app:8} {self.server:13} {native}"
        raw, net = counted
        requests = self.served.requests
        kinds = by_kind(self.served).most_common()
        split = ", ".join(f"{kind} {cost / requests:,.0f}" for kind, cost in kinds)
        idle = self.idle.total() / self.idle.seconds
        return (f"{self.app:8} {self.server:13} {raw:11,.0f} instructions a request ({net:,.0f} less timers, "
                f"{idle:,.0f} a second idle; {split}); {native}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.experiments.instructions", description=__doc__.split("\n")[0])
    p.add_argument("--app", action="append", help="a bench/apps.py callable (default: hello, sleep2, django)")
    p.add_argument("--server", action="append", choices=SERVERS, help="default: all of them")
    p.add_argument("--requests", type=int, default=400, help="requests counted per server and app")
    p.add_argument("--native-requests", type=int, default=4000,
                   help="requests served natively per server and app, for the kernel's side")
    p.add_argument("--keep", action="store_true", help="keep the callgrind dumps (for callgrind_annotate)")
    args = p.parse_args(argv)
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        sys.exit("valgrind is not installed: run `packaging/install-deps --bench`, then this again")
    if not Path(python()).exists() or not (VENV / "bin" / "granian").exists():
        sys.exit("the bench venv is missing: run `packaging/install-deps --bench`, then this again")
    apps = args.app or ["hello", "sleep2", "django"]
    servers = args.server or list(SERVERS)
    if "django" in apps:
        make_django_db()
    work = Path(tempfile.mkdtemp(prefix="instructions-"))
    procs.stop_on_signals()
    rows: list[Row] = []
    try:
        for app in apps:
            for name in servers:
                native = Server(name, app, work, counted=False)
                try:
                    load(native.port, WARM_UP, CONNECTIONS)
                    row = Row(app, name, native.kernel_side(args.native_requests))
                finally:
                    native.stop()
                if name not in NOT_COUNTED:
                    server = Server(name, app, work)
                    try:
                        load(server.port, WARM_UP, CONNECTIONS)
                        row.served = server.count("load", args.requests)
                        row.idle = server.count("idle", IDLE_SECONDS)
                    finally:
                        server.stop()
                rows.append(row)
                print(row.line(), flush=True)
        print()
        print(table(rows))
    finally:
        procs.stop_all()
        if args.keep:
            print(f"callgrind dumps kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def table(rows: list[Row]) -> str:
    """A Markdown table: each server's instructions a request, against granian's on the same app."""
    granian: dict[str, float] = {}
    for row in rows:
        counted = row.per_request()
        if row.server == "granian" and counted:
            granian[row.app] = counted[1]
    lines = ["| app | server | instructions a request | less timers | × granian | in the interpreter "
             "| in native server code | context switches a request (native) | CPU µs a request (native) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        k = row.kernel
        native = f"{k.switches:.2f} | {(k.user + k.system) * 1e6:,.0f}"
        counted = row.per_request()
        if counted is None or row.served is None:
            lines.append(f"| {row.app} | {row.server} | - | - | - | - | - | {native} |")
            continue
        raw, net = counted
        kinds = by_kind(row.served)
        ratio = f"{net / granian[row.app]:.3f}" if row.app in granian else "-"
        lines.append(f"| {row.app} | {row.server} | {raw:,.0f} | {net:,.0f} | {ratio} "
                     f"| {kinds['interpreter'] / row.served.requests:,.0f} "
                     f"| {kinds['server (native)'] / row.served.requests:,.0f} | {native} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
