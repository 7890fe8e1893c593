"""Who holds a TCP port, for when fleet.socket cannot listen because another program does.

Read from ``/proc`` the way ``ss -ltnp`` reads it: the listening sockets on the port
(``/proc/net/tcp`` and ``tcp6``), then the processes holding one of them open
(``/proc/PID/fd``). Only root sees every process's descriptors; a holder in another
network namespace (another container) is not found at all.

    >>> listen_port("[::]:8000"), listen_port("127.0.0.1:8080"), listen_port("/run/fleet.sock")
    (8000, 8080, None)
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

_TCP_LISTEN = "0A"  # NOTE: the st column of /proc/net/tcp: include/net/tcp_states.h


@dataclass(frozen=True)
class Holder:
    """A process holding a listening socket: its pid and its name (``comm``)."""

    pid: int
    name: str

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid})"


@dataclass(frozen=True)
class TakenPort:
    """A port fleet.socket should listen on that something else listens on already.

    ``holders`` is empty when the process cannot be seen from here (not root, or
    another network namespace).
    """

    port: int
    holders: tuple[Holder, ...] = ()


def listen_port(address: str) -> int | None:
    """The TCP port of one of systemd's ``Listen=`` addresses; None for a UNIX socket."""
    if address.startswith(("/", "@")):
        return None
    port = address.rsplit(":", 1)[-1]
    return int(port) if port.isdigit() else None


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[int]:
    """The inodes of the sockets listening on TCP ``port``, IPv4 and IPv6."""
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                    continue
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(int(fields[9]))
    return inodes


def holders(inodes: set[int], proc: Path = Path("/proc")) -> tuple[Holder, ...]:
    """The processes with one of the sockets ``inodes`` open, by pid."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in wanted for fd in (entry / "fd").iterdir()):
                found.append(Holder(int(entry.name), (entry / "comm").read_text().strip()))
    return tuple(sorted(found, key=lambda h: h.pid))


def taken(addresses: tuple[str, ...], proc: Path = Path("/proc")) -> tuple[TakenPort, ...]:
    """Of the ports of ``addresses``, those something already listens on, with who does."""
    found = []
    for port in sorted({p for p in map(listen_port, addresses) if p is not None}):
        inodes = listening_inodes(port, proc)
        if inodes:
            found.append(TakenPort(port, holders(inodes, proc)))
    return tuple(found)
