"""The unit files: systemd's own verifier and sandbox rating, and the rules learnt the hard way."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "units"
pytestmark = pytest.mark.source_tree
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


@needs_analyze
def test_systemd_analyze_verify_finds_nothing_but_the_missing_install():
    # NOTE: the installed package is verified with no output at all in the e2e
    # suite; here, the binaries and man pages it ships are not installed.
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no",
         *(str(UNITS / n) for n in ("fleet.socket", "fleet.service", "fleet-worker@.service"))],
        capture_output=True, text=True,
    )
    complaints = [line for line in proc.stderr.splitlines()
                  if not re.search(r"Command /usr/bin/(fleetctl|fleet-worker) is not executable", line)]
    assert complaints == []


@needs_analyze
def test_worker_sandbox_rates_at_most_2():
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNITS / "fleet-worker@.service")],
        capture_output=True, text=True,
    )
    match = re.search(r"Overall exposure level for .*: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0


def test_start_limit_lives_in_unit_section():
    # In [Service] it is silently ignored, and an instance that hits the
    # default limit takes fleet.socket down with it.
    worker = unit("fleet-worker@.service")
    assert worker.get("Unit", "StartLimitIntervalSec") == "0"
    assert not worker.has_option("Service", "StartLimitIntervalSec")
    assert not worker.has_option("Service", "StartLimitBurst")


def test_worker_template_shape():
    service = unit("fleet-worker@.service")["Service"]
    assert service["Type"] == "notify" and service["Sockets"] == "fleet.socket"
    assert service["Environment"] == "FLEET_INSTANCE=%i"
    assert service["EnvironmentFile"] == "-/etc/default/fleet"
    assert service["Restart"] == "always"
    assert "CPUAffinity" not in service, "CPUAffinity=%i fails every instance past the CPU count"
    # NOTE: the shared socket's O_NONBLOCK is every worker's: systemd must not clear it at each start.
    assert service["NonBlocking"] == "yes"
    from fleet.settings import Settings
    assert int(service["LimitNOFILE"]) > 2 * Settings.from_env({}).connection_limit
    assert unit("fleet-worker@.service")["Unit"]["PartOf"] == "fleet.service"
    assert unit("fleet-worker@.service")["Install"]["WantedBy"] == "fleet.service"


def test_socket_is_shared_not_per_worker():
    socket_section = unit("fleet.socket")["Socket"]
    assert socket_section["ListenStream"] == "8000"
    assert socket_section.get("Accept", "no") == "no" and socket_section["ReusePort"] == "no"
    assert socket_section["TriggerLimitIntervalSec"] == "0"
    assert socket_section["DeferAcceptSec"] == "5", "connections reach workers with their request"
    assert unit("fleet.socket")["Install"]["WantedBy"] == "sockets.target"


def test_restarting_the_socket_restarts_the_group_not_the_reverse():
    # systemd refuses to start a socket whose service is active, so a port
    # change (restart fleet.socket) must take fleet.service along...
    assert unit("fleet.service")["Unit"]["PartOf"] == "fleet.socket"
    # ...while stopping the fleet leaves the socket listening.
    assert "PartOf" not in unit("fleet.socket")["Unit"]
