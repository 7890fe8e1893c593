"""``fleetctl status [APP]``: the socket, the app and one row per worker, as a table or as JSON.

With no app named and other apps configured, one table of every app comes
first, then every app's workers in one table.

The renderers are pure functions of a :class:`~fleet.ctl.state.FleetState`,
so their output is tested from hand-built states.
"""

from __future__ import annotations

import json

from fleet import apps
from fleet.apps import App
from fleet.ctl import state as fleet_state
from fleet.ctl.errors import command
from fleet.ctl.state import FleetState

COLUMNS = ("UNIT", "STATE", "ENABLED", "PID", "RESTARTS", "CPU", "MEMORY", "UPTIME", "PINNED", "STATUS")


def format_duration(seconds: float | None) -> str:
    """Compact, like systemd's: ``0.4s``, ``12s``, ``5m07s``, ``3h02m``, ``4d05h``; None -> ``-``.

    >>> format_duration(307), format_duration(0.43), format_duration(None)
    ('5m07s', '0.4s', '-')
    """
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def format_bytes(size: int | None) -> str:
    """Powers of 1024 with systemd's suffixes: ``512B``, ``23.4M``, ``1.2G``; None -> ``-``.

    >>> format_bytes(24_536_678), format_bytes(None)
    ('23.4M', '-')
    """
    if size is None:
        return "-"
    value = float(size)
    for suffix in ("B", "K", "M", "G", "T"):
        if value < 1024 or suffix == "T":
            return f"{size}B" if suffix == "B" else f"{value:.1f}{suffix}"
        value /= 1024
    raise AssertionError("unreachable")


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def format_status(state: FleetState) -> str:
    """Render the human status: two summary lines, then a table like ``systemctl list-units``."""
    sock = state.socket
    if sock.state == "active":
        listening = f"listening on {', '.join(sock.listen) or 'no addresses'}"
        idle = " (the socket starts it on the first connection)"
    elif sock.state == "failed":
        listening = "not listening (why, and the fix: below)"
        idle = ""
    else:
        listening = f"not listening; start it: sudo systemctl start {sock.unit}"
        idle = ""
    lines = [
        f"{sock.unit}: {sock.state} ({sock.sub_state}), {listening}",
        f"{state.app.service}: {state.service_state}{'' if state.running else idle}",
    ]
    enabled = len(state.enabled)
    up = sum(1 for i in state.instances if i.active_state == "active")
    drained = (
        f"drained ({state.drain_file} exists): health checks answer 503"
        if state.drained
        else "not drained"
    )
    lines.append(f"workers: {up} active, {enabled} enabled; {drained}")
    lines += [f"problem: {p}" for p in state.problems]
    if not state.instances:
        lines += ["", f"no workers: {command(state.app, 'scale', 'auto')} runs one per CPU"]
        return "\n".join(lines + socket_failure(state)) + "\n"
    lines.append("")
    lines += worker_table([state])
    return "\n".join(lines + socket_failure(state)) + "\n"


def worker_table(states: list[FleetState]) -> list[str]:
    """One row per worker of every app in ``states``, like ``systemctl list-units``."""
    rows = [list(COLUMNS)]
    for i in (i for state in states for i in state.instances):
        rows.append([
            i.unit.removesuffix(".service"),
            i.state,
            "yes" if i.enabled else "no",
            _cell(i.pid),
            _cell(i.restarts),
            format_duration(i.cpu_seconds),
            format_bytes(i.memory_bytes),
            format_duration(i.uptime_seconds),
            _cell(i.pinned_cpu),
            _cell(i.status),
        ])  # fmt: skip
    return table(rows)


def table(rows: list[list[str]]) -> list[str]:
    """Rows as columns two spaces apart, like ``systemctl list-units``; the header is ``rows[0]``."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for row in rows:
        # NOTE: the last column is free text: never padded, never cut.
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines


APP_COLUMNS = ("APP", "SOCKET", "LISTEN", "SERVICE", "WORKERS", "DRAINED", "PROBLEMS")


def format_overview(states: list[FleetState]) -> str:
    """Every app in one table, then every app's workers in one table, then any socket's failure."""
    rows = [list(APP_COLUMNS)]
    for state in states:
        up = sum(1 for i in state.instances if i.active_state == "active")
        rows.append([
            state.app.name,
            state.socket.state,
            ", ".join(state.socket.listen) or "-",
            state.service_state,
            f"{up}/{len(state.enabled)}",
            "yes" if state.drained else "no",
            "; ".join(state.problems) or "-",
        ])  # fmt: skip
    lines = table(rows)
    if any(state.instances for state in states):
        lines += ["", *worker_table(states)]
    for state in states:
        lines += socket_failure(state)
    lines += ["", "WORKERS is active/enabled; fleetctl status APP shows one app in full"]
    return "\n".join(lines) + "\n"


def socket_failure(state: FleetState) -> list[str]:
    """Say why a failed fleet.socket does not listen, then how to fix it; [] when it did not fail.

    Shown last, so it is what a user reads first at the end of ``apt install``.
    """
    sock = state.socket
    if sock.state != "failed":
        return []
    if not sock.taken:
        return [
            "",
            f"{sock.unit} failed ({sock.result}): see why with: journalctl -u {sock.unit}",
            f"fix: then start it again: sudo systemctl restart {sock.unit}",
        ]
    lines = [""]
    for taken in sock.taken:
        by = ", ".join(map(str, taken.holders)) or "a process not visible here (as root, fleetctl names it)"
        lines.append(f"{sock.unit} cannot listen: port {taken.port} is taken by {by}.")
    example = 8081 if any(t.port == 8080 for t in sock.taken) else 8080
    if not state.app.is_default:
        return [
            *lines,
            f"fix: stop that program, or set FLEET_LISTEN in {state.app.config} to a free address "
            f"(e.g. 127.0.0.1:{example}), then: sudo fleetctl apply",
        ]
    return [
        *lines,
        "fix: stop that program, or move fleet to a free port with a drop-in, then restart the socket:",
        f"  sudo systemctl edit {sock.unit}   # saved as /etc/systemd/system/{sock.unit}.d/override.conf:",
        "      [Socket]",
        "      ListenStream=",
        f"      ListenStream={example}",
        f"  sudo systemctl restart {sock.unit}",
    ]


def format_json(state: FleetState) -> str:
    """Render ``status --json``: the documented schema, keys in a stable order."""
    return json.dumps(state.to_json(), indent=2) + "\n"


def format_overview_json(states: list[FleetState]) -> str:
    """``status --json`` with several apps: the default app's object as before, plus ``apps``."""
    default, *_ = states
    return json.dumps({**default.to_json(), "apps": [s.to_json() for s in states]}, indent=2) + "\n"


def run(as_json: bool, app: App | None = None) -> int:
    """Print an app's status, or every app's; 0 whatever the workers' states (it only reports)."""
    if app is not None or not apps.configured():
        state = fleet_state.read(app)
        print(format_json(state) if as_json else format_status(state), end="")
        return 0
    states = [fleet_state.read(a) for a in apps.every()]
    print(format_overview_json(states) if as_json else format_overview(states), end="")
    return 0
