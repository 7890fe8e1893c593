"""The fleet package installed in a container, and the probes the e2e tests share.

Every e2e test file drives the same thing: fleet installed in a throwaway container,
on a free port (containers share the host's network), observed through systemctl,
fleetctl and HTTP from the host. Its plumbing lives here once, so the test files hold
only what they prove. Instances are named as systemd names them: strings ("1", "2").
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from harness.container import Container
from harness.http import get_text
from harness.net import free_port

PORT_DROP_IN = "/etc/systemd/system/fleet.socket.d/port.conf"
WANTS_DIR = "/etc/systemd/system/fleet.service.wants"
HELLO = "Hello World!"
FLEETCTL_TIMEOUT = 180.0  # NOTE: a rolling restart waits for each worker in turn.

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T], done: Callable[[T], bool], timeout: float, what: str, every: float = 0.1
) -> T:
    """Poll ``probe`` until ``done`` accepts its value; fail naming ``what`` and the last value.

    systemd and the workers act asynchronously, so tests poll for a state instead of sleeping.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout:g} s")
        time.sleep(every)


def instances(size: int) -> set[str]:
    """Return the instance names of a fleet of ``size`` workers: "1" to str(size)."""
    return {str(i) for i in range(1, size + 1)}


def set_port(box: Container, port: int, host: str = "") -> None:
    """Move fleet.socket to ``port`` (only on ``host``, if given), as ``systemctl edit fleet.socket`` would.

    NOTE: containers share the host's network: written before the package's postinst
    starts the socket, this keeps it off the host's ports in use.
    """
    listen = f"{host}:{port}" if host else str(port)
    box.write_file(PORT_DROP_IN, f"[Socket]\nListenStream=\nListenStream={listen}\n")


def install_fleet(box: Container, deb: Path) -> Fleet:
    """Install ``deb`` in ``box`` with fleet.socket on a free port.

    Returns as soon as apt does, without waiting for an answer, so a test can prove
    the package serves at once; the ``fleet`` fixture waits (``Fleet.wait_serving``).
    """
    port = free_port()
    set_port(box, port)  # NOTE: before the install, so the postinst opens the free port.
    box.install_deb(deb)
    return Fleet(box, port)


def _status(port: int, path: str = "/", timeout: float = 5) -> int | str:
    """Return the HTTP status of GET ``path``, or the error as text: a value to poll on."""
    try:
        return get_text(port, path, timeout=timeout)[0]
    except (OSError, http.client.HTTPException) as error:
        return f"{type(error).__name__}: {error}"


@dataclass
class Fleet:
    """The package installed in ``box``, serving on ``port``."""

    box: Container
    port: int

    def fleetctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run fleetctl inside, as root."""
        return self.box.run("fleetctl", *args, check=check, timeout=FLEETCTL_TIMEOUT)

    def status(self) -> dict[str, Any]:
        """Return ``fleetctl status --json``."""
        data: dict[str, Any] = json.loads(self.fleetctl("status", "--json").stdout)
        return data

    def show(self, unit: str, prop: str) -> str:
        """Return one property of ``unit`` as systemd has it loaded."""
        return self.box.run("systemctl", "show", f"--property={prop}", "--value", unit).stdout.strip()

    def properties(self, unit: str, *props: str) -> dict[str, str]:
        """Return several properties of ``unit`` read at the same instant (one systemctl call).

        NOTE: separate reads can mix two states, e.g. a dead worker's ActiveState with the
        MainPID of its replacement that is not ready yet.
        """
        out = self.box.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def running(self) -> set[str]:
        """Return the instances systemd has active (started and ready)."""
        out = self.box.run("systemctl", "list-units", "--plain", "--no-legend", "--state=active",
                           "fleet-worker@*.service").stdout  # fmt: skip
        return {m.group(1) for m in re.finditer(r"^fleet-worker@([^.\s]+)\.service", out, re.M)}

    def enabled(self) -> set[str]:
        """Instances enabled, read two ways that must agree: the symlinks and fleet.service's Wants=.

        The symlinks are what a reboot brings back; Wants= is what systemd has loaded now.
        """
        links = self.box.sh(f"ls {WANTS_DIR} 2>/dev/null || true").stdout
        on_disk = set(re.findall(r"^fleet-worker@([^.\s]+)\.service$", links, re.M))
        wants = set(re.findall(r"fleet-worker@([^.\s]+)\.service", self.show("fleet.service", "Wants")))
        assert on_disk == wants, f"symlinks {on_disk} but fleet.service wants {wants}"
        return on_disk

    def sets(self) -> tuple[set[str], set[str]]:
        """Return (enabled, running), the two sets ``fleetctl scale`` must make equal."""
        return self.enabled(), self.running()

    def pid(self, instance: str) -> int:
        """Return the MainPID of one worker (0 when it has none)."""
        return int(self.show(f"fleet-worker@{instance}.service", "MainPID"))

    def pids(self) -> dict[str, int]:
        """Return {instance: MainPID} of every running worker: a new pid proves a restart.

        NOTE: one systemctl call, so the set of active workers and their pids are read at
        one instant; listing them first and then asking each pid can give a restarting
        worker's 0, or its replacement's pid.
        """
        out = self.box.run("systemctl", "show", "--state=active", "--property=Id", "--property=MainPID",
                           "fleet-worker@*.service").stdout  # fmt: skip
        found: dict[str, int] = {}
        for block in out.strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            m = re.fullmatch(r"fleet-worker@([^.\s]+)\.service", props.get("Id", ""))
            if m:
                found[m.group(1)] = int(props["MainPID"])
        return dict(sorted(found.items()))

    def health(self) -> tuple[int, dict[str, Any]]:
        """GET /healthz; return its status and JSON body (worker, pid, status)."""
        status, _, body = get_text(self.port, "/healthz")
        data: dict[str, Any] = json.loads(body)
        return status, data

    def configure(self, **settings: str) -> None:
        """Append settings to /etc/default/fleet, as an operator edits it."""
        lines = "".join(f"{k}={v}\n" for k, v in settings.items())
        self.box.sh(f"cat >> /etc/default/fleet <<'EOF'\n{lines}EOF")

    def break_worker(self, instance: str, environment: str) -> str:
        """Give one worker a bad ``Environment=`` by a drop-in, daemon-reload; return its path."""
        drop_in = f"/etc/systemd/system/fleet-worker@{instance}.service.d/broken.conf"
        self.box.write_file(drop_in, f"[Service]\nEnvironment={environment}\n")
        self.box.run("systemctl", "daemon-reload")
        return drop_in

    def wait_serving(self, timeout: float = 30) -> None:
        """Wait until GET / answers 200: the socket may start fleet.service on demand."""
        wait_for(lambda: _status(self.port), lambda s: s == 200, timeout, f"GET / on port {self.port}")


def every_worker_answers(
    fleet: Fleet, path: str, workers: set[str], rounds: int = 50, body: str | None = None
) -> dict[str, int]:
    """GET ``path`` until every one of ``workers`` answered; return {worker: the status it gave}.

    A worker that gave different statuses maps to -1; with ``body``, any other body fails.

    NOTE: concurrently. One request at a time on an idle fleet is accepted by the
    same worker again and again (the shared queue wakes the last idle one), so a
    sequential loop may never reach the others.
    """
    seen: dict[str, set[int]] = {}

    def one(_: int) -> tuple[str, int]:
        status, headers, text = get_text(fleet.port, path)
        worker = headers.get("x-fleet-worker") or str(json.loads(text)["worker"])
        assert body is None or text == body, f"worker {worker} answered {path} with {status} {text[:80]!r}"
        return worker, status

    with ThreadPoolExecutor(16) as pool:
        for _ in range(rounds):
            for worker, status in pool.map(one, range(32)):
                seen.setdefault(worker, set()).add(status)
            if set(seen) >= workers:
                return {w: statuses.pop() if len(statuses) == 1 else -1 for w, statuses in seen.items()}
    raise AssertionError(f"only workers {sorted(seen)} of {sorted(workers)} answered {path}")


class Traffic:
    """GET / on fresh connections in a loop, from a thread, recording every failure.

    A failure is anything but fleet's ``200 Hello World!``: an error, a timeout (after
    ``timeout`` seconds), another status or another body. Use it around an operation
    that must not lose a request. Another app's page: ``fetch`` (given the timeout,
    returns status and body) and ``good`` (accepts the body) say what and how.
    """

    def __init__(
        self,
        port: int = 0,
        timeout: float = 5,
        *,
        fetch: Callable[[float], tuple[int, str]] | None = None,
        good: Callable[[str], bool] = lambda body: body == HELLO,
        name: str = "GET /",
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.fetch = fetch or self._get_root
        self.good = good
        self.name = name
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _get_root(self, timeout: float) -> tuple[int, str]:
        status, _, body = get_text(self.port, "/", timeout=timeout)
        return status, body

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = self.fetch(self.timeout)
            except (OSError, http.client.HTTPException) as error:
                self.failures.append(f"{type(error).__name__}: {error}")
                continue
            if status == 200 and self.good(body):
                self.ok += 1
            else:
                self.failures.append(f"{status} {body[:80]!r}")

    def report(self) -> str:
        return f"{self.name}: {self.ok} ok, {len(self.failures)} failed {self.failures[:3]}"

    def wait_answered(self, count: int = 3, timeout: float = 30) -> None:
        """Wait until ``count`` more requests have been answered: the traffic runs, now."""
        target = self.ok + count
        wait_for(lambda: self.ok, lambda ok: ok >= target, timeout, "requests answered", every=0.02)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 15)
