"""Prototype: hand requests to the pool through a C ``queue.SimpleQueue``.

waitress's ThreadedTaskDispatcher hands each request over with a
``threading.Condition`` (pure Python: ``notify`` walks the waiters, ``wait``
allocates a lock per call), the top self-time entry in py-spy. This module
swaps in a pool whose put/get are C calls for fleet's PoolDispatch
(FLEET_INLINE_MAX=0), to measure what that is worth
(``python3 -m bench.experiments.tune simplequeue``).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from typing import Any

from fleet import dispatch
from fleet.worker import main

log = logging.getLogger("fleet.worker")


class SimpleQueuePool(dispatch.PoolDispatch):
    def start_threads(self, count: int) -> None:
        self.tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.pool: list[threading.Thread] = []
        for n in range(count):
            t = threading.Thread(target=self._serve, name=f"waitress-{n}", daemon=True)
            t.start()
            self.pool.append(t)

    def _serve(self) -> None:
        get = self.tasks.get
        while (task := get()) is not None:
            try:
                task.service()
            except BaseException:
                log.exception("Exception when servicing %r", task)

    def to_pool(self, task: Any) -> None:
        self.tasks.put(task)

    def queued(self) -> int:
        """The SimpleQueue's depth, which the accept gate reads."""
        return self.tasks.qsize()

    def stop(self, cancel_pending: bool, timeout: float) -> bool:
        for _ in self.pool:
            self.tasks.put(None)
        for t in self.pool:
            t.join(timeout / max(1, len(self.pool)))
        return True


def install() -> None:
    dispatch.PoolDispatch = SimpleQueuePool  # type: ignore[misc]


if __name__ == "__main__":
    install()
    sys.exit(main([]))
