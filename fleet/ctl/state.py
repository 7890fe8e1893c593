"""What one app looks like right now: its socket, its service and every worker instance.

:func:`read` gathers it with one ``systemctl show`` for every unit (plus
``/proc`` for CPU pinning); everything else here is pure, so ``status``
renders and ``scale`` plans from plain values that tests can build by hand.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.apps import App, AppConfig, AppError
from fleet.ctl import config, ports, systemctl
from fleet.ctl.errors import CtlError
from fleet.ctl.ports import TakenPort

SOCKET_PROPS = ("ActiveState", "SubState", "Result", "Listen", "NAccepted", "NConnections")
SERVICE_PROPS = ("ActiveState", "SubState", "Wants")
INSTANCE_PROPS = (
    "ActiveState", "SubState", "UnitFileState", "MainPID", "NRestarts", "StatusText",
    "CPUUsageNSec", "MemoryCurrent", "ActiveEnterTimestampMonotonic",
)  # fmt: skip

# systemd's ActiveState values in which a unit is up or coming up. NOTE:
# "reloading" matters: while `systemctl reload fleet` runs `fleetctl restart`,
# fleet.service is reloading, and the fleet is still running.
RUNNING_STATES = frozenset({"active", "activating", "reloading"})
# NOTE: systemd prints this for an unset uint64 (UINT64_MAX), e.g. no CPU accounting.
_UNSET = "[not set]"


@dataclass(frozen=True)
class Socket:
    """The app's socket (fleet.socket): its state and the addresses it listens on."""

    unit: str = "fleet.socket"
    state: str = "inactive"
    sub_state: str = "dead"
    listen: tuple[str, ...] = ()
    # NOTE: systemd counts these only for Accept=yes sockets; fleet's shared
    # Accept=no socket always reports 0. Kept for a stable --json.
    accepted: int | None = None
    connections: int | None = None
    # Why it last failed, as systemd says it (Result=): "resources" when it could
    # not bind; "success" otherwise.
    result: str = "success"
    # Only for a failed socket: its ports another program listens on already.
    taken: tuple[TakenPort, ...] = ()


@dataclass(frozen=True)
class Instance:
    """One worker instance, ``fleet-worker@<instance>.service`` (or ``fleet-NAME-worker@...``)."""

    instance: str
    state: str
    active_state: str = "inactive"
    sub_state: str = "dead"
    enabled: bool = False
    pid: int | None = None
    restarts: int | None = None
    cpu_seconds: float | None = None
    memory_bytes: int | None = None
    uptime_seconds: float | None = None
    pinned_cpu: int | None = None
    status: str = ""
    # The unit's full name; empty means the default app's (fleet-worker@N.service).
    unit_name: str = ""

    @property
    def unit(self) -> str:
        return self.unit_name or App.default().unit(self.instance)

    @property
    def running(self) -> bool:
        return self.active_state in RUNNING_STATES


@dataclass(frozen=True)
class FleetState:
    """Everything ``fleetctl status`` shows of one app, and what ``scale`` and ``restart`` decide from."""

    app: App = field(default_factory=App.default)
    socket: Socket = field(default_factory=Socket)
    service_state: str = "inactive"
    drained: bool = False
    drain_file: str = ""
    instances: tuple[Instance, ...] = ()
    # What keeps the app from running that its config or this machine causes, each with its fix.
    problems: tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        """Whether the app is up: its service is active (or reloading, or starting)."""
        return self.service_state in RUNNING_STATES

    @property
    def enabled(self) -> list[str]:
        return [i.instance for i in self.instances if i.enabled]

    @property
    def running_instances(self) -> list[str]:
        return [i.instance for i in self.instances if i.running]

    def to_json(self) -> dict[str, Any]:
        """The documented ``fleetctl status --json`` object (docs/fleetctl.md)."""
        s = self.socket
        return {
            "socket": {
                "unit": s.unit, "state": s.state, "sub_state": s.sub_state,
                "listen": list(s.listen), "accepted": s.accepted, "connections": s.connections,
                "result": s.result,
                "taken": [
                    {"port": t.port, "holders": [{"pid": h.pid, "name": h.name} for h in t.holders]}
                    for t in s.taken
                ],
            },
            "service": {"unit": self.app.service, "state": self.service_state, "running": self.running},
            "drained": self.drained,
            "drain_file": self.drain_file or None,
            "instances": [
                {
                    "instance": i.instance, "unit": i.unit, "state": i.state,
                    "active_state": i.active_state, "sub_state": i.sub_state,
                    "enabled": i.enabled, "pid": i.pid, "restarts": i.restarts,
                    "cpu_seconds": i.cpu_seconds, "memory_bytes": i.memory_bytes,
                    "uptime_seconds": i.uptime_seconds, "pinned_cpu": i.pinned_cpu,
                    "status": i.status,
                }
                for i in self.instances
            ],
            "app": self.app.name,
            "config": str(self.app.config),
            "problems": list(self.problems),
        }  # fmt: skip


def sort_key(instance: str) -> tuple[int, int, str]:
    """Numeric instances in numeric order (2 before 10), then any others by name."""
    return (0, int(instance), "") if instance.isdigit() else (1, 0, instance)


def _int(value: str | None) -> int | None:
    if value is None or value in ("", _UNSET):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def listen_addresses(listen: str) -> tuple[str, ...]:
    """A socket's ``Listen=`` property as addresses, without systemd's ``(Stream)`` suffix.

    >>> listen_addresses("[::]:8000 (Stream)\\n/run/a.sock (Stream)")
    ('[::]:8000', '/run/a.sock')
    """
    return tuple(entry.rsplit(" (", 1)[0] for entry in listen.splitlines() if entry)


def instance_state(active: str, sub: str, status: str) -> str:
    """Name an instance's state for people: systemd's ActiveState, or "failing".

    "failing" is an instance systemd keeps restarting: it is coming up
    (activating) but the worker said ``STATUS=failed: ...`` before it exited, or
    it is waiting out ``RestartSec=`` after dying (SubState auto-restart).

    >>> instance_state("activating", "start", "failed: cannot import WSGI app 'x:y'")
    'failing'
    >>> instance_state("active", "running", "serving [::]:8000 with 4 threads")
    'active'
    """
    if active == "activating" and (status.startswith("failed:") or sub == "auto-restart"):
        return "failing"
    return active


def pinned_cpu(pid: int | None, proc: Path = Path("/proc")) -> int | None:
    """The one CPU a process may run on, from ``Cpus_allowed_list``; None when it may use several."""
    if not pid:
        return None
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                value = line.split(":", 1)[1].strip()
                return int(value) if value.isdigit() else None
    except OSError:
        pass
    return None


def _proc_usage(pid: int | None, proc: Path = Path("/proc")) -> tuple[float | None, int | None]:
    """CPU seconds and resident bytes of one process, for when systemd has no cgroup accounting."""
    if not pid:
        return None, None
    cpu: float | None = None
    rss: int | None = None
    try:
        stat = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        # NOTE: utime and stime are fields 14 and 15 of stat(5); after the ")" they are 11 and 12.
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        rss = int((proc / str(pid) / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        pass
    return cpu, rss


def build(
    units: Mapping[str, Mapping[str, str]],
    *,
    now_monotonic_usec: int,
    app: App | None = None,
    problems: tuple[str, ...] = (),
    drained: bool = False,
    drain_file: str = "",
    proc: Path | None = Path("/proc"),
) -> FleetState:
    """Make a FleetState from ``systemctl show`` blocks keyed by unit name.

    ``proc`` is where pinning (and, without systemd accounting, CPU time and
    memory) is read; None reads nothing, for tests built from plain data.
    """
    app = app or App.default()
    sock = units.get(app.socket, {})
    socket = Socket(
        unit=app.socket,
        state=sock.get("ActiveState", "inactive"),
        sub_state=sock.get("SubState", "dead"),
        listen=listen_addresses(sock.get("Listen", "")),
        accepted=_int(sock.get("NAccepted")),
        connections=_int(sock.get("NConnections")),
        result=sock.get("Result", "success"),
    )
    service = units.get(app.service, {})
    wanted = set(service.get("Wants", "").split())
    instances = []
    for unit, props in units.items():
        name = app.instance_of(unit)
        if name is None or props.get("LoadState", "loaded") == "not-found":
            continue
        active = props.get("ActiveState", "inactive")
        # NOTE: an app's workers are wanted by links its generator writes, which
        # systemctl cannot enable or disable: being wanted is what enabled means.
        enabled = (
            props.get("UnitFileState", "") in ("enabled", "enabled-runtime")
            if app.is_default
            else unit in wanted
        )
        # NOTE: systemd keeps a stopped unit loaded while anything refers to it;
        # an instance neither enabled nor up is not part of the fleet.
        if not enabled and active == "inactive":
            continue
        sub = props.get("SubState", "dead")
        status = props.get("StatusText", "")
        pid = _int(props.get("MainPID")) or None
        cpu_ns = _int(props.get("CPUUsageNSec"))
        memory = _int(props.get("MemoryCurrent"))
        cpu = cpu_ns / 1e9 if cpu_ns is not None else None
        if proc is not None and pid and (cpu is None or memory is None):
            proc_cpu, proc_rss = _proc_usage(pid, proc)
            cpu = cpu if cpu is not None else proc_cpu
            memory = memory if memory is not None else proc_rss
        entered = _int(props.get("ActiveEnterTimestampMonotonic"))
        uptime = (
            max(0.0, (now_monotonic_usec - entered) / 1e6)
            if active == "active" and entered
            else None
        )
        instances.append(
            Instance(
                instance=name,
                unit_name=unit,
                state=instance_state(active, sub, status),
                active_state=active,
                sub_state=sub,
                enabled=enabled,
                pid=pid,
                restarts=_int(props.get("NRestarts")),
                cpu_seconds=cpu,
                memory_bytes=memory,
                uptime_seconds=uptime,
                pinned_cpu=pinned_cpu(pid, proc) if proc is not None else None,
                status=status,
            )
        )
    instances.sort(key=lambda i: sort_key(i.instance))
    return FleetState(
        app=app,
        socket=socket,
        service_state=service.get("ActiveState", "inactive"),
        drained=drained,
        drain_file=drain_file,
        instances=tuple(instances),
        problems=problems,
    )


def app_problems(app: App) -> tuple[str, ...]:
    """What in an app's config, or on this machine, keeps it from running; () for the default app."""
    if app.is_default:
        return ()
    try:
        return tuple(AppConfig.read(app).problems())
    except AppError as exc:
        return (str(exc),)


def read(app: App | None = None) -> FleetState:
    """Ask systemd (one ``systemctl show``, rarely two) and /proc for an app's state now."""
    app = app or App.default()
    props = sorted({*SOCKET_PROPS, *SERVICE_PROPS, *INSTANCE_PROPS, "LoadState"})
    units = systemctl.show([app.socket, app.service, app.instances], props)
    # NOTE: the glob only matches loaded units. An enabled instance is loaded as
    # soon as fleet.service is (it Wants= it), and show just loaded fleet.service,
    # so this second call is for the rare cold start only.
    wanted = units.get(app.service, {}).get("Wants", "").split()
    unseen = [u for u in wanted if app.instance_of(u) is not None and u not in units]
    if unseen:
        units.update(systemctl.show(unseen, props))
    try:
        drain_file = config.drain_file(app)
    except CtlError:
        drain_file = ""  # NOTE: the workers cannot start with it; their rows say so
    state = build(
        units,
        now_monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
        app=app,
        problems=app_problems(app),
        drained=bool(drain_file) and os.path.exists(drain_file),
        drain_file=drain_file,
    )
    if state.socket.state != "failed":
        return state
    # NOTE: only for a failed socket: a listening fleet.socket holds its ports itself.
    socket = dataclasses.replace(state.socket, taken=ports.taken(state.socket.listen))
    return dataclasses.replace(state, socket=socket)
