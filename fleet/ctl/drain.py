"""``fleetctl drain`` / ``undrain``: take this host out of its load balancer's rotation, and back.

While the drain file exists, every worker's health path answers 503 (the
worker stats it on each health request) while real requests are still
served, so the balancer moves traffic away before maintenance. The file
is the whole state: it survives worker restarts, and needs no signal.
"""

from __future__ import annotations

import os
from pathlib import Path

from fleet.ctl import config
from fleet.ctl.errors import CtlError


def drain(defaults: Path = config.DEFAULTS_FILE) -> int:
    """Create the drain file (and its directory, 0755); say whether it already existed."""
    where = config.drain_file(defaults)
    if not where:
        raise CtlError(
            f"draining is off: FLEET_DRAIN_FILE is 'off' in {defaults}; "
            "set it to a path (the default is /run/fleet/drain), then: sudo fleetctl restart",
        )
    path = Path(where)
    health = config.health_path(defaults)
    if path.exists():
        print(f"already drained ({path} exists); nothing changed")
        return 0
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True)
            # NOTE: 0755 whatever the umask, so the workers (a DynamicUser=, not
            # root) can look inside: a stat is all the health check does.
            path.parent.chmod(0o755)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"drained by fleetctl drain; fleetctl undrain removes this file\n")
        os.close(fd)
    except OSError as exc:
        raise CtlError(
            f"cannot create the drain file {path}: {exc.strerror}; "
            "set FLEET_DRAIN_FILE in /etc/default/fleet to a path root can write",
        ) from None
    if not health:
        print(f"drained: created {path}; but FLEET_HEALTH_PATH is off, so no health check "
              "reports it")  # fmt: skip
        return 0
    print(f"drained: created {path}; every worker's {health} now answers 503, "
          "requests are still served")  # fmt: skip
    return 0


def undrain(defaults: Path = config.DEFAULTS_FILE) -> int:
    """Remove the drain file; say whether there was one."""
    where = config.drain_file(defaults)
    if not where:
        print(f"not drained (FLEET_DRAIN_FILE is 'off' in {defaults}); nothing changed")
        return 0
    path = Path(where)
    try:
        path.unlink()
    except FileNotFoundError:
        print(f"not drained ({path} does not exist); nothing changed")
        return 0
    except OSError as exc:
        raise CtlError(f"cannot remove the drain file {path}: {exc.strerror}; remove it by hand") from None
    health = config.health_path(defaults) or "health path (off)"
    print(f"undrained: removed {path}; every worker's {health} answers 200 again")
    return 0
