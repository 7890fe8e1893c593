"""Draining: stop taking connections, finish what is in flight, close keep-alive connections between requests.

waitress has no graceful shutdown (Pylons/waitress#198): on exit it cancels
queued tasks. fleet adds one by stopping accepting (the kernel's queue then
feeds the sibling workers), answering what it already holds with
``Connection: close`` and closing keep-alive connections only between requests.
"""

from __future__ import annotations

import time

from fleet.waitress_api import EventLoop, Listeners

# NOTE: a connection with no byte read or written for this long is idle, and
# may be closed when draining. Shorter races a client that is about to send
# its next request on a busy connection; the response to that request would
# carry Connection: close anyway.
IDLE_GRACE = 0.5


class Drain:
    """A worker's drain, begun once by whoever holds the event loop's lock; it never ends."""

    def __init__(self, loop: EventLoop, listeners: Listeners) -> None:
        self.loop = loop
        self.listeners = listeners
        # Written once by the holder of the loop's lock; read by request threads
        # (every response then carries Connection: close).
        self.active = False

    def begin(self) -> None:
        """Leave new connections in the kernel's queue, where sibling workers take them."""
        self.listeners.set_accepting(False)
        self.active = True

    def close_idle(self, now: float | None = None) -> int:
        """Close connections with no request in flight and no traffic for IDLE_GRACE.

        Returns how many connections remain open.
        """
        now = time.time() if now is None else now
        remaining = 0
        for channel in self.loop.channels():
            if channel.closing_after_response():
                remaining += 1
                continue
            if now - channel.last_traffic() < IDLE_GRACE or channel.has_unread_bytes():
                remaining += 1
                continue
            channel.close_now()
        return remaining

    def close_all(self) -> int:
        """Close every connection, requests in flight or not; return how many there were."""
        channels = list(self.loop.channels())
        for channel in channels:
            channel.close_now()
        return len(channels)
