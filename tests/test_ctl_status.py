"""fleetctl status's renderers, from hand-built states: the table, and the --json schema."""

from __future__ import annotations

import json

import pytest

from fleet.apps import App
from fleet.ctl.ports import Holder, TakenPort
from fleet.ctl.state import FleetState, Instance, Socket
from fleet.ctl.status import (
    format_bytes,
    format_duration,
    format_json,
    format_overview,
    format_overview_json,
    format_status,
)

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
    assert list(data) == ["socket", "service", "drained", "drain_file", "instances", "app", "config",
                          "problems"]
    assert (data["app"], data["config"], data["problems"]) == ("default", "/etc/default/fleet", [])
    assert data["socket"] == {
        "unit": "fleet.socket", "state": "active", "sub_state": "running",
        "listen": ["[::]:8000", "127.0.0.1:9000"], "accepted": 0, "connections": 0,
        "result": "success", "taken": [],
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


PORT_TAKEN = FleetState(
    socket=Socket(state="failed", sub_state="failed", listen=("[::]:8000",), result="resources",
                  taken=(TakenPort(8000, (Holder(812, "nginx"),)),)),
    instances=(Instance("1", "inactive", enabled=True),),
)  # fmt: skip


def test_a_socket_that_cannot_listen_ends_the_status_with_the_port_its_holder_and_the_fix() -> None:
    text = format_status(PORT_TAKEN)
    assert text.startswith("fleet.socket: failed (failed), not listening (why, and the fix: below)\n")
    assert text.endswith(
        "\n\n"
        "fleet.socket cannot listen: port 8000 is taken by nginx (pid 812).\n"
        "fix: stop that program, or move fleet to a free port with a drop-in, then restart the socket:\n"
        "  sudo systemctl edit fleet.socket   # saved as /etc/systemd/system/fleet.socket.d/override.conf:\n"
        "      [Socket]\n"
        "      ListenStream=\n"
        "      ListenStream=8080\n"
        "  sudo systemctl restart fleet.socket\n"
    )
    assert json.loads(format_json(PORT_TAKEN))["socket"]["taken"] == [
        {"port": 8000, "holders": [{"pid": 812, "name": "nginx"}]}
    ]


def test_a_taken_port_whose_holder_is_not_visible_says_so() -> None:
    hidden = FleetState(socket=Socket(state="failed", sub_state="failed", listen=("8080",),
                                      taken=(TakenPort(8080),)))  # fmt: skip
    text = format_status(hidden)
    assert "port 8080 is taken by a process not visible here (as root, fleetctl names it).\n" in text
    assert "ListenStream=8081\n" in text


def test_a_socket_failed_for_another_reason_points_to_its_journal() -> None:
    other = FleetState(socket=Socket(state="failed", sub_state="failed", result="resources"))
    assert format_status(other).endswith(
        "\nfleet.socket failed (resources): see why with: journalctl -u fleet.socket\n"
        "fix: then start it again: sudo systemctl restart fleet.socket\n"
    )


def test_with_several_apps_status_is_one_row_per_app_then_every_worker() -> None:
    shop = App("shop")
    shop_state = FleetState(
        app=shop,
        socket=Socket(unit=shop.socket, state="active", sub_state="listening", listen=("127.0.0.1:8001",)),
        service_state="active",
        instances=(Instance("1", "active", "active", "running", True, 990, 0, 0.5, None, 3.0, None, SERVING,
                            unit_name=shop.unit("1")),),
        problems=("FLEET_USER: no user 'shop' on this machine; create it (adduser --system shop) or ...",),
    )  # fmt: skip
    lines = format_overview([STATE, shop_state]).splitlines()
    assert lines[0].split() == ["APP", "SOCKET", "LISTEN", "SERVICE", "WORKERS", "DRAINED", "PROBLEMS"]
    row = ["default", "active", "[::]:8000,", "127.0.0.1:9000", "active", "2/2", "yes", "-"]
    assert lines[1].split() == row
    assert lines[2].split()[:7] == ["shop", "active", "127.0.0.1:8001", "active", "1/1", "no", "FLEET_USER:"]
    assert [line.split()[0] for line in lines[4:9]] == [
        "UNIT", "fleet-worker@1", "fleet-worker@2", "fleet-worker@7", "fleet-shop-worker@1"]
    data = json.loads(format_overview_json([STATE, shop_state]))
    assert data["socket"]["unit"] == "fleet.socket", "the top level stays the default app's, as before"
    assert [a["app"] for a in data["apps"]] == ["default", "shop"]
    assert data["apps"][1]["instances"][0]["unit"] == "fleet-shop-worker@1.service"
    assert data["apps"][1]["problems"] == list(shop_state.problems)
