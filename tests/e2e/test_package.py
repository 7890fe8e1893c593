"""The fleet package in a real systemd: install, serve, stop, re-port, upgrade, purge.

Each test boots a fresh Debian 12 container (systemd as PID 1) and drives it only
through what a user runs: apt, systemctl, fleetctl, and HTTP from the host. The
container shares the host's network, so every test first moves fleet.socket to a
free port with a drop-in, the way a user changes the port.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from .container import CLEAN_PATH, Container, free_port, http_get

REPO = Path(__file__).resolve().parent.parent.parent
DROP_IN = "/etc/systemd/system/fleet.socket.d/port.conf"

T = TypeVar("T")


# --- helpers ----------------------------------------------------------------------------


def set_port(box: Container, port: int) -> None:
    """Move fleet.socket to ``port``, as ``systemctl edit fleet.socket`` would."""
    box.write_file(DROP_IN, f"[Socket]\nListenStream=\nListenStream={port}\n")


def install(box: Container, deb: Path) -> int:
    """Install ``deb`` on a free port; return the port."""
    port = free_port()
    set_port(box, port)
    box.install_deb(deb)
    return port


def wait_for(probe: Callable[[], T], done: Callable[[T], bool], timeout: float, what: str) -> T:
    """Poll ``probe`` until ``done`` accepts its value; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout:g} s")
        time.sleep(0.2)


def running_workers(box: Container) -> dict[str, int]:
    """Return {instance: main pid} of every running fleet-worker@ unit."""
    listing = box.run(
        "systemctl",
        "list-units",
        "--type=service",
        "--state=running",
        "--no-legend",
        "--plain",
        "fleet-worker@*",
    ).stdout
    units = [line.split()[0] for line in listing.splitlines() if line.strip()]
    workers = {}
    for unit in units:
        pid = box.run("systemctl", "show", "--property=MainPID", "--value", unit).stdout.strip()
        workers[unit.removeprefix("fleet-worker@").removesuffix(".service")] = int(pid)
    return workers


def enabled_workers(box: Container) -> set[str]:
    """Return the instances fleet.service pulls in: what ``fleetctl scale`` enabled."""
    wants = box.run("systemctl", "show", "--property=Wants", "--value", "fleet.service").stdout
    return {m.group(1) for m in re.finditer(r"fleet-worker@([^.\s]+)\.service", wants)}


def unit_property(box: Container, unit: str, name: str) -> str:
    return box.run("systemctl", "show", f"--property={name}", "--value", unit).stdout.strip()


def get_hello(port: int, when: str, timeout: float = 10) -> dict[str, str]:
    """GET / and require fleet's Hello World; fail saying ``when`` and what happened instead."""
    try:
        status, headers, body = http_get(port, "/", timeout=timeout)
    except OSError as error:
        raise AssertionError(f"GET / on port {port} {when}: {type(error).__name__}: {error}") from None
    assert (status, body) == (200, "Hello World!"), f"GET / on port {port} {when}: {status} {body!r}"
    return headers


def answering_workers(port: int, expected: set[str], tries: int = 400) -> set[str]:
    """GET / on fresh connections until every expected worker has answered; return who did."""
    seen: set[str] = set()
    for _ in range(tries):
        seen.add(get_hello(port, "with every worker up").get("x-fleet-worker", "?"))
        if seen >= expected:
            break
    return seen


def listening_inodes(port: int) -> set[int]:
    """Return the inodes of the host's listening TCP sockets on ``port``.

    NOTE: read from /proc/net, not by connecting: a connection would make systemd start
    fleet.service. The inode names the socket itself, so it shows whether it was reopened.
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "0A":  # 0A: TCP_LISTEN
                inodes.add(int(fields[9]))
    return inodes


def refuses(port: int) -> bool:
    """Tell whether a connection to 127.0.0.1:``port`` is refused (nothing listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


class Traffic:
    """GET / in a loop on fresh connections, from a thread, recording every failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, _, body = http_get(self.port, "/", timeout=15)
            except OSError as error:
                self.failures.append(f"{type(error).__name__}: {error}")
                continue
            if (status, body) == (200, "Hello World!"):
                self.ok += 1
            else:
                self.failures.append(f"{status} {body[:80]!r}")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture(scope="session")
def newer_deb(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same package with a higher version, to upgrade to (built once per session)."""
    version = deb.name.split("_")[1] + "+test1"
    outdir = tmp_path_factory.mktemp("newer-deb")
    result = subprocess.run(
        [str(REPO / "packaging/build-deb"), "--version", version, "--outdir", str(outdir)],
        capture_output=True,
        text=True,
        # NOTE: nocheck: the same sources' tests already ran when `deb` was built.
        env={"PATH": CLEAN_PATH, "LC_ALL": "C.UTF-8", "HOME": "/root", "DEB_BUILD_OPTIONS": "nocheck"},
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        pytest.fail(f"building fleet {version} failed with exit {result.returncode}:\n{tail}", pytrace=False)
    return outdir / f"fleet_{version}_all.deb"


@pytest.fixture
def installed(container: Container, deb: Path) -> Iterator[tuple[Container, int]]:
    """A container with the package just installed by apt; yields it and fleet's port."""
    yield container, install(container, deb)


# --- the tests ----------------------------------------------------------------------------


def test_install_serves_at_once_with_one_worker_per_cpu(installed: tuple[Container, int]) -> None:
    box, port = installed
    get_hello(port, "right after apt install")

    cpus = box.nproc()
    expected = {str(i) for i in range(1, cpus + 1)}
    assert enabled_workers(box) == expected, f"fleetctl scale auto should enable one worker per CPU ({cpus})"
    workers = wait_for(
        lambda: running_workers(box),
        lambda w: set(w) == expected,
        30,
        f"running workers (expected {sorted(expected)})",
    )
    assert len(set(workers.values())) == cpus, f"each worker is its own process: {workers}"

    seen = answering_workers(port, expected)
    assert seen == expected, (
        f"every worker shares the socket, but in 400 requests only {sorted(seen)} answered"
    )


def test_units_verify_cleanly_and_workers_are_sandboxed(installed: tuple[Container, int]) -> None:
    box, _ = installed
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


def test_stopping_the_fleet_keeps_the_socket_and_a_request_brings_it_back(
    installed: tuple[Container, int],
) -> None:
    box, port = installed
    listening = listening_inodes(port)
    assert listening, f"nothing listens on {port} after install"

    box.run("systemctl", "stop", "fleet")
    wait_for(lambda: running_workers(box), lambda w: not w, 45, "workers after systemctl stop fleet")
    assert unit_property(box, "fleet.socket", "ActiveState") == "active"
    assert listening_inodes(port) == listening, "systemctl stop fleet must leave the socket open"

    box.run("systemctl", "start", "fleet.socket")
    headers = get_hello(port, "after systemctl stop fleet (it should start the fleet again)", timeout=30)
    assert headers.get("x-fleet-worker"), headers
    assert unit_property(box, "fleet.service", "ActiveState") == "active"
    expected = enabled_workers(box)
    wait_for(lambda: running_workers(box), lambda w: set(w) == expected, 30, "workers after the request")


def test_a_drop_in_moves_the_port(installed: tuple[Container, int]) -> None:
    box, old = installed
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


def test_upgrade_restarts_workers_one_by_one_and_keeps_socket_scale_and_settings(
    installed: tuple[Container, int],
    newer_deb: Path,
) -> None:
    box, port = installed
    box.run("fleetctl", "scale", "3")
    box.sh("echo FLEET_THREADS=6 >> /etc/default/fleet")
    config = box.run("cat", "/etc/default/fleet").stdout
    before = wait_for(
        lambda: running_workers(box),
        lambda w: set(w) == {"1", "2", "3"},
        30,
        "workers after fleetctl scale 3",
    )
    socket_since = unit_property(box, "fleet.socket", "ActiveEnterTimestampMonotonic")
    group_since = unit_property(box, "fleet.service", "ActiveEnterTimestampMonotonic")
    listening = listening_inodes(port)

    started = time.monotonic()
    with Traffic(port) as traffic:
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

    assert listening_inodes(port) == listening, "the upgrade reopened the listening socket"
    assert unit_property(box, "fleet.socket", "ActiveEnterTimestampMonotonic") == socket_since, (
        "the upgrade restarted fleet.socket"
    )
    assert unit_property(box, "fleet.service", "ActiveEnterTimestampMonotonic") == group_since, (
        "the upgrade restarted fleet.service (which restarts every worker at once)"
    )
    assert enabled_workers(box) == {"1", "2", "3"}, "the upgrade changed the user's scale"
    assert box.run("cat", "/etc/default/fleet").stdout == config, "the upgrade changed /etc/default/fleet"
    after = wait_for(
        lambda: running_workers(box), lambda w: set(w) == {"1", "2", "3"}, 30, "workers after the upgrade"
    )
    kept = {i for i in before if before[i] == after[i]}
    assert not kept, f"workers {sorted(kept)} were not restarted by the upgrade: {before} -> {after}"
    for i in sorted(after):
        status_text = unit_property(box, f"fleet-worker@{i}.service", "StatusText")
        assert "with 6 threads" in status_text, (
            f"worker {i} did not reread /etc/default/fleet: {status_text!r}"
        )


def test_remove_stops_everything_and_a_reinstall_keeps_scale_and_settings(
    installed: tuple[Container, int],
    deb: Path,
) -> None:
    box, port = installed
    box.run("fleetctl", "scale", "3")
    box.sh("echo FLEET_THREADS=6 >> /etc/default/fleet")
    # NOTE: an instance started by hand, outside fleet.service: the package must stop it too.
    box.run("systemctl", "start", "fleet-worker@7.service")
    wait_for(
        lambda: running_workers(box),
        lambda w: set(w) == {"1", "2", "3", "7"},
        30,
        "workers before the remove",
    )

    box.run("apt-get", "remove", "-y", "fleet", env={"DEBIAN_FRONTEND": "noninteractive"})
    assert running_workers(box) == {}, "apt remove left workers running"
    assert unit_property(box, "fleet.socket", "ActiveState") == "inactive"
    assert refuses(port), f"port {port} still answers after apt remove"
    assert "FLEET_THREADS=6" in box.run("cat", "/etc/default/fleet").stdout, "remove must keep conffiles"

    box.install_deb(deb)
    get_hello(port, "after reinstalling")
    assert enabled_workers(box) == {"1", "2", "3"}, "a reinstall after remove must keep the user's scale"
    workers = wait_for(
        lambda: running_workers(box), lambda w: set(w) == {"1", "2", "3"}, 30, "workers after the reinstall"
    )
    for i in sorted(workers):
        status_text = unit_property(box, f"fleet-worker@{i}.service", "StatusText")
        assert "with 6 threads" in status_text, f"worker {i} lost /etc/default/fleet: {status_text!r}"


def test_purge_leaves_nothing_behind(installed: tuple[Container, int]) -> None:
    box, port = installed
    box.run("fleetctl", "scale", "3")
    wait_for(lambda: running_workers(box), lambda w: len(w) == 3, 30, "workers after fleetctl scale 3")
    # What `systemctl edit fleet-worker@.service` leaves (the port drop-in is there already).
    box.write_file("/etc/systemd/system/fleet-worker@.service.d/override.conf", "[Service]\nNice=1\n")
    for path in ("/var/lib/private/fleet", "/run/fleet", "/etc/systemd/system/fleet.socket.d"):
        assert box.run("test", "-e", path, check=False).returncode == 0, (
            f"{path} should exist before the purge, or this test proves nothing about removing it"
        )

    box.run("apt-get", "purge", "-y", "fleet", env={"DEBIAN_FRONTEND": "noninteractive"})

    assert running_workers(box) == {}
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
