"""Processes the harness starts, and what /proc says about any process: CPU time, memory, family.

Every process the bench starts goes through :class:`Launched` and is recorded in
:data:`STARTED`; :func:`stop_all` stops each by PID (and the descendants it had), also
on Ctrl-C or an error, so no server outlives a run. Nothing is ever signalled by name:
a process is named for good by its pid and start time (:class:`Proc`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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


def process_matches(pid: int, started: int) -> bool:
    """Tell whether ``pid`` is still the process that started at ``started`` (clock ticks)."""
    return start_time(pid) == started


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), or 0.0 once it is gone."""
    return sum(user_system_seconds(pid))


def user_system_seconds(pid: int) -> tuple[float, float]:
    """utime and stime of one process (all its threads), or zeros once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def context_switches(pid: int) -> int:
    """Context switches, voluntary or not, of every live thread of one process; 0 once it is gone."""
    switches = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for name in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            switches += int(_field(f"{task}/status", name) or 0)
    return switches


def _field(path: str, name: str) -> str:
    """The value of ``name:`` in a /proc file of ``Name: value`` lines; "" if it or the file is gone."""
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split(":", 1)[1]
    return ""


def status_field(pid: int, name: str) -> str:
    """One field of /proc/PID/status (``NSpid``, ``VmRSS``...), unparsed; "" once the process is gone."""
    return _field(f"/proc/{pid}/status", name)


def _kib_bytes(value: str) -> int:
    return int(value.split()[0]) * 1024 if value.strip() else 0


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS), or 0 once the process is gone."""
    return _kib_bytes(status_field(pid, "VmRSS"))


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages (the interpreter, forked memory) split between sharers."""
    return _kib_bytes(_field(f"/proc/{pid}/smaps_rollup", "Pss"))


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s live children, from every thread's /proc children list."""
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


def all_pids() -> list[int]:
    """Every process on the machine (of this pid namespace), whoever started it."""
    return [int(entry.name) for entry in Path("/proc").glob("[0-9]*")]


def cmdline(pid: int) -> list[str]:
    """The process's argv; [] once it is gone."""
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
    """A process the harness started; :meth:`stop` ends it and every descendant, by PID.

    Its output (stdout and stderr) goes to ``log``, or with ``capture`` to a pipe that
    :meth:`output` reads, or nowhere.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        capture: bool = False,
        pass_fds: Sequence[int] = (),
        preexec_fn: Callable[[], object] | None = None,
        cwd: Path | None = None,
        session: bool = False,
    ) -> None:
        out: IO[bytes] | int = open(log, "ab") if log else subprocess.PIPE if capture else subprocess.DEVNULL
        self.popen: subprocess.Popen[Any] = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=tuple(pass_fds),
            preexec_fn=preexec_fn,
            cwd=cwd,
            start_new_session=session,
            text=capture,
        )
        if not isinstance(out, int):
            out.close()
        self.pid = self.popen.pid
        self.known: set[Proc] = set()
        STARTED.append(self)

    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self, timeout: float) -> str:
        """Wait up to ``timeout`` seconds for the process to end; what it printed (``capture``)."""
        out, _ = self.popen.communicate(timeout=timeout)
        return out or ""

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
