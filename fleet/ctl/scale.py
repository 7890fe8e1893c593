"""``fleetctl scale [APP] N|auto|+K|-K``: make exactly workers 1..N enabled, and running if the app is.

For the default app, enabled means a symlink in ``fleet.service.wants``
(``systemctl enable``); for another app, ``FLEET_WORKERS=N`` in its config
file, from which its generator makes those links at each daemon-reload. Either
way the size survives reboots; running means started now, when the app's
service is up. Like circus, a scale reports what it changed (started, stopped, kept) and
changes nothing when the fleet already has that size.

Nothing is left half-changed: every step is recorded before it runs, and if
one fails (or Ctrl-C comes) the recorded steps are undone in reverse order,
so the fleet goes back to exactly how it was.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleet import cpus
from fleet.apps import App
from fleet.ctl import config, jobs, systemctl
from fleet.ctl import state as fleet_state
from fleet.ctl.errors import CtlError, UsageError, command
from fleet.ctl.jobs import StartFailed
from fleet.ctl.state import FleetState, sort_key
from fleet.ctl.systemctl import SystemctlError
from fleet.envfile import set_value

CAP_PER_CPU = 4
FORMS = "a positive whole number, 'auto', +K or -K"


@dataclass(frozen=True)
class Target:
    """What was asked: an absolute size, ``auto``, or a change relative to the current size."""

    text: str
    kind: str  # "absolute", "auto" or "relative"
    value: int = 0

    def size(self, current: int, usable: int) -> int:
        if self.kind == "auto":
            return usable
        return current + self.value if self.kind == "relative" else self.value


def parse_target(text: str) -> Target:
    """Parse ``N``, ``auto``, ``+K`` or ``-K``; raise UsageError naming the value otherwise.

    >>> parse_target("+2"), parse_target("auto").kind
    (Target(text='+2', kind='relative', value=2), 'auto')
    """
    word = text.strip()
    if word.lower() == "auto":
        return Target(text, "auto")
    m = re.fullmatch(r"([+-]?)([0-9]+)", word)
    if m and m.group(1):
        return Target(text, "relative", int(m.group(2)) * (1 if m.group(1) == "+" else -1))
    if m and int(m.group(2)) >= 1:
        return Target(text, "absolute", int(m.group(2)))
    hint = f"fleetctl scale auto runs one worker per usable CPU ({cpus.usable_count()} here)"
    if m:
        hint = "a fleet has at least 1 worker; to stop them all: sudo systemctl stop fleet"
    raise UsageError(f"scale needs {FORMS}, got {text!r}", hint)


@dataclass(frozen=True)
class Plan:
    """The steps from the current state to fleet-worker@1..size; lists of instance names."""

    size: int
    before: int
    running: bool
    name: str = "fleet"
    enable: list[str] = field(default_factory=list)
    start: list[str] = field(default_factory=list)
    disable: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # highest first
    kept: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.enable or self.start or self.disable or self.stop)

    def to_json(self) -> dict[str, Any]:
        """The ``scale --json`` object: circus's started/stopped/kept, plus the symlink changes."""
        return {
            "size": self.size, "before": self.before, "running": self.running,
            "changed": self.changed, "started": _ints(self.start), "stopped": _ints(self.stop),
            "kept": _ints(self.kept), "enabled": _ints(self.enable), "disabled": _ints(self.disable),
        }  # fmt: skip


def _ints(instances: list[str]) -> list[int | str]:
    return [int(i) if i.isdigit() else i for i in instances]


def plan(state: FleetState, size: int) -> Plan:
    """Decide what to enable, start, disable and stop; pure, so it is tested from plain states.

    Instances outside 1..size (fleet-worker@7 enabled by hand, or a
    non-numeric one) are surplus like any other: disabled, and stopped.
    Nothing is started while the fleet is not running.
    """
    target = [str(n) for n in range(1, size + 1)]
    enabled = set(state.enabled)
    running = set(state.running_instances)
    known = sorted(enabled | running, key=sort_key)
    enable = [i for i in target if i not in enabled]
    start = [i for i in target if i not in running] if state.running else []
    disable = [i for i in known if i in enabled and i not in target]
    stop = sorted((i for i in known if i in running and i not in target), key=sort_key, reverse=True)
    kept = [i for i in target if i not in enable and i not in start]
    name = "fleet" if state.app.is_default else state.app.name
    return Plan(size, len(enabled), state.running, name, enable, start, disable, stop, kept)


def _list(instances: list[str]) -> str:
    return ", ".join(instances)


def format_change(p: Plan) -> str:
    """Render a scale's report, one ``key: ids`` line per non-empty list."""
    if not p.changed:
        workers = f"worker{'s' * (p.size != 1)}"
        return f"{p.name} already has {p.size} {workers} ({_list(p.kept)}); nothing changed\n"
    head = f"scaled {p.name} from {p.before} to {p.size} worker{'s' * (p.size != 1)}"
    if not p.running:
        service = "fleet" if p.name == "fleet" else f"fleet-{p.name}"
        head += f" (not running now: they start with it, systemctl start {service})"
    lines = [head]
    for key, ids in (("started", p.start), ("stopped", p.stop), ("enabled", p.enable),
                     ("disabled", p.disable), ("kept", p.kept)):  # fmt: skip
        if ids:
            lines.append(f"{key}: {_list(ids)}")
    return "\n".join(lines) + "\n"


_PAST = {"enable": "disabled", "start": "stopped", "disable": "enabled", "stop": "started",
         "configure": "restored the config of"}
_UNDOING = {"enable": "disabling", "start": "stopping", "disable": "enabling", "stop": "starting",
            "configure": "restoring the config of"}


class Resize:
    """The enabled set of a generated app: ``FLEET_WORKERS`` in its config, then a daemon-reload.

    NOTE: systemctl cannot enable units a generator made, so the config file is
    the one place the size is kept; the generator turns it into links.
    """

    def __init__(self, app: App, target: Target) -> None:
        self.app = app
        self.value = "auto" if target.kind == "auto" else ""
        self.before: str | None = None

    def apply(self, size: int) -> None:
        self.before = self.app.config.read_text()
        self._write(set_value(self.before, "FLEET_WORKERS", self.value or str(size)))

    def undo(self) -> None:
        if self.before is not None:
            self._write(self.before)

    def _write(self, text: str) -> None:
        path = self.app.config
        tmp = path.with_name(f".{path.name}.fleetctl")
        tmp.write_text(text)
        tmp.chmod(path.stat().st_mode & 0o7777)
        tmp.replace(path)
        systemctl.daemon_reload()


def execute(p: Plan, app: App | None = None, resize: Resize | None = None) -> None:
    """Carry out a plan: add capacity first, then remove; undo everything on failure.

    NOTE: the symlinks change before the units do, so a fleetctl killed midway
    leaves the wanted size on disk, and the next scale (or a reboot) finishes.
    Stops go one at a time, highest id first: each worker drains its requests,
    and an interruption still leaves 1..k running.
    """
    app = app or App.default()
    undo: dict[str, Callable[[list[str]], None]] = {
        "enable": lambda ids: systemctl.disable([app.unit(i) for i in ids]),
        "start": functools.partial(jobs.stop, app),
        "disable": lambda ids: systemctl.enable([app.unit(i) for i in ids]),
        "stop": functools.partial(jobs.start, app),
        "configure": lambda ids: resize.undo() if resize else None,
    }
    steps: list[tuple[str, list[str], Callable[[], None]]]
    if resize is None:
        steps = [
            ("enable", p.enable, lambda: systemctl.enable([app.unit(i) for i in p.enable])),
            ("start", p.start, lambda: jobs.start(app, p.start)),
            ("disable", p.disable, lambda: systemctl.disable([app.unit(i) for i in p.disable])),
        ]
    else:
        steps = [
            ("configure", [app.name] if p.enable or p.disable else [], lambda: resize.apply(p.size)),
            ("start", p.start, lambda: jobs.start(app, p.start)),
        ]
    for instance in p.stop:
        steps.append(("stop", [instance], functools.partial(jobs.stop, app, [instance])))
    done: list[tuple[str, list[str]]] = []
    try:
        for action, ids, run in steps:
            if ids:
                # NOTE: recorded before it runs: a step that fails halfway
                # (2 of 3 started) is undone whole, and every undo is idempotent.
                done.append((action, ids))
                run()
    except (StartFailed, SystemctlError, OSError, KeyboardInterrupt) as exc:
        undone = _undo(done, undo)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise _failure(app, exc, done, undone) from None


def _undo(done: list[tuple[str, list[str]]], undo: dict[str, Callable[[list[str]], None]]) -> str | None:
    """Undo recorded steps, newest first; return why undoing failed, or None if it all worked."""
    for action, ids in reversed(done):
        try:
            undo[action](ids)
        except (StartFailed, SystemctlError, OSError) as exc:
            detail = exc.detail if isinstance(exc, SystemctlError) else str(exc)
            return f"{_UNDOING[action]} {_list(ids)} again failed ({detail})"
    return None


def _failure(app: App, exc: Exception, done: list[tuple[str, list[str]]], undo_error: str | None) -> CtlError:
    action, ids = done[-1]
    if isinstance(exc, StartFailed):
        what = "; ".join(
            f"{app.short(i)} failed to start: {r.removeprefix('failed: ')}"
            for i, r in exc.reasons.items()
        )
        first = next(iter(exc.reasons))
        hint = f"{command(app, 'logs', first)} shows its journal"
    else:
        detail = exc.detail if isinstance(exc, SystemctlError) else str(exc)
        what = f"{action} {_list(ids)} failed: {detail}"
        hint = f"{command(app, 'status')} shows every worker"
    if undo_error:
        return CtlError(f"{what}; undoing this scale failed too: {undo_error}", hint)
    reverted = " and ".join(f"{_PAST[a]} {_list(i)}" for a, i in reversed(done))
    return CtlError(f"{what}; undone, so nothing changed: {reverted} again", hint)


def run(target: Target, force: bool, as_json: bool, app: App | None = None) -> int:
    """Scale an app to the size ``target`` asks for; print what changed."""
    app = app or App.default()
    text = target.text
    state = fleet_state.read(app)
    usable = cpus.usable_count()
    current = len(state.enabled)
    size = target.size(current, usable)
    if size < 1:
        raise UsageError(
            f"scale {text} would leave fewer than 1 worker (there are {current}); "
            "a fleet needs at least 1",
            f"to stop every worker: sudo systemctl stop {app.service}",
        )
    cap = CAP_PER_CPU * usable
    if size > cap and not force:
        raise UsageError(
            f"scale to {size} workers is over {CAP_PER_CPU} per usable CPU ({cap} on this "
            f"machine's {usable}); nothing changed",
            f"if that many is really meant: {command(app, 'scale', text)} --force",
        )
    p = plan(state, size)
    resize = None if app.is_default else Resize(app, target)
    if p.changed:
        execute(p, app, resize)
    elif resize and resize.value and config.read_values(app).get("FLEET_WORKERS", "auto") != "auto":
        # NOTE: the same size, but asked as auto: kept as auto, so it follows the CPUs.
        resize.apply(size)
    print(json.dumps(p.to_json()) if as_json else format_change(p), end="\n" if as_json else "")
    return 0
