"""Loopback ports and the TCP sockets on them, as the host's /proc/net shows them.

Everything the harness serves or attacks is on 127.0.0.1; containers share the host's
network namespace, so a fleet inside one is seen here too.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

HOST = "127.0.0.1"

_TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
               "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN",
               "0B": "CLOSING"}  # fmt: skip


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Tell whether nothing on the host holds ``port`` on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def listen(port: int = 0, backlog: int = 128, *, nodelay: bool = False) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (``port`` 0: a free one), as fleet.socket holds one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((HOST, port))
    sock.listen(backlog)
    return sock


def _tcp_lines(port: int) -> Iterator[list[str]]:
    """The /proc/net/tcp and tcp6 fields of every TCP socket whose local port is ``port``."""
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    yield fields


def _tcp_sockets(port: int) -> Iterator[tuple[str, int]]:
    """(state code, inode) of every TCP socket whose local port is ``port``, IPv4 and IPv6."""
    for fields in _tcp_lines(port):
        yield fields[3], int(fields[9])


def accept_queue(port: int) -> int:
    """Connections the kernel has set up on ``port`` that no process has accepted yet.

    NOTE: for a listening socket, /proc/net/tcp's rx_queue is its accept queue's length:
    clients whose requests no server process has even seen.
    """
    return sum(int(f[4].split(":")[1], 16) for f in _tcp_lines(port) if f[3] == "0A")


def server_connections(port: int) -> Counter[str]:
    """Count the TCP sockets whose local port is ``port`` by state, LISTEN and TIME_WAIT left out.

    What is left once the clients have gone is what the server still holds (or has not
    yet accepted) of them.
    """
    states: Counter[str] = Counter()
    for state, _ in _tcp_sockets(port):
        if state not in ("0A", "06"):
            states[_TCP_STATES.get(state, state)] += 1
    return states


def established_on(port: int) -> set[int]:
    """Inodes of ESTABLISHED TCP sockets whose local port is ``port`` (the server's ends)."""
    return {inode for state, inode in _tcp_sockets(port) if state == "01"}


def listening_on(port: int) -> set[int]:
    """Inodes of the sockets listening on ``port``.

    NOTE: read from /proc/net, not by connecting: a connection would make systemd start
    fleet.service. The inode names the socket itself, so it shows whether it was reopened.
    """
    return {inode for state, inode in _tcp_sockets(port) if state == "0A"}


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def sockets_held(pid: int) -> int:
    """How many sockets ``pid`` has open, in any state (a connection it half-closed included)."""
    return len(_socket_inodes(pid))


def connections(pids: Iterable[int], port: int) -> dict[int, int]:
    """How many established connections on ``port`` each process holds open."""
    live = established_on(port)
    return {pid: len(_socket_inodes(pid) & live) for pid in pids}
