"""``fleetctl status``: the socket, the fleet and one row per worker, as a table or as JSON.

The renderers are pure functions of a :class:`~fleet.ctl.state.FleetState`,
so their output is tested from hand-built states.
"""

from __future__ import annotations

import json

from fleet.ctl import state as fleet_state
from fleet.ctl import systemd
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
        listening = "not listening; start it: sudo systemctl start fleet.socket"
        idle = ""
    lines = [
        f"{sock.unit}: {sock.state} ({sock.sub_state}), {listening}",
        f"{systemd.SERVICE}: {state.service_state}{'' if state.running else idle}",
    ]
    enabled = len(state.enabled)
    up = sum(1 for i in state.instances if i.active_state == "active")
    drained = (
        f"drained ({state.drain_file} exists): health checks answer 503"
        if state.drained
        else "not drained"
    )
    lines.append(f"workers: {up} active, {enabled} enabled; {drained}")
    if not state.instances:
        lines += ["", "no workers: fleetctl scale auto runs one per CPU"]
        return "\n".join(lines + socket_failure(state)) + "\n"
    rows = [list(COLUMNS)]
    for i in state.instances:
        rows.append([
            f"fleet-worker@{i.instance}",
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
    widths = [max(len(row[c]) for row in rows) for c in range(len(COLUMNS))]
    lines.append("")
    for row in rows:
        # NOTE: the last column (status) is free text: never padded, never cut.
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines + socket_failure(state)) + "\n"


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


def run(as_json: bool) -> int:
    """Print the fleet's status; 0 whatever the workers' states (it only reports)."""
    state = fleet_state.read()
    print(format_json(state) if as_json else format_status(state), end="")
    return 0
