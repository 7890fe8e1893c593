"""Prototype: hand requests to the pool through a C ``queue.SimpleQueue``.

waitress's ThreadedTaskDispatcher hands each request over with a
``threading.Condition`` (pure Python: ``notify`` walks the waiters, ``wait``
allocates a lock per call), the top self-time entry in py-spy. This module
swaps in a dispatcher whose put/get are C calls, to measure what that is worth
(``python3 -m bench.experiments.tune simplequeue``).
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import Any

from waitress.task import ThreadedTaskDispatcher

from fleet import server
from fleet.worker import main


class _Depth:
    """``len()`` of the SimpleQueue, which the accept gate reads."""

    def __init__(self, tasks: queue.SimpleQueue[Any]) -> None:
        self.tasks = tasks

    def __len__(self) -> int:
        return self.tasks.qsize()


class SimpleQueueDispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.queue = _Depth(self.tasks)
        self.pool: list[threading.Thread] = []

    def set_thread_count(self, count: int) -> None:
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
                self.logger.exception("Exception when servicing %r", task)

    def add_task(self, task: Any) -> None:
        self.tasks.put(task)

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        for _ in self.pool:
            self.tasks.put(None)
        for t in self.pool:
            t.join(timeout / max(1, len(self.pool)))
        return True


def install() -> None:
    server.ThreadedTaskDispatcher = SimpleQueueDispatcher  # type: ignore[misc]


if __name__ == "__main__":
    install()
    sys.exit(main([]))
