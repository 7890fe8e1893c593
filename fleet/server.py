"""The worker's HTTP side: waitress, adapted to a worker that shares its listening sockets with its siblings.

:class:`FleetServer` composes one object per concern; each module says more:

* fleet/waitress_api.py: every waitress internal fleet uses (the event loop,
  the listeners, the pool, fleet's channel, parser and task);
* fleet/gate.py: the accept gate (take a connection only when it can be served soon);
* fleet/dispatch.py: where a read request is served (inline, pool, hybrid);
* fleet/drain.py: stopping without losing a request;
* fleet/deadlines.py: closing clients that hold a worker without sending a request;
* fleet/accounting.py: requests in flight and served, the access log, recycling.

The drain also bounds a keep-alive connection's age, so clients spread again
over every worker, a freshly restarted one included. docs/architecture.md
follows a request through them.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from fleet import dispatch
from fleet.accounting import Accounting
from fleet.deadlines import Deadlines
from fleet.drain import Drain
from fleet.gate import Gate
from fleet.settings import Settings
from fleet.siblings import Siblings
from fleet.waitress_api import EventLoop, FleetChannel, FleetTask, Listeners, SignalPipe

# Past this many FLEET_KEEPALIVE_MAX_AGE a connection ends at its next answer
# even where the split is even: a client pipelining on stays bounded. (The
# setting's help in fleet/settings.py and docs/security.md say 10.)
AGE_BOUND = 10
# How often a response past its connection's age reads the siblings' table, at most.
SPLIT_EVERY = 0.005


def bind(addresses: tuple[str, ...], backlog: int) -> list[socket.socket]:
    """Create listening sockets for ``FLEET_LISTEN`` when run without systemd."""
    result = []
    for address in addresses:
        if address.startswith("unix:"):
            path = address[len("unix:"):]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if os.path.exists(path):
                os.unlink(path)
            sock.bind(path)
        else:
            host, _, port = address.rpartition(":")
            host = host.strip("[]")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)  # as fleet.socket
            sock.bind((host, int(port)))
        sock.listen(backlog)
        result.append(sock)
    return result


def describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


class FleetServer:
    """waitress channels and threads on already-listening sockets, gated, dispatched, drained.

    Built and run by the loop thread. What the Worker asks of it is below
    ``run`` (by the loop thread, or by the relief thread while it holds the
    loop: :meth:`holding_loop`); what waitress's objects tell it is the
    :class:`fleet.waitress_api.Host` part.
    """

    def __init__(self, app: Callable[..., Any], sockets: list[socket.socket], settings: Settings,
                 state_directory: str = "") -> None:
        """``state_directory``: the app's StateDirectory (shared by its workers), for :class:`Siblings`."""
        self.instance = settings.instance
        self.settings = settings
        self.addresses = [describe(s) for s in sockets]
        self.loop = EventLoop()
        self.dispatch = dispatch.choose(self.loop, settings)
        adjustments: dict[str, Any] = dict(
            threads=max(1, settings.threads),
            # NOTE: fleet's gate enforces the limit, by closing idle connections
            # first; waitress's own (which just stops accepting) stays out of the way.
            connection_limit=settings.connection_limit + 64,
            channel_timeout=int(max(1, settings.channel_timeout)),
            asyncore_use_poll=True,
            ident="fleet",
            outbuf_high_watermark=self.dispatch.output_limit,
        )
        self.listeners = Listeners(app, sockets, self.loop, self.dispatch, self, settings.max_headers,
                                   **adjustments)
        self.siblings = Siblings.open(state_directory, settings.instance)
        self.accounting = Accounting(settings.access_log, self.listeners.wake_loop, self.siblings.served_one)
        busy = self.accounting.busy
        # Any thread (a lost update costs one decision): when _even_split() last read the
        # table and the lightest sibling's count then; connections ended since.
        self._lightest_at: tuple[float, int | None] = (0.0, None)
        self._leaving = 0
        self.gate = Gate(self.loop, self.listeners.filenos(), settings.threads, settings.connection_limit,
                         working=functools.partial(self.dispatch.working, busy),
                         requests_done=lambda: self.accounting.requests_done,
                         last_started=self.accounting.last_started, siblings=self.siblings)
        self.listeners.adapt(readable=self.gate.readable, accept=self.gate.accept_batch,
                             wake=self.dispatch.wake)
        self.drain = Drain(self.loop, self.listeners)
        # The Host: what waitress's objects tell the worker, straight to the object that owns each.
        # NOTE: bound here, not methods that pass the call on: these run for every request.
        self.connection_accepted: Callable[[bool], None] = self.gate.connection_accepted
        self.fresh_read: Callable[[], None] = self.gate.fresh_read
        self.request_started: Callable[[int], None] = self.accounting.started
        self.request_finished: Callable[[int, FleetTask], None] = self.accounting.finished
        self.request_paused: Callable[[int], None] = self.accounting.paused
        self.deadlines = Deadlines(settings)
        self.signal_pipe = SignalPipe(self.loop)
        self.loop.seal()

    # -- the Host: asked by waitress's objects (the rest is bound in __init__) ----------------------

    def ends_keepalive(self, channel: FleetChannel) -> bool:
        """A drain, or the connection's age past FLEET_KEEPALIVE_MAX_AGE (so clients spread again).

        Past the age, only while this worker holds more than its lightest live
        sibling (:class:`Siblings`): a client moved from an even split costs
        a reconnect and ends up no better off. Past AGE_BOUND ages, whatever
        the split. Never while the worker holds more of the client's requests
        (pipelined) than the one answered: closing would drop them unanswered.
        What the client sent after them is left unread (RFC 9112 9.3.2: it
        retries), so a pipelining client is still closed about at its age.
        """
        if self.drain.active:
            return not channel.read_more()
        max_age = self.settings.keepalive_max_age
        if not max_age:
            return False
        now = time.monotonic()
        age = now - channel.accepted_at
        if age < max_age or (age < AGE_BOUND * max_age and self._even_split(now)):
            return False
        if channel.read_more():
            return False
        self._leaving += 1
        return True

    def _even_split(self, now: float) -> bool:
        """Whether this worker holds at most one connection over its lightest live sibling.

        The sibling's count is read from the table at most every SPLIT_EVERY,
        as this is asked for every response on a connection past its age; this
        worker's own is counted live, less the connections it has ended since
        (closing, not closed yet), so a worker past its share sheds only the excess.
        """
        then, lightest = self._lightest_at
        held = self.loop.connections()
        if now - then >= SPLIT_EVERY:
            self.siblings.publish(held, now)
            lightest = self.siblings.lightest(now)
            self._lightest_at = (now, lightest)  # NOTE: one tuple: racing threads each store a whole one
            self._leaving = 0
        return lightest is not None and held - self._leaving - lightest <= 1

    # -- asked by the Worker --------------------------------------------------------------------

    def holding_loop(self) -> threading.Lock:
        """The event loop's lock: hold it to run housekeeping (``with server.holding_loop():``)."""
        return self.loop.lock

    def poll(self, timeout: float) -> None:
        """One poll pass, then serve on this (the loop) thread what it read, if serving inline."""
        with self.loop.lock:
            # NOTE: requests left to serve on the loop: only what is ready now.
            self.loop.poll_once(0.0 if self.dispatch.pending else timeout)
        if self.dispatch.pending:
            self.dispatch.serve_pending()

    def start_relief(self, housekeeping: Callable[[], None]) -> None:
        """Start serving: with the hybrid dispatch, a relief thread stands in for a loop stuck in a request.

        ``housekeeping`` is the worker's pass between polls (watchdog, drain,
        signals), run by the relief thread while it holds the loop.
        """
        self.dispatch.start(housekeeping)

    def recycle_after(self, requests: int) -> None:
        """Drain once this many requests are served (FLEET_MAX_REQUESTS); call before serving."""
        self.accounting.recycle_limit = requests

    def recycle_due(self) -> bool:
        return self.accounting.recycle_due

    def requests_served(self) -> int:
        return self.accounting.requests_done

    # The rest is called holding the loop's lock.

    def start_accepting(self) -> None:
        self.listeners.set_accepting(True)

    def stop_accepting(self) -> None:
        """Leave new connections in the kernel's queue, where sibling workers take them."""
        self.listeners.set_accepting(False)

    def begin_drain(self) -> None:
        """Stop accepting for good; every response from now on closes its connection.

        The siblings stop counting this worker: it takes no client from them now.
        """
        self.siblings.leave()
        self.drain.begin()

    def is_draining(self) -> bool:
        return self.drain.active

    def close_idle(self, now: float | None = None) -> int:
        """Close connections idle between requests (see :class:`Drain`); return how many remain."""
        return self.drain.close_idle(now)

    def close_all(self) -> int:
        return self.drain.close_all()

    def sweep(self, now: float) -> None:
        """Close connections past a deadline (see :class:`Deadlines`); tell the siblings how many are open."""
        self.deadlines.sweep(self.loop.channels(), now)
        self.siblings.publish(self.loop.connections(), now)

    def resume_inline(self, now: float) -> None:
        """End the cool-down after a hand-over: serve on the loop again."""
        self.dispatch.resume(now)

    def stuck_threads(self, older_than: float, now: float | None = None) -> int:
        """Pool threads on one request for ``older_than`` or more.

        A long request on the loop thread does not count when the relief
        thread serves in its place, so the worker still serves.
        """
        now = time.monotonic() if now is None else now
        return self.accounting.stuck(older_than, now, except_thread=self.dispatch.stands_in())

    def shutdown(self) -> None:
        self.siblings.leave()
        self.dispatch.close()
        self.loop.close()
