"""``fleetctl apply``: bring the running apps in line with ``/etc/fleet/apps``.

systemd makes an app's units from its config file when it reloads, but a
reload starts and stops nothing. ``apply`` reloads, then for each app: starts
a new one (socket, service, workers), starts or stops workers so their number
matches ``FLEET_WORKERS``, and stops an app whose file is gone (first,
while systemd still has its units as they were). Each app is
done on its own: one that fails is reported and the others carry on.
Changed settings reach running workers with ``fleetctl restart APP``.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat

from fleet import apps
from fleet.apps import App
from fleet.ctl import jobs, scale, systemctl
from fleet.ctl import state as fleet_state
from fleet.ctl.errors import CtlError
from fleet.ctl.jobs import StartFailed
from fleet.ctl.systemctl import SystemctlError

_APP_UNIT = re.compile(r"fleet-([a-z][a-z0-9-]*)\.(?:socket|service)")


def running_apps() -> set[str]:
    """The apps systemd has units of loaded (running, failed, or just known), by name."""
    out = systemctl.systemctl("list-units", "--all", "--plain", "--no-legend", "fleet-*.socket",
                              "fleet-*.service")  # fmt: skip
    names = set()
    for line in out.splitlines():
        fields = line.split()
        m = _APP_UNIT.fullmatch(fields[0]) if fields else None
        if m and not m.group(1).endswith("-worker") and "@" not in fields[0]:
            names.add(m.group(1))
    return names


def remove(name: str) -> None:
    """Stop every unit of an app whose config is gone, workers first (each drains its requests)."""
    app = App(name)
    listen = systemctl.show([app.socket], ["Listen"]).get(app.socket, {}).get("Listen", "")
    systemctl.stop([app.instances, app.service, app.socket])
    # NOTE: a socket whose file was reloaded away has lost its RemoveOnStop=.
    for path in fleet_state.listen_addresses(listen):
        if path.startswith("/"):
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)
    # NOTE: forget failed ones too, so nothing of the app lingers in systemctl's lists.
    try:
        systemctl.systemctl("reset-failed", app.instances, app.service, app.socket)
    except SystemctlError:
        pass


def bring_up(app: App) -> str:
    """Start an app's socket and service, and exactly its wanted workers; say what changed."""
    before = fleet_state.read(app)
    if before.problems:
        # NOTE: a config error or a missing user, as fleetctl status shows them.
        raise CtlError("; ".join(before.problems))
    systemctl.start([app.socket, app.service])
    state = fleet_state.read(app)
    p = scale.plan(state, len(state.enabled))
    jobs.start(app, p.start)
    for instance in p.stop:
        jobs.stop(app, [instance])
    if not before.running:
        return f"started, {len(state.enabled)} worker{'s' * (len(state.enabled) != 1)}"
    changes = [f"started {', '.join(p.start)}"] if p.start else []
    changes += [f"stopped {', '.join(p.stop)}"] if p.stop else []
    return "; ".join(changes) or "unchanged"


def run() -> int:
    """Stop removed apps, reload, then start or resize each app; 0 if every app is as configured."""
    failed = 0
    configured = apps.configured()
    # NOTE: removed apps are stopped before the reload, while systemd still has
    # their units as written (RemoveOnStop= of a UNIX socket, the drain on stop).
    for name in sorted(running_apps() - {a.name for a in configured}):
        print(f"{name}: its config is gone; stopping... ", end="", flush=True)
        try:
            remove(name)
        except SystemctlError as exc:
            failed += 1
            print(f"failed: {exc.detail}", flush=True)
            continue
        print("stopped", flush=True)
    print("reloading systemd (it makes the apps' units)... ", end="", flush=True)
    systemctl.daemon_reload()
    print("done", flush=True)
    for app in configured:
        print(f"{app.name}: ", end="", flush=True)
        try:
            print(bring_up(app), flush=True)
        except CtlError as exc:
            failed += 1
            print(f"failed: {exc}", flush=True)
        except StartFailed as exc:
            failed += 1
            why = "; ".join(f"{app.short(i)}: {r.removeprefix('failed: ')}" for i, r in exc.reasons.items())
            print(f"failed: {why}", flush=True)
        except SystemctlError as exc:
            failed += 1
            print(f"failed: {exc.detail}", flush=True)
    if not configured:
        print(f"no apps in {apps.APPS_DIR} (fleetctl new NAME ... writes one)")
    if failed:
        raise CtlError(f"{failed} app{'s' * (failed != 1)} not as configured (above)",
                       "fleetctl status shows every app")
    return 0
