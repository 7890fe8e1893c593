"""Processes the bench starts, and what /proc says about them: CPU time, memory, connections.

Every process is started through :class:`Launched` and recorded in :data:`STARTED`;
:func:`stop_all` stops each by PID (and the descendants it had), also on Ctrl-C or an
error, so no server outlives a run. Nothing is ever signalled by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks, or None if it is gone or a zombie.

    NOTE: (pid, start time) names a process for good; a pid alone may be reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), or 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages (the interpreter, forked memory) split between sharers."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, parents before children."""
    result: list[int] = []
    todo = children(pid)
    while todo:
        child = todo.pop(0)
        result.append(child)
        todo += children(child)
    return result


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


@dataclass(frozen=True)
class Proc:
    """A process named for good: its pid and its start time."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        started = start_time(pid)
        return cls(pid, started) if started is not None else None

    def alive(self) -> bool:
        return start_time(self.pid) == self.started

    def signal(self, signum: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


class Launched:
    """A process the bench started; :meth:`stop` ends it and every descendant, by PID."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        pass_fds: Sequence[int] = (),
        preexec_fn: Callable[[], object] | None = None,
        cwd: Path | None = None,
        session: bool = False,
    ) -> None:
        out: IO[bytes] | int = open(log, "ab") if log else subprocess.DEVNULL
        self.popen: subprocess.Popen[str] | subprocess.Popen[bytes] = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=tuple(pass_fds),
            preexec_fn=preexec_fn,
            cwd=cwd,
            start_new_session=session,
        )
        if not isinstance(out, int):
            out.close()
        self.pid = self.popen.pid
        self.known: set[Proc] = set()
        STARTED.append(self)

    def running(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[int]:
        """The process and its live descendants (each remembered, so stop() finds orphans too)."""
        pids = [self.pid, *descendants(self.pid)] if self.running() else []
        for pid in pids:
            proc = Proc.of(pid)
            if proc:
                self.known.add(proc)
        return pids

    def stop(self, timeout: float = 5.0) -> None:
        self.tree()
        procs = sorted(self.known, key=lambda p: p.pid)
        if self.running():
            self.popen.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.running() or any(p.alive() for p in procs)):
            time.sleep(0.05)
        if self.running():
            self.popen.kill()
        for proc in procs:
            proc.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        with contextlib.suppress(ValueError):
            STARTED.remove(self)


STARTED: list[Launched] = []


def stop_all() -> None:
    for launched in reversed(list(STARTED)):
        launched.stop()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_signals() -> None:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt, so the run's ``finally`` stops everything."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)


# -- connections ---------------------------------------------------------------------------


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def established_on(port: int) -> set[int]:
    """Inodes of ESTABLISHED TCP sockets whose local port is ``port`` (the server's ends)."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(int(f[9]))
    return inodes


def connections(pids: Iterable[int], port: int) -> dict[int, int]:
    """How many established connections on ``port`` each process holds open."""
    live = established_on(port)
    return {pid: len(_socket_inodes(pid) & live) for pid in pids}
