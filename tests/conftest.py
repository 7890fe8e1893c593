"""Shared fixtures: real listening sockets, real sd_notify sockets, real worker processes."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET: it is the real protocol."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def _read(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536).decode()
        except (TimeoutError, BlockingIOError):  # settimeout(0) means non-blocking
            return False
        self.messages.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))
        return True

    def wait_for(self, key: str, value: str | None = None, timeout: float = 10.0) -> dict[str, str]:
        """Return the first message (seen or arriving) that has ``key`` (equal to ``value``)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if key in message and (value is None or message[key] == value):
                    return message
            seen = len(self.messages)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {key}={value or '*'} from the worker in {timeout}s: {self.messages}"
                )
            self._read(left)

    def drain(self, seconds: float = 0.0) -> list[dict[str, str]]:
        """Collect what arrives during ``seconds`` (a pinging worker is never quiet)."""
        deadline = time.monotonic() + seconds
        while self._read(max(0.0, deadline - time.monotonic())) and time.monotonic() < deadline:
            pass
        return self.messages

    def close(self) -> None:
        self.sock.close()


class WorkerProcess:
    """A fleet-worker started as systemd starts it: sockets from fd 3, LISTEN_FDS, its own LISTEN_PID."""

    def __init__(self, sockets: list[socket.socket], notify: NotifySocket | None, env: dict[str, str],
                 stderr_path: Path) -> None:
        inherited = ("FLEET_", "LISTEN_", "NOTIFY_", "WATCHDOG_", "JOURNAL_")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
        full_env["PYTHONPATH"] = str(ROOT)
        if sockets:
            full_env["LISTEN_FDS"] = str(len(sockets))
        if notify is not None:
            full_env["NOTIFY_SOCKET"] = str(notify.path)
        full_env.update(env)
        fds = [s.fileno() for s in sockets]

        def at_fd3() -> None:
            # NOTE: dup each fd above the target range first, so fd 3 may be any of them.
            high = [os.dup(fd) for fd in fds]
            for i, fd in enumerate(high):
                os.dup2(fd, 3 + i)

        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        # LISTEN_PID must name the worker itself: the shell sets it to its own pid, then execs.
        argv = ["sh", "-c", 'LISTEN_PID=$$ exec "$0" -m fleet.worker "$@"', sys.executable]
        if not sockets:
            argv = [sys.executable, "-m", "fleet.worker"]
        self.proc = subprocess.Popen(
            argv, env=full_env, stdout=subprocess.DEVNULL, stderr=self._stderr,
            preexec_fn=at_fd3 if sockets else None, pass_fds=tuple(range(3, 3 + len(fds))),
        )
        self.notify = notify

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 15.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.pid} still running after {timeout}s:\n{self.stderr()}"
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._stderr.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening TCP socket on a free loopback port, as fleet.socket would hold it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield sock
    sock.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    """Start workers; every one is killed by PID at teardown, whatever the test did."""
    started: list[WorkerProcess] = []
    notifies: list[NotifySocket] = []

    def start(*sockets: socket.socket, notify: bool = True, **env: str) -> WorkerProcess:
        n = len(started)
        sock = NotifySocket(tmp_path / f"notify-{n}") if notify else None
        if sock:
            notifies.append(sock)
        worker = WorkerProcess(list(sockets), sock, env, tmp_path / f"worker-{n}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
    for sock in notifies:
        sock.close()


def get(port: int, path: str = "/", timeout: float = 10.0, conn: http.client.HTTPConnection | None = None,
        ) -> tuple[int, dict[str, str], bytes]:
    """One GET on 127.0.0.1 (a fresh connection unless ``conn`` is given)."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        resp = c.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        if conn is None:
            c.close()
