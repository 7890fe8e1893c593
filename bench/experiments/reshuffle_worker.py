"""Prototype: fleet's worker with another way to re-split connections at FLEET_KEEPALIVE_MAX_AGE.

    AGE_JITTER=F   each connection's age limit is FLEET_KEEPALIVE_MAX_AGE × (1 + U(0, F)),
                   so connections opened together do not all reconnect together
    OWED_MAX=N     a busy worker whose patience is over takes at most N connections a pass

A monkeypatch of FleetServer.ends_keepalive and Gate.patience_over, to try against the
tree's worker (``python3 -m bench.experiments.split_timeline --module ...``).
"""

from __future__ import annotations

import os
import random
import sys
import time

from fleet import gate, server
from fleet.worker import main

_jitter = float(os.environ.get("AGE_JITTER", "0"))
_owed_max = int(os.environ.get("OWED_MAX", "0"))

if _jitter:
    def _ends_keepalive(self: server.FleetServer, channel: server.FleetChannel) -> bool:
        if not self.drain.active:
            limit = getattr(channel, "age_limit", None)
            if limit is None:
                limit = channel.age_limit = self.settings.keepalive_max_age * (1 + random.uniform(0, _jitter))
            if not limit or time.monotonic() - channel.accepted_at < limit:
                return False
        return not channel.read_more()

    server.FleetServer.ends_keepalive = _ends_keepalive  # type: ignore[method-assign]

if _owed_max:
    _patience_over = gate.Gate.patience_over

    def _capped(self: gate.Gate) -> bool:
        over = _patience_over(self)
        if over:
            self.owed = min(self.owed, _owed_max)
        return over

    gate.Gate.patience_over = _capped  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main([]))
