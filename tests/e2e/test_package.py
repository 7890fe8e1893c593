"""The fleet package in a real systemd: install, serve, stop, re-port, upgrade, purge.

Each test runs twice, on Debian 12 and on Debian 13, each with the package built on
that release: it boots a fresh container (systemd as PID 1) and drives it only
through what a user runs: apt, systemctl, fleetctl, bash, and HTTP from the host. The
container shares the host's network, so every test first moves fleet.socket to a
free port with a drop-in, the way a user changes the port.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from harness.container import SUITES, Container
from harness.fleet import (
    PORT_DROP_IN,
    Fleet,
    Traffic,
    every_worker_answers,
    install_fleet,
    instances,
    set_port,
    wait_for,
)
from harness.http import get_text
from harness.net import free_port, listening_on, port_is_free

REPO = Path(__file__).resolve().parent.parent.parent
pytestmark = pytest.mark.releases(*SUITES)


# --- helpers ----------------------------------------------------------------------------


def get_hello(port: int, when: str, timeout: float = 10) -> dict[str, str]:
    """GET / and require fleet's Hello World; fail saying ``when`` and what happened instead."""
    try:
        status, headers, body = get_text(port, "/", timeout=timeout)
    except OSError as error:
        raise AssertionError(f"GET / on port {port} {when}: {type(error).__name__}: {error}") from None
    assert (status, body) == (200, "Hello World!"), f"GET / on port {port} {when}: {status} {body!r}"
    return headers


def refuses(port: int) -> bool:
    """Tell whether a connection to 127.0.0.1:``port`` is refused (nothing listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


# --- the tests ----------------------------------------------------------------------------


def test_install_serves_at_once_with_one_worker_per_cpu(container: Container, deb: Path) -> None:
    fleet = install_fleet(container, deb)  # NOTE: not the fleet fixture: it waits for an answer.
    get_hello(fleet.port, "right after apt install")

    cpus = fleet.box.nproc()
    expected = instances(cpus)
    assert fleet.enabled() == expected, f"fleetctl scale auto should enable one worker per CPU ({cpus})"
    workers = wait_for(
        fleet.pids,
        lambda w: set(w) == expected,
        30,
        f"running workers (expected {sorted(expected)})",
    )
    assert len(set(workers.values())) == cpus, f"each worker is its own process: {workers}"

    answers = every_worker_answers(fleet, "/", expected, body="Hello World!")
    assert answers == dict.fromkeys(expected, 200), f"every worker shares the socket and serves: {answers}"


def test_units_verify_cleanly_and_workers_are_sandboxed(fleet: Fleet) -> None:
    box = fleet.box
    # NOTE: verify runs `man` on every Documentation=man: link, so this also proves the
    # package's man pages are where man finds them.
    box.apt_install("man-db")
    units = [f"/lib/systemd/system/{u}" for u in ("fleet.socket", "fleet.service", "fleet-worker@.service")]
    verify = box.run("systemd-analyze", "verify", *units, check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, ""), "systemd-analyze verify"

    security = box.run("systemd-analyze", "security", "--no-pager", "fleet-worker@1.service").stdout
    m = re.search(r"Overall exposure level for fleet-worker@1\.service: (\d+\.\d+)", security)
    assert m, f"no exposure level in:\n{security}"
    assert float(m.group(1)) <= 2.0, f"the worker's sandbox weakened:\n{security}"


def test_workers_share_their_connection_counts_in_the_state_directory(fleet: Fleet) -> None:
    # NOTE: the table fleet/siblings.py keeps, read as a sibling reads it: a slot per
    # worker, each written within the last 2 s (CLOCK_MONOTONIC is the host's, boxes too).
    fleet.fleetctl("scale", "3")
    read = ("import struct, time\n"
            "table = open('/var/lib/fleet/workers.v1', 'rb').read()\n"
            "now = time.monotonic()\n"
            "slots = enumerate(struct.iter_unpack('=qqqd', table))\n"
            "print(' '.join(str(i) for i, (_, _, _, written) in slots if now - written < 2))\n")

    def live_slots() -> list[str]:
        done = fleet.box.run("python3", "-c", read, check=False)
        return done.stdout.split() if done.returncode == 0 else [done.stderr.strip()[-300:]]

    wait_for(live_slots, lambda slots: sorted(slots) == sorted(fleet.pids()), 30,
             "a live slot for each worker in /var/lib/fleet/workers.v1")
    fleet.fleetctl("scale", "2")
    wait_for(live_slots, lambda slots: sorted(slots) == sorted(fleet.pids()) and len(slots) == 2, 30,
             "the stopped worker's slot left at once")


def test_stopping_the_fleet_keeps_the_socket_and_a_request_brings_it_back(fleet: Fleet) -> None:
    port = fleet.port
    listening = listening_on(port)
    assert listening, f"nothing listens on {port} after install"

    fleet.box.run("systemctl", "stop", "fleet")
    wait_for(fleet.pids, lambda w: not w, 45, "workers after systemctl stop fleet")
    assert fleet.show("fleet.socket", "ActiveState") == "active"
    assert listening_on(port) == listening, "systemctl stop fleet must leave the socket open"

    fleet.box.run("systemctl", "start", "fleet.socket")
    headers = get_hello(port, "after systemctl stop fleet (it should start the fleet again)", timeout=30)
    assert headers.get("x-fleet-worker"), headers
    assert fleet.show("fleet.service", "ActiveState") == "active"
    expected = fleet.enabled()
    wait_for(fleet.pids, lambda w: set(w) == expected, 30, "workers after the request")


def test_a_drop_in_moves_the_port(fleet: Fleet) -> None:
    box, old = fleet.box, fleet.port
    new = free_port()
    set_port(box, new)
    box.run("systemctl", "daemon-reload")
    restart = box.run("systemctl", "restart", "fleet.socket", check=False)
    if restart.returncode != 0:
        journal = box.run("journalctl", "--no-pager", "-n", "6", "-u", "fleet.socket").stdout
        pytest.fail(
            f"systemctl restart fleet.socket, the documented way to apply a new port, "
            f"failed: {restart.stderr.strip()}\n{journal}",
            pytrace=False,
        )

    get_hello(new, "after moving fleet.socket there", timeout=30)
    assert wait_for(lambda: refuses(old), bool, 10, f"the old port {old} refusing connections")


def customize(fleet: Fleet) -> None:
    """Change what a user may change, which upgrades and reinstalls must keep: scale and settings."""
    fleet.fleetctl("scale", "3")
    fleet.configure(FLEET_THREADS="6")


def assert_6_threads(fleet: Fleet, workers: dict[str, int], why: str) -> None:
    """Each worker says it runs the 6 threads /etc/default/fleet asks for."""
    for i in sorted(workers):
        status_text = fleet.show(f"fleet-worker@{i}.service", "StatusText")
        assert "with 6 threads" in status_text, f"worker {i} {why}: {status_text!r}"


def test_upgrade_restarts_workers_one_by_one_and_keeps_socket_scale_and_settings(
    fleet: Fleet,
    newer_deb: Path,
) -> None:
    box, port = fleet.box, fleet.port
    customize(fleet)
    config = box.run("cat", "/etc/default/fleet").stdout
    before = wait_for(fleet.pids, lambda w: set(w) == instances(3), 30, "workers after fleetctl scale 3")
    socket_since = fleet.show("fleet.socket", "ActiveEnterTimestampMonotonic")
    group_since = fleet.show("fleet.service", "ActiveEnterTimestampMonotonic")
    listening = listening_on(port)

    started = time.monotonic()
    with Traffic(port, timeout=15) as traffic:
        box.install_deb(newer_deb)
        time.sleep(0.5)  # NOTE: a few requests after the upgrade, too
    upgrade_seconds = time.monotonic() - started

    version = newer_deb.name.split("_")[1]
    assert box.run("dpkg-query", "-W", "-f=${Version}", "fleet").stdout == version
    assert traffic.failures == [], (
        f"{len(traffic.failures)} of {traffic.ok + len(traffic.failures)} requests failed during "
        f"the {upgrade_seconds:.1f} s upgrade: {traffic.failures[:5]}"
    )
    assert traffic.ok > 0, "no request completed during the upgrade"

    assert listening_on(port) == listening, "the upgrade reopened the listening socket"
    assert fleet.show("fleet.socket", "ActiveEnterTimestampMonotonic") == socket_since, (
        "the upgrade restarted fleet.socket"
    )
    assert fleet.show("fleet.service", "ActiveEnterTimestampMonotonic") == group_since, (
        "the upgrade restarted fleet.service (which restarts every worker at once)"
    )
    assert fleet.enabled() == instances(3), "the upgrade changed the user's scale"
    assert box.run("cat", "/etc/default/fleet").stdout == config, "the upgrade changed /etc/default/fleet"
    after = wait_for(fleet.pids, lambda w: set(w) == instances(3), 30, "workers after the upgrade")
    kept = {i for i in before if before[i] == after[i]}
    assert not kept, f"workers {sorted(kept)} were not restarted by the upgrade: {before} -> {after}"
    assert_6_threads(fleet, after, "did not reread /etc/default/fleet")


def test_remove_stops_everything_and_a_reinstall_keeps_scale_and_settings(fleet: Fleet, deb: Path) -> None:
    box, port = fleet.box, fleet.port
    customize(fleet)
    # NOTE: an instance started by hand, outside fleet.service: the package must stop it too.
    box.run("systemctl", "start", "fleet-worker@7.service")
    wait_for(fleet.pids, lambda w: set(w) == {"1", "2", "3", "7"}, 30, "workers before the remove")

    box.run("apt-get", "remove", "-y", "fleet", env={"DEBIAN_FRONTEND": "noninteractive"})
    assert fleet.pids() == {}, "apt remove left workers running"
    assert fleet.show("fleet.socket", "ActiveState") == "inactive"
    assert refuses(port), f"port {port} still answers after apt remove"
    assert "FLEET_THREADS=6" in box.run("cat", "/etc/default/fleet").stdout, "remove must keep conffiles"

    box.install_deb(deb)
    get_hello(port, "after reinstalling")
    assert fleet.enabled() == instances(3), "a reinstall after remove must keep the user's scale"
    workers = wait_for(fleet.pids, lambda w: set(w) == instances(3), 30, "workers after the reinstall")
    assert_6_threads(fleet, workers, "lost /etc/default/fleet")


def test_purge_leaves_nothing_behind(fleet: Fleet) -> None:
    box, port = fleet.box, fleet.port
    fleet.fleetctl("scale", "3")
    wait_for(fleet.pids, lambda w: len(w) == 3, 30, "workers after fleetctl scale 3")
    # What `systemctl edit fleet-worker@.service` leaves (the port drop-in is there already).
    box.write_file("/etc/systemd/system/fleet-worker@.service.d/override.conf", "[Service]\nNice=1\n")
    for path in ("/var/lib/private/fleet", "/run/fleet", "/etc/systemd/system/fleet.socket.d"):
        assert box.run("test", "-e", path, check=False).returncode == 0, (
            f"{path} should exist before the purge, or this test proves nothing about removing it"
        )

    purge = box.run("apt-get", "purge", "-y", "fleet", env={"DEBIAN_FRONTEND": "noninteractive"})
    # NOTE: dpkg warns e.g. "directory '/lib/systemd/system' not empty so not removed" when
    # a Debian 13 package ships files under /lib (merged /usr).
    warnings = [line for line in (purge.stdout + purge.stderr).splitlines() if "warning" in line.lower()]
    assert warnings == [], f"apt purge warned: {warnings}"

    assert fleet.pids() == {}
    assert refuses(port), f"port {port} still answers after the purge"
    unit_files = box.run("systemctl", "list-unit-files", "--no-legend").stdout
    assert "fleet" not in unit_files, f"systemctl list-unit-files after purge:\n{unit_files}"
    # NOTE: systemd may keep a stopped worker loaded as "not-found inactive dead" when it
    # could not remove its cgroup (this machine's legacy cgroups fail with EIO in the
    # container); such an entry holds nothing. Anything else would be a leftover.
    units = box.run("systemctl", "list-units", "--all", "--no-legend", "--plain", "fleet*").stdout
    alive = [line for line in units.splitlines() if line.split()[1:4] != ["not-found", "inactive", "dead"]]
    assert alive == [], f"systemd still runs or tracks fleet units after purge:\n{units}"
    gone = [
        "/etc/default/fleet",
        "/etc/systemd/system/fleet.service.wants",
        "/etc/systemd/system/sockets.target.wants/fleet.socket",
        "/etc/systemd/system/multi-user.target.wants/fleet.service",
        "/etc/systemd/system/fleet.socket.d",
        "/etc/systemd/system/fleet-worker@.service.d",
        "/run/fleet",
        "/run/private/fleet",
        "/run/lock/fleetctl.lock",
        "/var/lib/fleet",
        "/var/lib/private/fleet",
    ]
    left = box.run("ls", "-d", *gone, check=False).stdout.split()
    assert left == [], f"left behind by the purge: {left}"
    # NOTE: anything named after fleet, anywhere, but the .deb the harness copied in and
    # the harness's own files (fleet-e2e).
    found = box.sh(
        "find / \\( -path /proc -o -path /sys -o -path /dev -o -path /var/cache/apt/archives \\) -prune "
        "-o -name '*fleet*' -print"
    ).stdout.split()
    ours = [p for p in found if not p.startswith("/var/tmp/fleet_") and "fleet-e2e" not in p]
    assert ours == [], f"left behind by the purge: {ours}"


def test_installing_with_the_port_taken_says_who_holds_it_and_nothing_loops(
    container: Container, deb: Path
) -> None:
    box, port = container, free_port()
    set_port(box, port)
    # Another program on fleet's port, as a web server already installed would be.
    box.run("systemd-run", "--unit=squatter", "--property=Type=exec",
            "python3", "-m", "http.server", "--bind", "127.0.0.1", str(port))  # fmt: skip
    wait_for(lambda: port_is_free(port), lambda free: not free, 30, f"the squatter listening on {port}")
    squatter = box.run("systemctl", "show", "--property=MainPID", "--value", "squatter").stdout.strip()

    result = box.install_deb(deb)
    out = (result.stdout + result.stderr).rstrip().splitlines()
    wanted = f"fleet.socket cannot listen: port {port} is taken by python3 (pid {squatter})."
    assert wanted in out, f"apt install did not say who holds port {port}:\n" + "\n".join(out[-25:])
    ending = "\n".join(out[-8:])
    assert "sudo systemctl edit fleet.socket" in ending and "/etc/systemd/system/fleet.socket.d/" in ending, (
        f"apt install must end with the drop-in that moves the port:\n{ending}"
    )

    # Nothing loops: once systemd has no job left, no worker was started and none restarts.
    wait_for(lambda: box.run("systemctl", "list-jobs", "--no-legend").stdout.strip(), lambda jobs: jobs == "",
             30, "systemd jobs after the install")  # fmt: skip
    fleet = Fleet(box, port)
    cpus = box.nproc()
    assert fleet.enabled() == instances(cpus), "the install should still scale to one worker per CPU"
    for i in sorted(instances(cpus)):
        worker = fleet.properties(f"fleet-worker@{i}.service", "ActiveState", "NRestarts", "ExecMainPID")
        assert worker == {"ActiveState": "inactive", "NRestarts": "0", "ExecMainPID": "0"}, (
            f"worker {i} was started without its socket: {worker}"
        )
    status = fleet.fleetctl("status").stdout
    assert wanted in status.splitlines(), status
    assert status.rstrip().endswith("sudo systemctl restart fleet.socket"), status

    # The fix it prints works: a drop-in with a free port, then restart the socket.
    fleet.port = free_port()
    box.run("rm", PORT_DROP_IN)
    box.write_file("/etc/systemd/system/fleet.socket.d/override.conf",
                   f"[Socket]\nListenStream=\nListenStream={fleet.port}\n")  # fmt: skip
    box.run("systemctl", "daemon-reload")
    box.run("systemctl", "restart", "fleet.socket")
    get_hello(fleet.port, "after moving the port as fleetctl status says", timeout=30)
    wait_for(fleet.running, lambda r: r == instances(cpus), 30, "workers after the fix")


def test_bash_completes_fleetctl_once_bash_completion_is_installed(fleet: Fleet) -> None:
    box = fleet.box
    box.apt_install("bash-completion")
    fleet.fleetctl("scale", "2")

    def complete(line: str) -> list[str]:
        # NOTE: what an interactive bash does on TAB: bash-completion loads the file
        # named after the command on first use, and `complete -p` names its function.
        words = line.split() + ([""] if line.endswith(" ") else [])
        script = (
            ". /usr/share/bash-completion/bash_completion\n"
            "_comp_load fleetctl 2>/dev/null || __load_completion fleetctl\n"
            "complete -p fleetctl >&2\n"
            f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
            f"COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n"
            'function=$(complete -p fleetctl | sed -n "s/.*-F \\([^ ]*\\) .*/\\1/p")\n'
            '"$function" fleetctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
            'printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        result = box.run("bash", "-c", script)
        assert result.stderr.strip() == "complete -F _fleetctl fleetctl", result.stderr
        return [w for w in result.stdout.splitlines() if w]

    assert complete("fleetctl ") == ["scale", "status", "restart", "logs", "drain", "undrain", "apps", "new",
                                     "apply"]
    assert complete("fleetctl status --") == ["--help", "--json"]
    assert sorted(complete("fleetctl logs ")) == ["1", "2"]
    box.write_file("/etc/fleet/apps/shop.conf", "FLEET_LISTEN=127.0.0.1:1\n")
    assert sorted(complete("fleetctl logs ")) == ["1", "2", "shop"]
    assert complete("fleetctl restart s") == ["shop"]
