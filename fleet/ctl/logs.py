"""``fleetctl logs [-f] [-n N] [APP] [INSTANCE]``: an app's workers' journal, shown by journalctl itself.

fleetctl execs journalctl rather than piping it, so its pager, ``-f`` and
Ctrl-C behave exactly as journalctl's own.
"""

from __future__ import annotations

import re

from fleet.apps import App
from fleet.ctl import systemctl
from fleet.ctl.errors import CtlError, UsageError


def parse_instance(text: str) -> str:
    """Accept ``3``, ``fleet-worker@3`` or ``fleet-worker@3.service`` (any app's); return ``"3"``.

    >>> parse_instance("fleet-worker@3.service"), parse_instance("fleet-shop-worker@2")
    ('3', '2')
    """
    m = re.fullmatch(r"(?:fleet(?:-[a-z0-9-]+)?-worker@)?([0-9]+)(?:\.service)?", text.strip())
    if not m or int(m.group(1)) < 1:
        raise UsageError(
            f"logs takes a worker's number such as 3 (or fleet-worker@3), got {text!r}",
            "fleetctl status lists the workers; fleetctl logs with no number shows them all",
        )
    return str(int(m.group(1)))


def parse_lines(text: str) -> int:
    """``-n`` takes a whole number of lines."""
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise UsageError(f"-n needs a whole number of lines, got {text!r}", "fleetctl logs -n 50")
    return int(text)


def run(instance: str | None, lines: int | None, follow: bool, app: App | None = None) -> int:
    """Exec journalctl for one worker or all of an app's; returns only if it cannot be run."""
    app = app or App.default()
    unit = app.unit(instance) if instance else app.instances
    try:
        systemctl.exec_journalctl([unit], lines, follow)
    except OSError as exc:
        raise CtlError(
            f"cannot run journalctl: {exc.strerror}; it comes with systemd, so reinstall systemd",
        ) from None
