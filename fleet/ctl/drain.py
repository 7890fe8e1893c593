"""``fleetctl drain`` / ``undrain``: take this host out of its load balancer's rotation, and back.

While the drain file exists, every worker's health path answers 503 (the
worker stats it on each health request) while real requests are still
served, so the balancer moves traffic away before maintenance. The file
is the whole state: it survives worker restarts, and needs no signal.
"""

from __future__ import annotations

import os
from pathlib import Path

from fleet.apps import App
from fleet.ctl import config
from fleet.ctl.errors import CtlError, command


def drain(app: App | None = None) -> int:
    """Create the app's drain file (and its directories, 0755); say whether it already existed."""
    app = app or App.default()
    where = config.drain_file(app)
    if not where:
        raise CtlError(
            f"draining is off: FLEET_DRAIN_FILE is 'off' in {app.config}; "
            f"set it to a path (the default is {app.drain_default}), then: sudo {command(app, 'restart')}",
        )
    path = Path(where)
    health = config.health_path(app)
    if path.exists():
        print(f"already drained ({path} exists); nothing changed")
        return 0
    try:
        missing = [d for d in (path.parent, *path.parent.parents) if not d.is_dir()]
        for directory in reversed(missing):
            directory.mkdir()
            # NOTE: 0755 whatever the umask, so the workers (a DynamicUser=, not
            # root) can look inside: a stat is all the health check does.
            directory.chmod(0o755)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"drained by fleetctl drain; fleetctl undrain removes this file\n")
        os.close(fd)
    except OSError as exc:
        raise CtlError(
            f"cannot create the drain file {path}: {exc.strerror}; "
            f"set FLEET_DRAIN_FILE in {app.config} to a path root can write",
        ) from None
    if not health:
        print(f"drained: created {path}; but FLEET_HEALTH_PATH is off, so no health check "
              "reports it")  # fmt: skip
        return 0
    whose = "every worker's" if app.is_default else f"every {app.name} worker's"
    print(f"drained: created {path}; {whose} {health} now answers 503, "
          "requests are still served")  # fmt: skip
    return 0


def undrain(app: App | None = None) -> int:
    """Remove the app's drain file; say whether there was one."""
    app = app or App.default()
    where = config.drain_file(app)
    if not where:
        print(f"not drained (FLEET_DRAIN_FILE is 'off' in {app.config}); nothing changed")
        return 0
    path = Path(where)
    try:
        path.unlink()
    except FileNotFoundError:
        print(f"not drained ({path} does not exist); nothing changed")
        return 0
    except OSError as exc:
        raise CtlError(f"cannot remove the drain file {path}: {exc.strerror}; remove it by hand") from None
    health = config.health_path(app) or "health path (off)"
    whose = "every worker's" if app.is_default else f"every {app.name} worker's"
    print(f"undrained: removed {path}; {whose} {health} answers 200 again")
    return 0
