"""Reading the fleet's state from `systemctl show` output (as text) and from real /proc entries."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fleet.ctl.state import FleetState, build, instance_state, pinned_cpu
from fleet.ctl.systemctl import parse_show

# What `systemctl show fleet.socket fleet.service 'fleet-worker@*.service' -p ...` printed
# in a container (systemd 252), trimmed; worker 3 is crash-looping, 5 is stopped but loaded.
SHOW = """\
Id=fleet.socket
ActiveState=active
SubState=running
Listen=[::]:8000 (Stream)
Listen=/run/fleet.sock (Stream)
NAccepted=0
NConnections=0

Id=fleet.service
ActiveState=reloading
SubState=reload
Wants=fleet-worker@1.service fleet.socket fleet-worker@3.service fleet-worker@10.service

Id=fleet-worker@10.service
LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled
MainPID=516
NRestarts=2
StatusText=serving [::]:8000 with 4 threads
CPUUsageNSec=1500000000
MemoryCurrent=[not set]
ActiveEnterTimestampMonotonic=4995656170

Id=fleet-worker@1.service
LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled
MainPID=515
NRestarts=0
StatusText=serving [::]:8000 with 4 threads
CPUUsageNSec=[not set]
MemoryCurrent=33140736
ActiveEnterTimestampMonotonic=4000000000

Id=fleet-worker@3.service
LoadState=loaded
ActiveState=activating
SubState=auto-restart
UnitFileState=enabled
MainPID=0
NRestarts=7
StatusText=failed: cannot import WSGI app 'nosuch:app': No module named 'nosuch'
CPUUsageNSec=[not set]
MemoryCurrent=[not set]
ActiveEnterTimestampMonotonic=0

Id=fleet-worker@5.service
LoadState=loaded
ActiveState=inactive
SubState=dead
UnitFileState=disabled
MainPID=0
NRestarts=0
StatusText=
"""


def state() -> FleetState:
    units = {block["Id"]: block for block in parse_show(SHOW)}
    return build(units, now_monotonic_usec=5_000_000_000, drain_file="/run/fleet/drain", proc=None)


def test_socket_and_service() -> None:
    s = state()
    assert s.socket.listen == ("[::]:8000", "/run/fleet.sock")
    assert (s.socket.state, s.socket.accepted, s.socket.connections) == ("active", 0, 0)
    assert s.service_state == "reloading"
    assert s.running, "fleet.service reloading (systemctl reload fleet) is a running fleet"


def test_instances_in_numeric_order_without_stopped_disabled_ones() -> None:
    s = state()
    assert [i.instance for i in s.instances] == ["1", "3", "10"]
    assert s.enabled == ["1", "3", "10"]
    assert s.running_instances == ["1", "3", "10"]


def test_instance_fields() -> None:
    one, three, ten = state().instances
    assert (one.pid, one.restarts, one.memory_bytes, one.cpu_seconds) == (515, 0, 33_140_736, None)
    assert one.uptime_seconds == pytest.approx(1000.0)
    assert (ten.cpu_seconds, ten.memory_bytes) == (1.5, None), "[not set] is unknown, not 0"
    assert (three.state, three.pid, three.uptime_seconds) == ("failing", None, None)
    assert three.status.startswith("failed: cannot import")
    assert three.unit == "fleet-worker@3.service"


@pytest.mark.parametrize(("active", "sub", "status", "shown"), [
    ("active", "running", "serving", "active"),
    ("activating", "start", "", "activating"),
    ("activating", "start", "failed: bad FLEET_THREADS", "failing"),
    ("activating", "auto-restart", "", "failing"),
    ("deactivating", "stop-sigterm", "draining: SIGTERM received", "deactivating"),
    ("failed", "failed", "", "failed"),
    ("inactive", "dead", "", "inactive"),
])  # fmt: skip
def test_instance_state(active: str, sub: str, status: str, shown: str) -> None:
    assert instance_state(active, sub, status) == shown


def test_pinned_cpu_of_real_processes() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    mine = pinned_cpu(os.getpid())
    assert mine == (cpus[0] if len(cpus) == 1 else None)
    last = cpus[-1]
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE, preexec_fn=lambda: os.sched_setaffinity(0, {last}),
    )  # fmt: skip
    try:
        assert pinned_cpu(child.pid) == last
    finally:
        child.communicate(b"")
    assert pinned_cpu(None) is None and pinned_cpu(0) is None


def test_cpu_and_memory_fall_back_to_proc_without_systemd_accounting() -> None:
    units = {
        "fleet-worker@1.service": {
            "ActiveState": "active", "SubState": "running", "UnitFileState": "enabled",
            "MainPID": str(os.getpid()), "CPUUsageNSec": "[not set]", "MemoryCurrent": "[not set]",
        }
    }  # fmt: skip
    (me,) = build(units, now_monotonic_usec=0).instances
    assert me.cpu_seconds is not None and me.cpu_seconds > 0
    assert me.memory_bytes is not None and me.memory_bytes > 1 << 20
