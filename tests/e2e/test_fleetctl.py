"""fleetctl against a real systemd: the installed package, driven as an operator drives it.

Each test boots a fresh Debian 12 container (systemd as PID 1; the core ones, marked
``releases``, on Debian 13 too), moves fleet.socket to
a free port (the container shares the host's network), installs the .deb, and then
runs fleetctl inside and HTTP from the host. "Enabled" is checked twice: as the
symlinks ``systemctl enable`` writes (what a reboot brings back) and as fleet.service's
``Wants=`` (what systemd loaded); "running" as ``systemctl list-units --state=active``.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from harness.container import SUITES, Container
from harness.fleet import Fleet, Traffic, every_worker_answers, instances, wait_for

REPO = Path(__file__).resolve().parents[2]
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def assert_one_at_a_time(f: Fleet, order: list[str]) -> None:
    """Each worker stopped only after the one before it was ready again (systemd's timestamps)."""
    for a, b in zip(order, order[1:], strict=False):
        ready = int(f.show(f"fleet-worker@{a}.service", "ActiveEnterTimestampMonotonic"))
        left = int(f.show(f"fleet-worker@{b}.service", "ActiveExitTimestampMonotonic"))
        assert ready <= left, f"fleet-worker@{b} was stopped before fleet-worker@{a} was ready again"


# --- self-healing, and status --------------------------------------------------------


@pytest.mark.releases(*SUITES)
def test_kill_9_is_replaced_within_2_s_and_counted(fleet: Fleet) -> None:
    fleet.fleetctl("scale", "1")
    before = fleet.status()["instances"][0]
    assert (before["instance"], before["state"]) == ("1", "active")
    fleet.box.sh(f"kill -9 {before['pid']}")  # NOTE: the shell's kill: minbase has no procps
    killed = time.monotonic()

    def serving_pid() -> int | str:
        try:
            status, body = fleet.health()
        except (OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return int(body["pid"]) if status == 200 else f"HTTP {status}"

    wait_for(serving_pid, lambda p: isinstance(p, int) and p != before["pid"], 2, "the pid serving /healthz")
    took = time.monotonic() - killed
    # NOTE: the new worker serves as soon as it has sent READY=1; systemd may mark it
    # active a moment later.
    after = wait_for(lambda: fleet.status()["instances"][0], lambda r: r["state"] == "active", 10,
                     "worker 1 active again")  # fmt: skip
    assert after["pid"] != before["pid"]
    assert after["restarts"] == before["restarts"] + 1, (before, after)
    print(f"kill -9 to a new pid serving: {took:.2f} s")


@pytest.mark.releases(*SUITES)
def test_status_shows_the_socket_and_every_worker(fleet: Fleet) -> None:
    cpus = fleet.box.nproc()
    data = fleet.status()
    assert data["socket"]["state"] == "active"
    assert any(a.endswith(f":{fleet.port}") for a in data["socket"]["listen"]), data["socket"]
    assert data["service"] == {"unit": "fleet.service", "state": "active", "running": True}
    assert data["drained"] is False and data["drain_file"] == "/run/fleet/drain"
    rows = data["instances"]
    assert [r["instance"] for r in rows] == [str(i) for i in range(1, cpus + 1)], "postinst: scale auto"
    first = rows[0]
    assert first["unit"] == "fleet-worker@1.service"
    assert (first["state"], first["enabled"], first["restarts"]) == ("active", True, 0)
    assert first["pid"] == fleet.pid("1")
    assert first["status"].startswith("serving ")
    assert first["uptime_seconds"] is not None and first["uptime_seconds"] >= 0
    assert first["cpu_seconds"] is not None and first["memory_bytes"] is not None
    affinity = fleet.box.sh("grep Cpus_allowed_list /proc/1/status").stdout.split()[-1]
    if "-" in affinity or "," in affinity:
        assert first["pinned_cpu"] is not None, "worker 1 pins itself to the first usable CPU"

    table = fleet.fleetctl("status").stdout
    assert re.search(r"^UNIT +STATE +ENABLED +PID +RESTARTS", table, re.M), table
    assert re.search(rf"^fleet-worker@1 +active +yes +{first['pid']} ", table, re.M), table

    # Read-only: works unprivileged too; changes need root.
    as_nobody = fleet.box.run(*NOBODY, "fleetctl", "status", "--json", check=False)
    assert as_nobody.returncode == 0, as_nobody.stderr
    assert len(json.loads(as_nobody.stdout)["instances"]) == cpus
    refused = fleet.box.run(*NOBODY, "fleetctl", "scale", "3", check=False)
    assert (refused.returncode, refused.stderr) == (
        1, "fleetctl: error: fleetctl scale needs root; run: sudo fleetctl scale 3\n")


@pytest.mark.releases(*SUITES)
def test_a_worker_that_cannot_boot_is_shown_failing_with_its_error(fleet: Fleet) -> None:
    fleet.break_worker("1", "FLEET_APP=nosuch:app")
    fleet.box.run("systemctl", "restart", "--no-block", "fleet-worker@1.service")
    # NOTE: a worker that cannot boot is paced: it fails, waits 2 s, 4 s... with its
    # STATUS=failed set ("failing"), exits, and each new start is "activating" with no
    # status until its import fails again. Two reads of the state (JSON, then the table)
    # can fall on either side of such a start, so wait until both show it failing.
    table_row = re.compile(r"^fleet-worker@1 +failing .*failed: cannot import", re.M)

    def both() -> tuple[dict[str, Any], str]:
        return fleet.status()["instances"][0], fleet.fleetctl("status").stdout

    row, table = wait_for(both, lambda rt: rt[0]["state"] == "failing" and bool(table_row.search(rt[1])),
                          30, "worker 1 failing in status --json and in the table")  # fmt: skip
    assert "cannot import WSGI app 'nosuch:app'" in row["status"], row


# --- scale -----------------------------------------------------------------------------


def expected_report(before: int, size: int) -> list[str]:
    """The lines of ``fleetctl scale`` going from 1..before to 1..size with the fleet running."""
    def ids(numbers: range) -> str:
        return ", ".join(map(str, numbers))

    workers = f"{size} worker{'s' * (size != 1)}"
    if size == before:
        return [f"fleet already has {workers} ({ids(range(1, size + 1))}); nothing changed"]
    head = f"scaled fleet from {before} to {workers}"
    if size > before:
        new = range(before + 1, size + 1)
        return [head, f"started: {ids(new)}", f"enabled: {ids(new)}", f"kept: {ids(range(1, before + 1))}"]
    gone = range(before, size, -1)
    return [head, f"stopped: {ids(gone)}", f"disabled: {ids(range(size + 1, before + 1))}",
            f"kept: {ids(range(1, size + 1))}"]  # fmt: skip


@pytest.mark.releases(*SUITES)
def test_scale_makes_exactly_1_to_n_enabled_and_running_and_it_lasts(fleet: Fleet) -> None:
    cpus = fleet.box.nproc()
    size = cpus  # the postinst ran scale auto
    for arg, new_size in (("3", 3), ("+1", 4), ("1", 1), ("auto", cpus)):
        out = fleet.fleetctl("scale", arg).stdout
        assert out.splitlines() == expected_report(size, new_size), f"scale {arg}"
        size = new_size
        want = instances(size)
        assert fleet.sets() == (want, want), f"after scale {arg}"
        fleet.box.run("systemctl", "daemon-reload")
        assert fleet.sets() == (want, want), f"after scale {arg} and daemon-reload"
        fleet.box.run("systemctl", "restart", "fleet.service")
        wait_for(fleet.sets, (want, want).__eq__, 30,
                 f"enabled and running after scale {arg} and systemctl restart fleet")  # fmt: skip

    as_json = json.loads(fleet.fleetctl("scale", "+1", "--json").stdout)
    assert as_json == {"size": cpus + 1, "before": cpus, "running": True, "changed": True,
                       "started": [cpus + 1], "stopped": [], "kept": list(range(1, cpus + 1)),
                       "enabled": [cpus + 1], "disabled": []}  # fmt: skip


def test_scale_to_the_current_size_says_nothing_changed(fleet: Fleet) -> None:
    fleet.fleetctl("scale", "3")
    pids = fleet.pids()
    again = fleet.fleetctl("scale", "3")
    assert again.stdout == "fleet already has 3 workers (1, 2, 3); nothing changed\n"
    assert fleet.pids() == pids


def test_refusals_change_nothing(fleet: Fleet) -> None:
    fleet.fleetctl("scale", "2")
    before = fleet.sets()
    cap = 4 * fleet.box.nproc()
    over = fleet.fleetctl("scale", str(cap + 1), check=False)
    assert over.returncode == 2
    assert over.stderr.startswith(f"fleetctl: error: scale to {cap + 1} workers is over 4 per usable CPU")
    assert f"hint: if that many is really meant: fleetctl scale {cap + 1} --force" in over.stderr
    below = fleet.fleetctl("scale", "-2", check=False)
    assert below.returncode == 2 and "would leave fewer than 1 worker (there are 2)" in below.stderr
    bad = fleet.fleetctl("scale", "1.5", check=False)
    assert bad.returncode == 2 and "got '1.5'" in bad.stderr
    assert fleet.sets() == before


def test_force_goes_past_the_cap(fleet: Fleet) -> None:
    size = 4 * fleet.box.nproc() + 1
    fleet.fleetctl("scale", str(size), "--force")
    assert fleet.sets() == (instances(size),) * 2


def test_scale_disables_and_stops_instances_outside_1_to_n(fleet: Fleet) -> None:
    fleet.fleetctl("scale", "2")
    fleet.box.run("systemctl", "enable", "--now", "fleet-worker@7.service")
    fleet.box.run("systemctl", "start", "fleet-worker@9.service")
    assert fleet.sets() == ({"1", "2", "7"}, {"1", "2", "7", "9"})
    out = fleet.fleetctl("scale", "2").stdout.splitlines()
    assert "stopped: 9, 7" in out and "disabled: 7" in out and "kept: 1, 2" in out, out
    assert fleet.sets() == (instances(2),) * 2


def test_with_the_fleet_stopped_scale_only_enables(fleet: Fleet) -> None:
    fleet.fleetctl("scale", "1")
    fleet.box.run("systemctl", "stop", "fleet.service")
    assert fleet.sets() == ({"1"}, set())
    out = fleet.fleetctl("scale", "3").stdout
    assert "not running now" in out and "enabled: 2, 3" in out and "started" not in out, out
    assert fleet.sets() == (instances(3), set())
    fleet.box.run("systemctl", "start", "fleet.service")
    wait_for(fleet.sets, lambda s: s == (instances(3),) * 2, 30, "after systemctl start fleet")


def test_a_failed_scale_is_undone(fleet: Fleet) -> None:
    fleet.fleetctl("scale", "2")
    pids = fleet.pids()
    fleet.break_worker("4", "FLEET_APP=nosuch:app")
    failed = fleet.fleetctl("scale", "4", check=False)
    assert failed.returncode == 1, failed.stdout
    first, hint = failed.stderr.splitlines()
    assert first.startswith("fleetctl: error: fleet-worker@4 failed to start: cannot import WSGI app")
    assert first.endswith("undone, so nothing changed: stopped 3, 4 and disabled 3, 4 again")
    assert hint == "hint: fleetctl logs 4 shows its journal"
    assert fleet.sets() == (instances(2),) * 2
    assert fleet.pids() == pids


# --- restart ---------------------------------------------------------------------------


@pytest.mark.releases(*SUITES)
def test_rolling_restart_gives_each_worker_a_new_pid_one_at_a_time(fleet: Fleet) -> None:
    fleet.fleetctl("scale", "3")
    before = fleet.pids()
    with Traffic(fleet.port) as traffic:
        traffic.wait_answered()
        out = fleet.fleetctl("restart").stdout
        traffic.wait_answered()
    lines = out.splitlines()
    for n in (1, 2, 3):
        progress = rf"restarting fleet-worker@{n} \({n}/3\)\.\.\. ready in \d+\.\ds"
        assert re.fullmatch(progress, lines[n - 1]), out
    assert lines[3] == "restarted 3 workers, one at a time"
    after = fleet.pids()
    assert set(after) == instances(3) and all(after[i] != before[i] for i in before), (before, after)
    assert_one_at_a_time(fleet, ["1", "2", "3"])
    assert traffic.ok > 0 and traffic.failures == [], f"{traffic.ok} ok, failed: {traffic.failures[:5]}"


def test_systemctl_reload_fleet_is_the_same_rolling_restart(fleet: Fleet) -> None:
    fleet.fleetctl("scale", "3")
    before = fleet.pids()
    with Traffic(fleet.port) as traffic:
        fleet.box.run("systemctl", "reload", "fleet.service", timeout=180)
    after = fleet.pids()
    assert all(after[i] != before[i] for i in before), (before, after)
    assert_one_at_a_time(fleet, ["1", "2", "3"])
    assert traffic.failures == [], traffic.failures[:5]
    journal = fleet.box.run("journalctl", "--no-pager", "-o", "cat", "-u", "fleet.service").stdout
    assert "restarting fleet-worker@3 (3/3)... ready in" in journal, journal
    assert fleet.show("fleet.service", "ActiveState") == "active"


def test_restart_with_the_fleet_stopped_does_nothing_and_succeeds(fleet: Fleet) -> None:
    fleet.box.run("systemctl", "stop", "fleet.service")
    result = fleet.fleetctl("restart")
    assert result.stdout == "the fleet is not running (fleet.service is inactive); nothing to restart\n"
    assert fleet.running() == set()


def test_restart_stops_at_the_first_worker_that_does_not_come_back(fleet: Fleet) -> None:
    fleet.fleetctl("scale", "3")
    before = fleet.pids()
    fleet.break_worker("2", "FLEET_THREADS=many")
    result = fleet.fleetctl("restart", check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == "restarting fleet-worker@2 (2/3)... failed"
    assert result.stderr.startswith("fleetctl: error: fleet-worker@2 did not come back: FLEET_THREADS")
    assert "stopped the rolling restart; 3 not restarted" in result.stderr
    assert fleet.pid("3") == before["3"], "the roll went on past a broken worker"
    assert fleet.pid("1") != before["1"]


# --- logs, drain -----------------------------------------------------------------------


def test_logs_shows_one_workers_journal(fleet: Fleet) -> None:
    fleet.fleetctl("scale", "2")
    fleet.fleetctl("restart")
    one = fleet.fleetctl("logs", "-n", "5", "1").stdout
    lines = one.splitlines()
    assert 0 < len(lines) <= 5, one
    assert any("worker 1: ready: serving" in line for line in lines), one
    assert not any("fleet-worker@2" in line for line in lines), one
    both = fleet.fleetctl("logs", "-n", "50").stdout
    assert "worker 1: ready" in both and "worker 2: ready" in both


def test_drain_turns_health_to_503_on_every_worker_while_serving(fleet: Fleet) -> None:
    fleet.fleetctl("scale", "2")
    both = instances(2)
    assert every_worker_answers(fleet, "/healthz", both) == {"1": 200, "2": 200}
    out = fleet.fleetctl("drain").stdout
    assert out.startswith("drained: created /run/fleet/drain;")
    assert every_worker_answers(fleet, "/healthz", both) == {"1": 503, "2": 503}
    assert every_worker_answers(fleet, "/", both) == {"1": 200, "2": 200}
    assert fleet.status()["drained"] is True
    assert "drained (/run/fleet/drain exists)" in fleet.fleetctl("status").stdout
    assert "nothing changed" in fleet.fleetctl("drain").stdout

    fleet.fleetctl("restart")
    assert every_worker_answers(fleet, "/healthz", both) == {"1": 503, "2": 503}, "drain outlives restarts"

    assert fleet.fleetctl("undrain").stdout.startswith("undrained: removed /run/fleet/drain;")
    assert every_worker_answers(fleet, "/healthz", both) == {"1": 200, "2": 200}
    assert fleet.status()["drained"] is False
    assert "nothing changed" in fleet.fleetctl("undrain").stdout


def test_drain_file_follows_etc_default_fleet(fleet: Fleet) -> None:
    fleet.fleetctl("scale", "1")
    fleet.configure(FLEET_DRAIN_FILE="/run/lb/out-of-rotation")
    fleet.fleetctl("restart")
    assert fleet.fleetctl("drain").stdout.startswith("drained: created /run/lb/out-of-rotation;")
    assert fleet.health()[0] == 503
    assert fleet.box.sh("stat -c %a /run/lb").stdout.strip() == "755"


# --- preconditions -----------------------------------------------------------------------


def test_without_the_package_fleetctl_says_to_install_it(container: Container) -> None:
    tar = subprocess.run(["tar", "-C", str(REPO), "--exclude=__pycache__", "-cf", "-", "fleet"],
                         capture_output=True, check=True).stdout  # fmt: skip
    host_tar = Path(f"/tmp/fleet-src-{container.machine}.tar")
    host_tar.write_bytes(tar)
    try:
        container.copy_in(host_tar, "/opt/src/fleet.tar")
    finally:
        host_tar.unlink()
    container.run("tar", "-C", "/opt/src", "-xf", "/opt/src/fleet.tar")
    env = {"PYTHONPATH": "/opt/src"}
    result = container.run("python3", "-m", "fleet.ctl", "status", check=False, env=env)
    assert result.returncode == 1
    assert result.stderr == (
        "fleetctl: error: fleet's systemd units are not installed (no fleet.socket, fleet.service, "
        "fleet-worker@.service); install the fleet package\n"
        "hint: apt install ./fleet_*.deb (make deb builds it)\n"
    )
