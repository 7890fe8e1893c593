"""What must hold before a verb runs, checked in a fixed order, each failure one clear error.

The order (docs/fleetctl.md, "Preconditions"):

1. the command line parses (exit 2) - checked by the parser, before this;
2. root, for the verbs that change something (scale, restart, drain, undrain);
3. systemd is PID 1 (``/run/systemd/system`` exists, as sd_booted(3) checks);
4. the app's units are installed (``systemctl cat`` finds all three): the
   package's for the default app, its generator's for another one.

NOTE: root comes before systemd because it depends only on how fleetctl was
called, not on the machine: the fix it asks for (sudo) is right on any
machine, and both errors can be shown for real on a box without systemd
(run as an unprivileged user, then as root).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

from fleet.apps import App, AppConfig, AppError
from fleet.ctl import systemctl as systemd
from fleet.ctl.errors import CtlError
from fleet.ctl.systemctl import SystemctlError

CHANGING = frozenset({"scale", "restart", "drain", "undrain", "apply", "new"})
# The verbs that need no systemd: they only read or write files.
OFFLINE = frozenset({"new", "apps"})


def check(verb: str, argv: Sequence[str], app: App | None = None) -> None:
    """Raise CtlError for the first precondition of ``verb`` that does not hold."""
    if verb in CHANGING and os.geteuid() != 0:
        raise CtlError(
            f"fleetctl {verb} needs root; run: {shlex.join(['sudo', 'fleetctl', *argv])}",
        )
    if verb in OFFLINE:
        return
    if not systemd.booted():
        raise CtlError(
            f"systemd is not running on this machine (PID 1 is {systemd.pid1_name()}); "
            "fleet needs it to supervise workers",
            "on a dev box, `make try` boots a throwaway container with systemd and fleet installed",
        )
    app = app or App.default()
    try:
        missing = systemd.missing_units(app.units)
    except SystemctlError as exc:
        raise CtlError(
            f"cannot ask systemd about fleet's units: {exc.detail}; check that systemd is running",
        ) from None
    if missing and not app.is_default:
        try:
            AppConfig.read(app)
        except AppError as exc:
            raise CtlError(f"app {app.name} has no units: {exc}", "then: sudo fleetctl apply") from None
        raise CtlError(
            f"app {app.name}'s units are not made yet (no {', '.join(missing)}): "
            f"systemd makes them from {app.config} when it reloads",
            "sudo fleetctl apply",
        )
    if missing:
        raise CtlError(
            f"fleet's systemd units are not installed (no {', '.join(missing)}); "
            "install the fleet package",
            "apt install ./fleet_*.deb (make deb builds it)",
        )
