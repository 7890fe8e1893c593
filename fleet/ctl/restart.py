"""``fleetctl restart``: restart the workers one at a time, each only once the last is ready.

The others keep serving on the shared socket meanwhile, so a rolling restart
(new settings, a new release of the app) drops no request. It is also
``fleet.service``'s ``ExecReload=``: ``systemctl reload fleet`` runs it under
systemd, with no terminal, while fleet.service is "reloading".
"""

from __future__ import annotations

import sys

from fleet.ctl import jobs, systemd
from fleet.ctl import state as fleet_state
from fleet.ctl.errors import CtlError
from fleet.ctl.jobs import StartFailed
from fleet.ctl.state import FleetState, sort_key


def instances_to_restart(state: FleetState) -> list[str]:
    """Every instance that is enabled or up, lowest id first."""
    return sorted(set(state.enabled) | set(state.running_instances), key=sort_key)


def run() -> int:
    """Roll through the workers; 0 when all came back (or the fleet is not running), else 1."""
    state = fleet_state.read()
    if not state.running:
        # NOTE: 0, not an error: the package's postinst calls this on every
        # upgrade, and a fleet that is not running has nothing to restart.
        print(f"the fleet is not running ({systemd.SERVICE} is {state.service_state}); "
              "nothing to restart")  # fmt: skip
        return 0
    todo = instances_to_restart(state)
    if not todo:
        print("the fleet has no workers; nothing to restart (fleetctl scale auto adds them)")
        return 0
    for n, instance in enumerate(todo, 1):
        name = systemd.short_name(instance)
        print(f"restarting {name} ({n}/{len(todo)})... ", end="", flush=True)
        try:
            seconds = jobs.restart(instance)
        except StartFailed as exc:
            print("failed", flush=True)
            rest = todo[n:]
            left = f"; {', '.join(rest)} not restarted" if rest else ""
            raise CtlError(
                f"{name} did not come back: {exc.reasons.get(instance, str(exc)).removeprefix('failed: ')}; "
                f"stopped the rolling restart{left}",
                f"fleetctl logs {instance} shows why; systemd keeps retrying it",
            ) from None
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            print(f"fleetctl: {name}'s restart goes on in systemd; "
                  f"{', '.join(todo[n:]) or 'no others'} not restarted", file=sys.stderr)  # fmt: skip
            raise
        print(f"ready in {seconds:.1f}s", flush=True)
    print(f"restarted {len(todo)} worker{'s' * (len(todo) != 1)}, one at a time")
    return 0
