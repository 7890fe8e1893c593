"""fleet-worker started by hand as systemd starts it: listening sockets from fd 3, LISTEN_FDS,
its own LISTEN_PID, and a NOTIFY_SOCKET that speaks the real sd_notify protocol.

The unit tests start workers this way (:class:`WorkerProcess`); the bench's fleet-bare
peer starts its N workers on one shared socket the same way (:func:`fd3_launch`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = "fleet.worker"
ENTERED = "tests.apps: entered"  # what tests/apps.py writes to stderr as a request enters it


@dataclass(frozen=True)
class Fd3Launch:
    """What Popen needs to start ``python -m module`` with sockets at fd 3, 4, ... and its own LISTEN_PID."""

    argv: list[str]
    preexec_fn: Callable[[], None]
    pass_fds: tuple[int, ...]


def fd3_launch(fds: Sequence[int], python: str = sys.executable, module: str = MODULE) -> Fd3Launch:
    """Pass ``fds`` as systemd passes a socket unit's sockets; the caller sets LISTEN_FDS.

    NOTE: LISTEN_PID must name the worker itself: the shell sets it to its own pid, then
    execs the worker, which so keeps that pid.
    """
    fds = list(fds)

    def at_fd3() -> None:
        # NOTE: dup each fd above the target range first, so fd 3 may be any of them.
        high = [os.dup(fd) for fd in fds]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i)

    argv = ["sh", "-c", f'LISTEN_PID=$$ exec "$0" -m {module} "$@"', python]
    return Fd3Launch(argv, at_fd3, tuple(range(3, 3 + len(fds))))


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
    """A fleet-worker of this checkout started as systemd starts it, its stderr kept in a file.

    Nothing of this process's own systemd environment leaks in (FLEET_, LISTEN_, NOTIFY_...).
    """

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

        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        if sockets:
            launch = fd3_launch([s.fileno() for s in sockets])
            argv, preexec, pass_fds = launch.argv, launch.preexec_fn, launch.pass_fds
        else:
            argv, preexec, pass_fds = [sys.executable, "-m", MODULE], None, ()
        self.proc = subprocess.Popen(
            argv, env=full_env, stdout=subprocess.DEVNULL, stderr=self._stderr,
            preexec_fn=preexec, pass_fds=pass_fds,
        )  # fmt: skip
        self.notify = notify

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()

    def wait_entered(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``count`` requests have entered the app (tests/apps.py says so on stderr).

        A test that needs a request inside the worker waits for this instead of sleeping.
        """
        deadline = time.monotonic() + timeout
        while (seen := self.stderr().count(ENTERED)) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker {self.pid}: {seen} of {count} requests entered the app "
                                     f"(exit {self.proc.poll()}):\n{self.stderr()}")
            time.sleep(0.01)

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
