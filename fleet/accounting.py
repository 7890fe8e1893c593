"""What a worker's requests add up to: who is serving what since when, how many were served, recycling."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable

from fleet.waitress_api import FleetTask

access_log = logging.getLogger("fleet.access")


class Accounting:
    """Requests in flight and served, the access log, and when recycling (FLEET_MAX_REQUESTS) is due."""

    def __init__(self, access_log_on: bool, wake_loop: Callable[[], None],
                 served: Callable[[int], None]) -> None:
        """``served``: told requests_done after each request, by the thread that served it."""
        self.access_log = access_log_on
        self._wake_loop = wake_loop
        self._served = served
        self.busy: dict[int, float] = {}  # thread -> when its request began; each thread writes its own key
        self._done = itertools.count(1)
        self.requests_done = 0  # request threads: next() of a shared count, so no two write the same value
        self.recycle_limit = 0  # the loop thread, before serving: requests after which to recycle; 0: never
        self.recycle_due = False  # set once, by the request thread that reached the limit

    def started(self, thread: int) -> None:
        self.busy[thread] = time.monotonic()

    def paused(self, thread: int) -> None:
        """The thread's request paused its response for the client to read it: the thread is free."""
        del self.busy[thread]

    def finished(self, thread: int, task: FleetTask) -> None:
        del self.busy[thread]
        self.requests_done = done = next(self._done)
        self._served(done)
        if self.access_log:
            access_log.info('%s "%s %s HTTP/%s" %s %d', *task.access_fields())
        if self.recycle_limit and self.requests_done >= self.recycle_limit and not self.recycle_due:
            self.recycle_due = True
            self._wake_loop()  # wake the loop to begin draining

    def last_started(self) -> float:
        """When the newest request in flight began; 0.0 with none."""
        return max(list(self.busy.values()), default=0.0)

    def stuck(self, older_than: float, now: float, except_thread: int | None) -> int:
        """Threads on one request for ``older_than`` or more, ``except_thread`` aside."""
        return sum(1 for thread, started in list(self.busy.items())
                   if thread != except_thread and now - started >= older_than)  # fmt: skip
