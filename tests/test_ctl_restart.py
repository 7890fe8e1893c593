"""fleetctl restart's and logs' pure parts: which workers roll, and what logs accepts."""

from __future__ import annotations

import pytest

from fleet.ctl.errors import UsageError
from fleet.ctl.logs import parse_instance, parse_lines
from fleet.ctl.restart import instances_to_restart
from fleet.ctl.state import FleetState, Instance


def test_every_enabled_or_running_instance_rolls_lowest_first() -> None:
    rows = (
        Instance("10", "active", "active", "running", True),
        Instance("2", "inactive", "inactive", "dead", True),
        Instance("9", "active", "active", "running", False),
        Instance("1", "failing", "activating", "auto-restart", True),
    )
    assert instances_to_restart(FleetState(service_state="active", instances=rows)) == ["1", "2", "9", "10"]


@pytest.mark.parametrize(("text", "instance"), [
    ("3", "3"), ("03", "3"), ("fleet-worker@12", "12"), ("fleet-worker@4.service", "4"),
])  # fmt: skip
def test_logs_instance(text: str, instance: str) -> None:
    assert parse_instance(text) == instance


@pytest.mark.parametrize("text", ["0", "x", "-1", "fleet-worker@", "fleet.service", "1.5"])
def test_logs_instance_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_instance(text)


def test_logs_lines() -> None:
    assert parse_lines("50") == 50
    with pytest.raises(UsageError):
        parse_lines("many")
