"""The worker's side of systemd's protocols: inherited sockets, sd_notify and the watchdog.

This is the only module that reads ``LISTEN_FDS``/``LISTEN_PID`` or writes to
``NOTIFY_SOCKET``; everything else asks it. Outside systemd every call is a
harmless no-op, so the worker runs the same by hand.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from systemd import daemon


class InheritedSocketError(RuntimeError):
    """systemd passed a file descriptor the worker cannot serve."""


def inherited_sockets() -> list[socket.socket]:
    """Return the listening sockets systemd passed (fd 3 onwards), or [] when there are none.

    ``listen_fds`` honours ``LISTEN_PID``, so sockets meant for a parent process
    are ignored, and it unsets the variables so a child the app spawns does not
    mistake them for its own.
    """
    result = []
    for fd in daemon.listen_fds(unset_environment=True):
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM:
            raise InheritedSocketError(
                f"fd {fd} from systemd is not a stream socket; "
                "use ListenStream= in fleet.socket"
            )
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise InheritedSocketError(
                f"fd {fd} from systemd is not listening; fleet.socket must not set Accept=yes"
            )
        result.append(sock)
    return result


def notify(**fields: str | int) -> None:
    """Send sd_notify fields, e.g. ``notify(READY=1, STATUS="serving")``; no-op outside systemd."""
    if "NOTIFY_SOCKET" in os.environ:
        daemon.notify("\n".join(f"{key}={value}" for key, value in fields.items()))


class Watchdog:
    """Sends WATCHDOG=1 at a quarter of WatchdogSec=, but only while told the worker is healthy.

    Stopping the pings is how a worker asks systemd to replace it: a stuck
    process cannot be trusted to restart itself, so the verdict stays outside.
    """

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.interval = int(usec) / 4e6 if enabled else 0.0
        self._next = 0.0

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def trigger(self) -> bool:
        """Ask systemd to act now as if pings had stopped (WATCHDOG=trigger, systemd >= 246).

        Works even without WatchdogSec=; returns False outside systemd.
        """
        if "NOTIFY_SOCKET" not in os.environ:
            return False
        notify(WATCHDOG="trigger")
        return True

    def tick(self, healthy: bool, now: float | None = None) -> None:
        """Ping systemd if one is due and ``healthy``; call this often."""
        if not self.enabled or not healthy:
            return
        now = time.monotonic() if now is None else now
        if now >= self._next:
            self._next = now + self.interval
            notify(WATCHDOG=1)
