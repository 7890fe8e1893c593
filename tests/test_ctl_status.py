"""fleetctl status's renderers, from hand-built states: the table, and the --json schema."""

from __future__ import annotations

import json

import pytest

from fleet.ctl.state import FleetState, Instance, Socket
from fleet.ctl.status import format_bytes, format_duration, format_json, format_status

SERVING = "serving [::]:8000 with 4 threads"
STATE = FleetState(
    socket=Socket(state="active", sub_state="running", listen=("[::]:8000", "127.0.0.1:9000"),
                  accepted=0, connections=0),
    service_state="active",
    drained=True,
    drain_file="/run/fleet/drain",
    instances=(
        Instance("1", "active", "active", "running", True, 812, 0, 1.25, 33_554_432, 307.2, 0, SERVING),
        Instance("2", "failing", "activating", "start", True, 840, 3, 0.04, None, None, None,
                 "failed: cannot import WSGI app 'x:y': No module named 'x'"),
        Instance("7", "active", "active", "running", False, 901, 0, 0.5, 31_000_000, 12.0, None, SERVING),
    ),
)  # fmt: skip


def test_format_status_is_a_compact_table() -> None:
    assert format_status(STATE) == (
        "fleet.socket: active (running), listening on [::]:8000, 127.0.0.1:9000\n"
        "fleet.service: active\n"
        "workers: 2 active, 2 enabled; drained (/run/fleet/drain exists): health checks answer 503\n"
        "\n"
        "UNIT            STATE    ENABLED  PID  RESTARTS  CPU   MEMORY  UPTIME  PINNED  STATUS\n"
        "fleet-worker@1  active   yes      812  0         1.2s  32.0M   5m07s   0       " + SERVING + "\n"
        "fleet-worker@2  failing  yes      840  3         0.0s  -       -       -       "
        "failed: cannot import WSGI app 'x:y': No module named 'x'\n"
        "fleet-worker@7  active   no       901  0         0.5s  29.6M   12s     -       " + SERVING + "\n"
    )


def test_format_status_of_a_fleet_that_is_not_there() -> None:
    assert format_status(FleetState()) == (
        "fleet.socket: inactive (dead), not listening; start it: sudo systemctl start fleet.socket\n"
        "fleet.service: inactive\n"
        "workers: 0 active, 0 enabled; not drained\n"
        "\n"
        "no workers: fleetctl scale auto runs one per CPU\n"
    )


def test_an_idle_socket_activated_fleet_says_what_starts_it() -> None:
    idle = FleetState(socket=Socket(state="active", sub_state="listening", listen=("[::]:8000",)))
    assert "fleet.service: inactive (the socket starts it on the first connection)\n" in format_status(idle)


def test_format_json_is_the_documented_schema() -> None:
    data = json.loads(format_json(STATE))
    assert list(data) == ["socket", "service", "drained", "drain_file", "instances"]
    assert data["socket"] == {
        "unit": "fleet.socket", "state": "active", "sub_state": "running",
        "listen": ["[::]:8000", "127.0.0.1:9000"], "accepted": 0, "connections": 0,
    }  # fmt: skip
    assert data["service"] == {"unit": "fleet.service", "state": "active", "running": True}
    assert (data["drained"], data["drain_file"]) == (True, "/run/fleet/drain")
    assert data["instances"][0] == {
        "instance": "1", "unit": "fleet-worker@1.service", "state": "active",
        "active_state": "active", "sub_state": "running", "enabled": True, "pid": 812,
        "restarts": 0, "cpu_seconds": 1.25, "memory_bytes": 33_554_432, "uptime_seconds": 307.2,
        "pinned_cpu": 0, "status": SERVING,
    }  # fmt: skip
    failing = data["instances"][1]
    assert (failing["state"], failing["memory_bytes"], failing["uptime_seconds"], failing["pinned_cpu"]) == (
        "failing", None, None, None)


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0, "0.0s"), (0.43, "0.4s"), (9.96, "10.0s"), (10, "10s"), (59.9, "59s"),
    (60, "1m00s"), (307, "5m07s"), (3599, "59m59s"), (3600, "1h00m"), (10_920, "3h02m"),
    (86_400, "1d00h"), (363_600, "4d05h"),
])  # fmt: skip
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("size", "text"), [
    (None, "-"), (0, "0B"), (1023, "1023B"), (1024, "1.0K"), (24_536_678, "23.4M"), (3 << 30, "3.0G"),
    (5 << 40, "5.0T"), (5 << 50, "5120.0T"),
])  # fmt: skip
def test_format_bytes(size: int | None, text: str) -> None:
    assert format_bytes(size) == text
