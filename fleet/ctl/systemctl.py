"""The one place fleetctl talks to systemd: ``systemctl`` and ``journalctl``, run with argument lists.

Everything else in ``fleet.ctl`` asks this module and gets parsed values
back, so the boundary (and what it costs: one process per call) stays in
sight. Calls never go through a shell, never page and never ask for a
password: fleetctl also runs under systemd itself (``ExecReload=`` of
``fleet.service``), with no terminal at all.

    >>> parse_show("Id=a.service\\nMainPID=7\\n\\nId=b.service\\n")
    [{'Id': 'a.service', 'MainPID': '7'}, {'Id': 'b.service'}]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

SYSTEMCTL = "systemctl"
JOURNALCTL = "journalctl"
# NOTE: sd_booted(3) checks exactly this directory: it exists only when systemd is PID 1.
BOOTED_DIR = Path("/run/systemd/system")

class SystemctlError(Exception):
    """A systemctl call failed; ``detail`` is what it said, for the error message."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{' '.join(self.argv)} exited {returncode}: {self.detail}")

    @property
    def detail(self) -> str:
        """systemctl's own complaint, without its advice lines ("See ..."), on one line."""
        # NOTE: indented lines continue a warning ("... can still be activated by:").
        lines = [
            line.strip()
            for line in self.stderr.splitlines()
            if line.strip() and not line.startswith(("See ", "Warning:", " "))
        ]
        return " ".join(lines) or f"exit status {self.returncode}"

    def failed_units(self) -> list[str]:
        """The units whose jobs failed, as systemctl names them ("Job for X failed ...")."""
        return re.findall(r"Job for (\S+) failed", self.stderr)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # NOTE: output is parsed, so no colours, no pager and no translated words.
    env.update(SYSTEMD_COLORS="0", SYSTEMD_PAGER="", LC_ALL="C.UTF-8")
    return env


def _argv(args: Iterable[str]) -> list[str]:
    return [SYSTEMCTL, "--no-pager", "--no-ask-password", *args]


def systemctl(*args: str) -> str:
    """Run ``systemctl ARGS``, wait for it, return its stdout; raise SystemctlError on failure."""
    argv = _argv(args)
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_env()
        )
    except FileNotFoundError:
        raise SystemctlError(argv, 127, "systemctl is not installed") from None
    if proc.returncode != 0:
        raise SystemctlError(argv, proc.returncode, proc.stderr)
    return proc.stdout


class Call:
    """A systemctl call left running, so the caller can watch the units while it waits.

    ``systemctl start`` of a ``Type=notify`` unit returns only once the
    worker has sent ``READY=1`` (or failed); meanwhile the caller polls
    ``show`` for the worker's own account of a failure (``STATUS=failed: ...``).
    """

    def __init__(self, *args: str) -> None:
        self.argv = _argv(args)
        try:
            self._proc: subprocess.Popen[str] | None = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True, env=_env(),
            )  # fmt: skip
        except FileNotFoundError:
            self._proc = None

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; tell whether the call has finished."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def result(self) -> None:
        """Wait for the call to finish; raise SystemctlError if it failed."""
        if self._proc is None:
            raise SystemctlError(self.argv, 127, "systemctl is not installed")
        _, stderr = self._proc.communicate()
        if self._proc.returncode != 0:
            raise SystemctlError(self.argv, self._proc.returncode, stderr)

    def abandon(self) -> None:
        """Stop waiting: end the systemctl client (systemd's job itself carries on)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.communicate()


def parse_show(text: str) -> list[dict[str, str]]:
    """Split ``systemctl show`` output into one dict per unit.

    A property listed more than once (``Listen=`` of a socket with several
    addresses) keeps every value, one per line.
    """
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        current[key] = f"{current[key]}\n{value}" if key in current else value
    if current:
        blocks.append(current)
    return blocks


def show(units: Sequence[str], properties: Sequence[str]) -> dict[str, dict[str, str]]:
    """Read ``properties`` of several units (globs allowed) in one call, keyed by unit name."""
    if not units:
        return {}
    props = ",".join(dict.fromkeys(["Id", *properties]))
    out = systemctl("show", f"--property={props}", "--", *units)
    return {block["Id"]: block for block in parse_show(out) if block.get("Id")}


def enable(units: Sequence[str]) -> None:
    """Make units start with their ``WantedBy=`` (instances: the app's service), after reboots too."""
    if units:
        systemctl("enable", "--", *units)


def disable(units: Sequence[str]) -> None:
    if units:
        systemctl("disable", "--", *units)


def daemon_reload() -> None:
    """Have systemd read the unit files again, and run the generators (apps' units) again."""
    systemctl("daemon-reload")


def start(units: Sequence[str]) -> None:
    """Start units and wait for their jobs (sockets, services: not the workers, see jobs)."""
    if units:
        systemctl("start", "--", *units)


def stop(units: Sequence[str]) -> None:
    """Stop units and wait until they have (a worker drains its requests first)."""
    if units:
        systemctl("stop", "--", *units)


def start_call(units: Sequence[str]) -> Call:
    return Call("start", "--", *units)


def restart_call(unit: str) -> Call:
    return Call("restart", "--", unit)


def missing_units(units: Sequence[str]) -> list[str]:
    """Which of ``units`` systemd has no unit file for (``systemctl cat`` finds none)."""
    try:
        systemctl("cat", "--", *units)
    except SystemctlError as exc:
        if exc.returncode == 127:
            raise
        named = re.findall(r"No files found for (\S+?)\.?$", exc.stderr, re.M)
        if not named:
            raise  # NOTE: another complaint (no bus, say): not a missing unit
        return [u for u in units if u in named]
    return []


def booted() -> bool:
    """Tell whether systemd is this machine's init, as sd_booted(3) does."""
    return BOOTED_DIR.is_dir()


def pid1_name() -> str:
    """The name of the process running as PID 1 (for telling people what runs instead)."""
    try:
        return Path("/proc/1/comm").read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def last_error(unit: str, since: float) -> str | None:
    """The unit's last error-priority journal line since the epoch time ``since``, or None.

    The worker's own lines (its SyslogIdentifier= is the unit's name) come first:
    systemd 257 adds an error line of its own ("Failed to start ...") after them.
    """
    identifier = unit.removesuffix(".service")
    for only_worker in (True, False):
        argv = [JOURNALCTL, "--no-pager", "--quiet", "--unit", unit, "--priority", "err",
                "--lines", "1", "--output", "cat", "--since", f"@{int(since)}"]  # fmt: skip
        if only_worker:
            argv += ["--identifier", identifier]
        try:
            proc = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_env(), timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode == 0 and lines:
            return without_worker_prefix(lines[-1])
    return None


def without_worker_prefix(line: str) -> str:
    """A worker's journal line without its ``worker N:`` prefix: the unit name says that already.

    >>> without_worker_prefix("worker 4: cannot import WSGI app 'x:y'")
    "cannot import WSGI app 'x:y'"
    >>> without_worker_prefix("Main process exited, code=killed")
    'Main process exited, code=killed'
    """
    return re.sub(r"^worker [^\s:]+: ", "", line, count=1)


def exec_journalctl(units: Sequence[str], lines: int | None, follow: bool) -> NoReturn:
    """Replace this process with journalctl, so paging, ``-f`` and Ctrl-C behave as its own."""
    argv = [JOURNALCTL]
    for unit in units:
        argv += ["--unit", unit]
    if lines is not None:
        argv += ["--lines", str(lines)]
    if follow:
        argv.append("--follow")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)
