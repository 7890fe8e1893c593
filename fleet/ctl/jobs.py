"""Start and restart workers, waiting until each is ready, and learn why one was not.

A worker is ``Type=notify``: ``systemctl start`` returns once it has sent
``READY=1``, or fails as soon as the worker exits first (systemd 252 fails
the job on the first exit even though ``Restart=always`` will try again).
The worker's own reason is its last ``STATUS=failed: ...``, which systemd
forgets when the next attempt starts; so while systemctl waits, the units
are polled and the last such status kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from fleet.apps import App
from fleet.ctl import systemctl
from fleet.ctl.systemctl import Call, SystemctlError

POLL_SECONDS = 0.25


class StartFailed(Exception):
    """Some instances did not come up; ``reasons`` maps each to the best explanation found."""

    def __init__(self, app: App, reasons: dict[str, str]) -> None:
        self.app = app
        self.reasons = reasons
        super().__init__("; ".join(f"{app.short(i)}: {r}" for i, r in reasons.items()))


def _wait(app: App, call: Call, instances: Sequence[str], since: float) -> None:
    units = [app.unit(i) for i in instances]
    statuses: dict[str, str] = {}
    try:
        while not call.wait(POLL_SECONDS):
            try:
                shown = systemctl.show(units, ["StatusText"])
            except SystemctlError:
                continue
            for unit, props in shown.items():
                if props.get("StatusText", "").startswith("failed:"):
                    statuses[unit] = props["StatusText"]
        call.result()
    except SystemctlError as exc:
        failed = [u for u in exc.failed_units() if u in units] or _not_active(units)
        reasons: dict[str, str] = {}
        for unit in failed or units:
            instance = app.instance_of(unit) or unit
            reason = statuses.get(unit) or _status_now(unit) or systemctl.last_error(unit, since)
            reasons[instance] = reason or exc.detail
        raise StartFailed(app, reasons) from None
    except BaseException:
        # NOTE: Ctrl-C: stop waiting, and leave the job to the caller's undo.
        call.abandon()
        raise


def _not_active(units: Sequence[str]) -> list[str]:
    try:
        shown = systemctl.show(units, ["ActiveState"])
    except SystemctlError:
        return list(units)
    return [u for u in units if shown.get(u, {}).get("ActiveState") != "active"]


def _status_now(unit: str) -> str | None:
    try:
        status = systemctl.show([unit], ["StatusText"]).get(unit, {}).get("StatusText", "")
    except SystemctlError:
        return None
    return status if status.startswith("failed:") else None


def start(app: App, instances: Sequence[str]) -> None:
    """Start instances together and wait until every one is ready; raise StartFailed if not."""
    if instances:
        since = time.time()
        _wait(app, systemctl.start_call([app.unit(i) for i in instances]), instances, since)


def restart(app: App, instance: str) -> float:
    """Restart one instance (it drains, stops, starts) and wait for READY=1; return the seconds taken."""
    started = time.monotonic()
    _wait(app, systemctl.restart_call(app.unit(instance)), [instance], time.time())
    return time.monotonic() - started


def stop(app: App, instances: Sequence[str]) -> None:
    """Stop instances, waiting for each to drain its requests; raise SystemctlError on failure."""
    systemctl.stop([app.unit(i) for i in instances])
