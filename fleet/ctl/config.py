"""The worker settings fleetctl needs to know too, read from the app's own config file.

The workers read that file (``/etc/default/fleet``, or ``/etc/fleet/apps/NAME.conf``)
through ``EnvironmentFile=``; fleetctl reads the same file the same way, so
``fleetctl drain`` creates exactly the file every worker's health path checks.
"""

from __future__ import annotations

from typing import Any

from fleet.apps import App
from fleet.ctl.errors import CtlError
from fleet.envfile import parse_env_file, read_env_file
from fleet.settings import SETTINGS

__all__ = ["drain_file", "health_path", "parse_env_file", "read_values", "setting"]


def read_values(app: App) -> dict[str, str]:
    """The values set in the app's file; an absent or unreadable file sets nothing."""
    try:
        return read_env_file(app.config)
    except (OSError, UnicodeDecodeError):
        return {}


def setting(env: str, values: dict[str, str], app: App, default: str | None = None) -> Any:
    """A setting's value as the app's workers see it: parsed from ``values``, else its default.

    NOTE: as in ``Settings.from_env``, an empty value means the default, so the
    same file gives fleetctl and the workers the same answer. ``default``
    stands for what the app's units set (an app's own drain file).
    """
    row = next(s for s in SETTINGS if s.env == env)
    raw = values.get(env, "")
    try:
        return row.parse(raw if raw.strip() else (default if default is not None else row.default))
    except ValueError as exc:
        raise CtlError(
            f"{env} in {app.config} must be {exc}, got {raw!r}; fix it there "
            "(the workers cannot start with it either)",
        ) from None


def drain_file(app: App) -> str:
    """Where the app's drain file lives (``FLEET_DRAIN_FILE``); empty when it is ``off``."""
    value: str = setting("FLEET_DRAIN_FILE", read_values(app), app, app.drain_default)
    return value


def health_path(app: App) -> str:
    """The path each of the app's workers answers for health checks; empty when ``off``."""
    value: str = setting("FLEET_HEALTH_PATH", read_values(app), app)
    return value
