"""``fleetctl restart``: restart the workers one at a time, each only once the last is ready.

The others keep serving on the shared socket meanwhile, so a rolling restart
(new settings, a new release of the app) drops no request. It is also
``fleet.service``'s ``ExecReload=``: ``systemctl reload fleet`` runs it under
systemd, with no terminal, while fleet.service is "reloading".
"""

from __future__ import annotations

import sys

from fleet.apps import App
from fleet.ctl import jobs
from fleet.ctl import state as fleet_state
from fleet.ctl.errors import CtlError, command
from fleet.ctl.jobs import StartFailed
from fleet.ctl.state import FleetState, sort_key


def instances_to_restart(state: FleetState) -> list[str]:
    """Every instance that is enabled or up, lowest id first."""
    return sorted(set(state.enabled) | set(state.running_instances), key=sort_key)


def run(app: App | None = None) -> int:
    """Roll through an app's workers; 0 when all came back (or it is not running), else 1."""
    app = app or App.default()
    state = fleet_state.read(app)
    what = "the fleet" if app.is_default else f"app {app.name}"
    if not state.running:
        # NOTE: 0, not an error: the package's postinst calls this on every
        # upgrade, and a fleet that is not running has nothing to restart.
        print(f"{what} is not running ({app.service} is {state.service_state}); "
              "nothing to restart")  # fmt: skip
        return 0
    todo = instances_to_restart(state)
    if not todo:
        print(f"{what} has no workers; nothing to restart ({command(app, 'scale', 'auto')} adds them)")
        return 0
    for n, instance in enumerate(todo, 1):
        name = app.short(instance)
        print(f"restarting {name} ({n}/{len(todo)})... ", end="", flush=True)
        try:
            seconds = jobs.restart(app, instance)
        except StartFailed as exc:
            print("failed", flush=True)
            rest = todo[n:]
            left = f"; {', '.join(rest)} not restarted" if rest else ""
            raise CtlError(
                f"{name} did not come back: {exc.reasons.get(instance, str(exc)).removeprefix('failed: ')}; "
                f"stopped the rolling restart{left}",
                f"{command(app, 'logs', instance)} shows why; systemd keeps retrying it",
            ) from None
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            print(f"fleetctl: {name}'s restart goes on in systemd; "
                  f"{', '.join(todo[n:]) or 'no others'} not restarted", file=sys.stderr)  # fmt: skip
            raise
        print(f"ready in {seconds:.1f}s", flush=True)
    print(f"restarted {len(todo)} worker{'s' * (len(todo) != 1)}, one at a time")
    return 0
