"""Shared fixtures: real listening sockets, real sd_notify sockets, real worker processes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.net import listen
from harness.worker import NotifySocket, WorkerProcess

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening TCP socket on a free loopback port, as fleet.socket would hold it."""
    sock = listen()
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

