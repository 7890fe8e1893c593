"""The accept gate: a worker takes a new connection only when it can serve it soon.

waitress accepts whatever the kernel offers and queues the requests behind
busy threads; a worker stuck on slow requests would hoard connections that an
idle sibling could serve at once. Left in the shared kernel queue, they go to
whichever worker can take them.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Any

from fleet.siblings import Siblings
from fleet.waitress_api import EventLoop

# Connections accepted in one poll pass, at most, while the gate stays open.
ACCEPT_BATCH = 16
# A worker with no thread free leaves new connections to its siblings; one
# waiting in the kernel's queue for GATE_PATIENCE, plus
# GATE_PATIENCE_PER_CONNECTION for each connection the worker holds, since the
# worker last saw the queue empty has found no idle sibling, and a worker that
# is getting through its requests takes it (one per patience elapsed, so a
# pass longer than the patience takes several), so no connection waits in the
# kernel for as long as the fleet stays busy. The less a worker holds, the
# sooner it takes one: busy workers share new connections evenly instead of by
# who polls first. When every worker is busy the patience is pure wait for a
# reconnecting client (each FLEET_KEEPALIVE_MAX_AGE): 0.2 ms a connection put
# 4-6 ms on the waiting apps' p99 (bench/analysis.md), 0.05 ms still splits evenly.
GATE_PATIENCE = 0.001
GATE_PATIENCE_PER_CONNECTION = 0.00005
GATE_PATIENCE_MAX = 0.02
# A busy worker holding no more connections than its lightest live sibling
# (fleet/siblings.py) takes a waiting connection at once, as no sibling would
# serve it sooner; unless none of its requests has ended since its threads
# filled while a sibling's have, or its newest request began longer ago than
# this: then it may be stuck, and a client it took would be lost with it.
GATE_FRESH = 1.0


class Gate:
    """Accept only while a thread is free, and room is left or can be made.

    Only requests count: a connection that sends nothing (a preconnect, a
    port scan, an idle keep-alive) never closes the gate. When every worker
    is busy, a connection this worker has seen waiting for its patience
    (longer the more connections it holds) goes to it if it is getting
    through its requests, never if its threads are stuck. A busy worker that
    holds no more than its lightest sibling takes it at once: at a burst of
    new clients, each worker then queues its share of their first requests
    before its other clients' next ones, as a server that accepts everything
    would. At the connection limit, the longest-idle connections are closed
    to make room.

    Run by the loop thread (the holder of the event loop's lock), as every
    field here is written by it only.
    """

    def __init__(self, loop: EventLoop, listening: list[int], threads: int, limit: int,
                 working: Callable[[], int], requests_done: Callable[[], int],
                 last_started: Callable[[], float], siblings: Siblings) -> None:
        """``listening``: the listening sockets' descriptors; ``working``: requests running, queued
        or waiting for the loop; ``requests_done``: requests served so far; ``last_started``: when the
        newest request in flight began (0.0: none)."""
        self.loop = loop
        self.siblings = siblings
        self._last_started = last_started
        self.threads = max(1, threads)
        self.limit = limit
        self._working = working
        self._requests_done = requests_done
        self.fresh = 0  # loop thread: connections accepted with bytes waiting, not yet read
        self.accepted = 0  # loop thread: connections accepted so far
        self.closed_since = 0.0  # loop thread: when the gate last closed for want of a thread; 0: open
        self.done_when_closed = 0  # loop thread: requests_done then
        self.siblings_served_when_closed = 0  # loop thread: the siblings' requests served then
        self.seen_empty = 0.0  # loop thread: when the gate last saw no connection waiting for it
        self.owed = 0  # loop thread: connections the patience let in this pass, not yet accepted
        self.lead_up_to = -1  # loop thread: in this pass, take connections while holding at most this many
        # NOTE: looked at only while the gate is closed, when the event loop's
        # own poll leaves the listening sockets out.
        self.queues = select.poll()
        for fileno in listening:
            self.queues.register(fileno, select.POLLIN)

    # -- told by the channels (loop thread) ------------------------------------------------

    def connection_accepted(self, fresh: bool) -> None:
        self.accepted += 1
        if fresh:
            self.fresh += 1

    def fresh_read(self) -> None:
        self.fresh -= 1

    # -- the gate -------------------------------------------------------------------------

    def has_capacity(self) -> bool:
        """Whether a new request would find a thread free (inline: the loop itself)."""
        return self._working() + self.fresh < self.threads

    def has_room(self) -> bool:
        """Whether a connection may be added, closing the longest-idle ones at the limit."""
        return self.loop.connections() < self.limit or self._make_room()

    def _make_room(self) -> bool:
        idle = sorted((c for c in self.loop.channels() if c.idle()), key=lambda c: c.last_traffic())
        # NOTE: a batch, so a flood of new connections does not sort on every accept.
        batch = max(1, self.limit // 64)
        closed = 0
        for channel in idle:
            if channel.has_unread_bytes():
                continue  # NOTE: its client sent a request this pass has not read yet
            channel.close_now()
            closed += 1
            if closed == batch:
                break
        return closed > 0

    def readable(self, readable: Callable[[], Any]) -> Callable[[], bool]:
        """Wrap a listener's readable(): poll it for new connections only while the gate is open."""
        def gated() -> bool:
            # NOTE: readable() also runs waitress's idle-connection maintenance: call it first.
            if not (readable() and self.has_room()):
                return False
            if self.has_capacity():
                self.seen_empty = time.monotonic()  # NOTE: whatever waits is accepted in this pass
                self.owed = 0
                self.lead_up_to = -1
                self.siblings.publish_busy(False, self._requests_done())
                return True
            return self.patience_over()

        return gated

    def patience_over(self) -> bool:
        """Whether a connection has waited this worker's patience, since the gate closed or took one.

        Counted from when the worker last saw the queue empty: from when the
        gate closed, a worker that had not taken a connection for a while took
        the next one at once, before a sibling holding fewer could. Not from
        when it first saw the connection waiting either: under a flood, where
        one pass takes longer than the patience, that costs every newcomer a
        second pass. For the same reason it lets in one connection for each
        patience elapsed, not one a pass: the 50 connections a flood opens
        again at once would otherwise keep a newcomer queued behind them for
        50 of a busy worker's long passes.
        """
        now = time.monotonic()
        self.lead_up_to = -1
        if not self.closed_since:
            self._close(now)
            return False
        if not self.queues.poll(0):
            self.seen_empty = now
            return False
        held = self.loop.connections()
        if self.leads(held, now):
            return True
        patience = min(GATE_PATIENCE_MAX, GATE_PATIENCE + GATE_PATIENCE_PER_CONNECTION * held)
        waited = now - max(self.seen_empty, self.closed_since)
        if waited < patience or self._requests_done() == self.done_when_closed:
            return False
        self.owed = min(ACCEPT_BATCH, int(waited / patience))
        return True

    def leads(self, held: int, now: float) -> bool:
        """Whether this busy worker takes connections at once: no live sibling lighter or with a thread free.

        Not if it may be stuck: none of its requests ended since its threads
        filled, while a sibling's did or for GATE_FRESH. If it leads, it takes
        connections in this pass up to one more than its lightest sibling,
        whose gate then does the same: a burst is split evenly at once.
        """
        lightest = self.siblings.lightest(now)
        if lightest is None or held > lightest:
            return False  # NOTE: the lighter sibling leads, or no sibling shares the table
        if not self.siblings.all_busy(now):
            return False  # NOTE: a sibling with a thread free serves it sooner
        if self._requests_done() == self.done_when_closed and (
                self.siblings.served(now) != self.siblings_served_when_closed
                or now - self._last_started() >= GATE_FRESH):
            return False  # NOTE: none of its requests ended since its threads filled: it may be stuck
        self.lead_up_to = lightest
        return True

    def _close(self, now: float) -> None:
        self.closed_since = now
        self.done_when_closed = self._requests_done()
        self.siblings.publish_busy(True, self.done_when_closed)
        self.siblings_served_when_closed = self.siblings.served(now)

    def accept_batch(self, handle_accept: Callable[[], Any]) -> Callable[[], None]:
        """Wrap a listener's handle_accept(): up to ACCEPT_BATCH connections a pass while the gate stays open.

        One per pass (waitress's way) lets a burst of silent connections, each
        pass slower with every connection it adds, queue a real client's
        connection behind them for seconds.
        """
        def accept() -> None:
            for _ in range(ACCEPT_BATCH):
                before = self.accepted
                handle_accept()
                if self.accepted == before or not self.has_room():
                    return
                now = time.monotonic()
                held = self.loop.connections()
                self.siblings.publish(held, now)
                if not self.has_capacity():
                    if held <= self.lead_up_to:
                        continue
                    self.lead_up_to = -1
                    self.owed -= 1
                    if self.owed > 0:
                        continue
                    self._close(now)  # NOTE: patience again before the next one
                    return
                self.closed_since = 0.0

        return accept
