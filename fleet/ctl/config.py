"""The worker settings fleetctl needs to know too, read from ``/etc/default/fleet``.

The workers read that file through ``EnvironmentFile=``; fleetctl reads the
same file the same way, so ``fleetctl drain`` creates exactly the file every
worker's health path checks.

    >>> parse_env_file('FLEET_DRAIN_FILE="/run/x"\\n#FLEET_THREADS=8\\n')
    {'FLEET_DRAIN_FILE': '/run/x'}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet.ctl.errors import CtlError
from fleet.settings import SETTINGS

DEFAULTS_FILE = Path("/etc/default/fleet")


def parse_env_file(text: str) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines as systemd's ``EnvironmentFile=`` does, for the simple cases.

    Comment lines (``#``, ``;``), blank lines, an ``export`` prefix and quotes
    around the whole value are handled; line continuations are not (fleet's own
    file has none). As in systemd, a ``#`` after a value is part of the value.
    """
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.isidentifier():
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def read_defaults(path: Path = DEFAULTS_FILE) -> dict[str, str]:
    """The values set in ``path``; an absent or unreadable file sets nothing."""
    try:
        return parse_env_file(path.read_text())
    except (OSError, UnicodeDecodeError):
        return {}


def setting(env: str, values: dict[str, str], source: Path = DEFAULTS_FILE) -> Any:
    """A setting's value as the worker sees it: parsed from ``values``, else the table's default.

    NOTE: as in ``Settings.from_env``, an empty value means the default, so the
    same file gives fleetctl and the workers the same answer.
    """
    row = next(s for s in SETTINGS if s.env == env)
    raw = values.get(env, "")
    try:
        return row.parse(raw if raw.strip() else row.default)
    except ValueError as exc:
        raise CtlError(
            f"{env} in {source} must be {exc}, got {raw!r}; fix it there "
            "(the workers cannot start with it either)",
        ) from None


def drain_file(path: Path = DEFAULTS_FILE) -> str:
    """Where the drain file lives (``FLEET_DRAIN_FILE``); empty when it is ``off``."""
    value: str = setting("FLEET_DRAIN_FILE", read_defaults(path), path)
    return value


def health_path(path: Path = DEFAULTS_FILE) -> str:
    """The path each worker answers for health checks (``FLEET_HEALTH_PATH``); empty when ``off``."""
    value: str = setting("FLEET_HEALTH_PATH", read_defaults(path), path)
    return value
