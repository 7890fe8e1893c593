"""fleetctl scale's decisions: parsing the size, and the plan from a state to fleet-worker@1..N."""

from __future__ import annotations

import json

import pytest

from fleet.ctl.errors import UsageError
from fleet.ctl.scale import Plan, Target, format_change, parse_target, plan
from fleet.ctl.state import FleetState, Instance


@pytest.mark.parametrize(("text", "target"), [
    ("3", Target("3", "absolute", 3)),
    ("auto", Target("auto", "auto")),
    ("AUTO", Target("AUTO", "auto")),
    ("+2", Target("+2", "relative", 2)),
    ("-1", Target("-1", "relative", -1)),
    ("+0", Target("+0", "relative", 0)),
    ("007", Target("007", "absolute", 7)),
])  # fmt: skip
def test_parse_target(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["0", "x", "1.5", "-1.5", "+", "3x", "auto3", "", " ", "1e3", "٣"])
def test_parse_target_refuses_with_the_value_and_the_forms(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_target(text)
    assert caught.value.message == f"scale needs a positive whole number, 'auto', +K or -K, got {text!r}"
    assert caught.value.code == 2


@pytest.mark.parametrize(("target", "current", "usable", "size"), [
    (Target("3", "absolute", 3), 5, 2, 3),
    (Target("auto", "auto"), 5, 2, 2),
    (Target("+2", "relative", 2), 3, 2, 5),
    (Target("-3", "relative", -3), 3, 2, 0),
])  # fmt: skip
def test_target_size(target: Target, current: int, usable: int, size: int) -> None:
    assert target.size(current, usable) == size


def fleet(running: bool, *instances: tuple[str, bool, str]) -> FleetState:
    """A state with (instance, enabled, ActiveState) rows."""
    rows = tuple(Instance(i, a, a, "running", e) for i, e, a in instances)
    return FleetState(service_state="active" if running else "inactive", instances=rows)


def test_scale_up_while_running_enables_and_starts_the_new_ones() -> None:
    p = plan(fleet(True, ("1", True, "active"), ("2", True, "active")), 4)
    assert (p.enable, p.start, p.disable, p.stop, p.kept) == (["3", "4"], ["3", "4"], [], [], ["1", "2"])
    assert (p.before, p.size, p.changed) == (2, 4, True)


def test_scale_down_stops_the_highest_first() -> None:
    p = plan(fleet(True, *((str(i), True, "active") for i in range(1, 12))), 2)
    assert p.disable == [str(i) for i in range(3, 12)]
    assert p.stop == [str(i) for i in range(11, 2, -1)], "numeric order: 11 before 10 before 9"
    assert (p.enable, p.start, p.kept) == ([], [], ["1", "2"])


def test_strays_outside_1_to_n_are_disabled_and_stopped() -> None:
    p = plan(fleet(True, ("1", True, "active"), ("7", True, "active"), ("x", False, "active"),
                   ("2", True, "failed")), 2)  # fmt: skip
    assert p.enable == []
    assert p.start == ["2"], "an enabled instance that is not up is started"
    assert p.disable == ["7"]
    assert p.stop == ["x", "7"]
    assert p.kept == ["1"]


def test_a_fleet_that_is_not_running_is_only_enabled_and_disabled() -> None:
    p = plan(fleet(False, ("1", True, "inactive"), ("2", True, "inactive"), ("3", True, "inactive")), 2)
    assert (p.enable, p.start, p.disable, p.stop, p.kept) == ([], [], ["3"], [], ["1", "2"])
    p = plan(fleet(False, ("1", True, "inactive")), 3)
    assert (p.enable, p.start) == (["2", "3"], [])


def test_the_current_size_changes_nothing() -> None:
    p = plan(fleet(True, ("1", True, "active"), ("2", True, "activating")), 2)
    assert not p.changed
    assert format_change(p) == "fleet already has 2 workers (1, 2); nothing changed\n"
    assert json.loads(json.dumps(p.to_json())) == {
        "size": 2, "before": 2, "running": True, "changed": False,
        "started": [], "stopped": [], "kept": [1, 2], "enabled": [], "disabled": [],
    }  # fmt: skip


def test_format_change_reports_like_circus() -> None:
    p = Plan(size=4, before=2, running=True, enable=["3", "4"], start=["3", "4"], kept=["1", "2"])
    assert format_change(p) == (
        "scaled fleet from 2 to 4 workers\nstarted: 3, 4\nenabled: 3, 4\nkept: 1, 2\n"
    )
    p = Plan(size=1, before=3, running=False, disable=["2", "3"], kept=["1"])
    assert format_change(p) == (
        "scaled fleet from 3 to 1 worker (not running now: they start with it, systemctl start fleet)\n"
        "disabled: 2, 3\nkept: 1\n"
    )
    assert Plan(size=1, before=2, running=True, stop=["x"], disable=["x"]).to_json()["stopped"] == ["x"]
