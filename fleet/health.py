"""The health endpoint, answered by fleet in front of whatever app it serves.

Load balancers poll it; ``fleetctl drain`` turns it to 503 on every worker (by
creating the drain file) while requests keep being served, so a host can be
taken out of rotation before maintenance without editing the app.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class HealthCheck:
    """Wrap ``app`` so ``path`` answers ``{"status": "ok"|"draining", "worker", "pid"}``."""

    def __init__(self, app: WSGIApp, path: str, drain_file: str, instance: str) -> None:
        self.app = app
        self.path = path
        self.drain_file = drain_file
        self.instance = instance

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != self.path:
            return self.app(environ, start_response)
        # NOTE: a stat per health request, so drain takes effect on every worker
        # at once with no signal to deliver and survives worker restarts.
        draining = bool(self.drain_file) and os.path.exists(self.drain_file)
        body = json.dumps(
            {"status": "draining" if draining else "ok", "worker": self.instance, "pid": os.getpid()}
        ).encode()
        start_response(
            "503 Service Unavailable" if draining else "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]
