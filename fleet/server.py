"""waitress, adapted to a worker that shares its listening sockets with its siblings.

waitress has no graceful shutdown (Pylons/waitress#198): on exit it cancels
queued tasks. fleet adds one by stopping accepting (the kernel's queue then
feeds the sibling workers), answering what it already holds with
``Connection: close`` and closing keep-alive connections only between requests.
The same mechanism bounds a keep-alive connection's age, so clients spread
again over every worker, a freshly restarted one included.

Only public waitress behaviour is relied on, and checked against waitress 2.1
and 3.x by the tests: the server's ``channel_class``, the channel's
``task_class``, and a request's ``Connection`` header deciding whether the
connection ends after the response.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ThreadedTaskDispatcher, WSGITask

from fleet.settings import Settings

log = logging.getLogger("fleet.worker")
access_log = logging.getLogger("fleet.access")

# NOTE: a connection with no byte read or written for this long is idle, and
# may be closed when draining. Shorter races a client that is about to send
# its next request on a busy connection; the response to that request would
# carry Connection: close anyway.
IDLE_GRACE = 0.5
# Bodies up to this size are joined to their header for one send(); larger
# ones are not worth the copy.
ONE_SEND_MAX = 64 * 1024
# How often the relief thread looks at the request the event loop is serving
# inline, and how long it polls in one pass while it holds the loop.
RELIEF_CHECK = 0.005
RELIEF_POLL = 0.005
# After a request ran long inline, requests go to the pool for this long.
INLINE_COOLDOWN = 10.0


class FleetTask(WSGITask):  # type: ignore[misc]
    """A request: tracked while it runs, marked with the worker id, ends keep-alive if due."""

    wrote_header: bool  # waitress's Task attributes that write() relies on
    complete: bool

    def service(self) -> None:
        fleet: FleetServer = self.channel.server.fleet
        thread = threading.get_ident()
        fleet.busy[thread] = time.monotonic()
        try:
            super().service()
        finally:
            del fleet.busy[thread]
            fleet.request_done(self)

    def write(self, data: bytes) -> None:
        # NOTE: waitress sends the header and the body with a send() each: two
        # TCP segments under TCP_NODELAY. A small body of known length handed
        # over in one chunk (most API answers) goes out with its header in one:
        # +8% requests/s in the bench (docs/benchmarks.md).
        if not self.wrote_header and self.complete and data and len(data) <= ONE_SEND_MAX:
            header = self.build_response_header()
            self.wrote_header = True
            length = self.content_length
            if self.has_body and not self.chunked_response and length is not None and len(data) <= length:
                self.content_bytes_written += len(data)
                self.channel.write_soon(header + data)
                return
            self.channel.write_soon(header)
        super().write(data)

    def build_response_header(self) -> Any:
        fleet: FleetServer = self.channel.server.fleet
        if fleet.draining or fleet.connection_expired(self.channel):
            # NOTE: as if the client had asked: waitress 2.1 and 3.x both then
            # send "Connection: close" and close once the response is out.
            self.request.headers["CONNECTION"] = "close"
        self.response_headers.append(("X-Fleet-Worker", fleet.instance))
        return super().build_response_header()


class FleetChannel(HTTPChannel):  # type: ignore[misc]
    """A connection; counted as "fresh" from accept() until its first bytes arrive.

    A fresh connection is a request about to land: the accept gate counts it,
    or a worker could take a burst of connections in one poll pass that only
    one of its threads is free to serve.
    """

    task_class = FleetTask

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any, map: Any = None) -> None:
        self._fresh = True
        server.fleet.fresh += 1
        super().__init__(server, sock, addr, adj, map=map)

    def _settle(self) -> None:
        if self._fresh:
            self._fresh = False
            self.server.fleet.fresh -= 1

    def received(self, data: bytes) -> Any:
        self._settle()
        return super().received(data)

    def handle_close(self) -> None:
        self._settle()
        super().handle_close()


class _SignalPipe(wasyncore.file_dispatcher):  # type: ignore[misc]
    """Wakes the event loop the moment a signal arrives (``signal.set_wakeup_fd``).

    Without it, poll() is retried after the Python handler runs and the loop
    would notice SIGTERM only at its next timeout, accepting meanwhile.
    """

    def __init__(self, map: dict[int, Any]) -> None:
        read_end, self._write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        super().__init__(read_end, map)
        os.close(read_end)  # file_dispatcher keeps its own duplicate
        self._previous = signal.set_wakeup_fd(self._write_end, warn_on_full_buffer=False)

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        try:
            while self.recv(512):
                pass
        except (BlockingIOError, OSError):
            pass

    def handle_close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        os.close(self._write_end)
        self.close()


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
            sock.bind((host, int(port)))
        sock.listen(backlog)
        result.append(sock)
    return result


class InlineDispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]
    """FLEET_THREADS=0: serve each request on the event-loop thread, after the poll pass that read it.

    waitress hands every request to a pool thread (a lock, a condition
    variable, the GIL changing hands) and the thread wakes the loop back
    through a pipe. For an app that only computes, that is overhead: inline,
    a worker runs one request at a time, like a gunicorn sync worker that keeps
    connections alive. A request that waits on I/O stalls every connection of
    its worker, so this suits apps that do not wait, with one worker per CPU.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pending: deque[Any] = deque()

    def set_thread_count(self, count: int) -> None:
        pass  # no pool

    def add_task(self, task: Any) -> None:
        # NOTE: waitress calls this holding the channel's requests_lock, which
        # service() takes again: queue now, run once the poll pass is over.
        self.pending.append(task)

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        self.pending.clear()
        return True


class HybridDispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]
    """The default: serve a request on the event loop first, on a pool thread if it runs long.

    Handing every request to a pool thread is most of a fast request's cost
    (docs/benchmarks.md); serving it on the loop is not safe for a request
    that waits, as the loop is every connection's. So the loop serves what the
    last poll pass read, and a relief thread watches it: once one request has
    held the loop for FLEET_INLINE_MAX, the relief thread takes the loop over,
    hands the requests queued behind it to the pool, and requests keep going
    to the pool for INLINE_COOLDOWN. The slow request finishes where it runs.
    """

    def __init__(self, loop_thread: int) -> None:
        super().__init__()
        self.pending: deque[Any] = deque()
        self.loop_thread = loop_thread
        self.inline = True  # False while relieved and during the cool-down

    def add_task(self, task: Any) -> None:
        if self.inline and threading.get_ident() == self.loop_thread:
            self.pending.append(task)
        else:
            super().add_task(task)

    def to_pool(self) -> int:
        """Hand every request still waiting for the loop to the pool; return how many."""
        moved = 0
        while True:
            try:
                task = self.pending.popleft()
            except IndexError:
                return moved
            super().add_task(task)
            moved += 1

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        self.to_pool()
        return bool(super().shutdown(cancel_pending=cancel_pending, timeout=timeout))


def _by_kind(sockets: list[socket.socket]) -> list[list[socket.socket]]:
    unix = [s for s in sockets if s.family == socket.AF_UNIX]
    ip = [s for s in sockets if s.family != socket.AF_UNIX]
    return [group for group in (ip, unix) if group]


def describe(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


class FleetServer:
    """The worker's HTTP side: waitress channels and threads on already-listening sockets."""

    def __init__(self, app: Callable[..., Any], sockets: list[socket.socket], settings: Settings) -> None:
        self.instance = settings.instance
        self.settings = settings
        self.map: dict[int, Any] = {}
        self.draining = False
        self.busy: dict[int, float] = {}
        self.fresh = 0  # connections accepted whose first bytes have not arrived yet
        self._done = itertools.count(1)
        self.requests_done = 0
        self.recycle_requested = False
        self.recycle_limit = 0  # requests after which to drain and exit; 0: never
        self.addresses = [describe(s) for s in sockets]
        adjustments: dict[str, Any] = dict(
            threads=max(1, settings.threads),
            connection_limit=settings.connection_limit,
            channel_timeout=int(max(1, settings.channel_timeout)),
            asyncore_use_poll=True,
            ident="fleet",
        )
        self.loop_thread = threading.get_ident()
        # NOTE: the event loop's owner. The loop thread holds it for each poll
        # pass and each housekeeping pass; the relief thread for as long as it
        # stands in for a loop thread that is busy serving a long request.
        self.loop_lock = threading.Lock()
        self.inline_since = 0.0  # when the request the loop thread serves began; 0: none
        self.inline_resumes = 0.0
        self._closing = False
        self.inline = settings.threads == 0
        self.pending: deque[Any] = deque()
        self.hybrid: HybridDispatcher | None = None
        if self.inline:
            inline = InlineDispatcher()
            self.pending = inline.pending
            self.dispatcher: ThreadedTaskDispatcher = inline
            # NOTE: past this much buffered output, waitress's write_soon() waits
            # for the event loop to flush: inline, that is the loop waiting on
            # itself. Unbounded, big bodies spill to a temporary file instead.
            adjustments["outbuf_high_watermark"] = 2**62
        elif settings.inline_max > 0:
            # NOTE: waitress's output bound stays: a long response served on the
            # loop that waits for its own flush is a request running long, and the
            # relief thread then flushes it.
            self.hybrid = HybridDispatcher(self.loop_thread)
            self.pending = self.hybrid.pending
            self.dispatcher = self.hybrid
            self.dispatcher.set_thread_count(settings.threads)
        else:
            self.dispatcher = ThreadedTaskDispatcher()
            self.dispatcher.set_thread_count(settings.threads)
        # NOTE: waitress will not mix IP and UNIX sockets in one server, so each
        # family gets its own, sharing one event loop map and one thread pool.
        # _start=False keeps waitress from calling listen() again, which would
        # replace the Backlog= that fleet.socket set with its own.
        for family_sockets in _by_kind(sockets):
            waitress.create_server(
                app, map=self.map, _start=False, _dispatcher=self.dispatcher,
                sockets=family_sockets, **adjustments,
            )
        self.listeners = [obj for obj in self.map.values() if isinstance(obj, BaseWSGIServer)]
        for listener in self.listeners:
            listener.channel_class = FleetChannel
            listener.fleet = self
            listener.readable = self._gate(listener.readable)
            if self.inline:
                # The loop polls again right after serving: no wake-up needed.
                listener.pull_trigger = lambda: None
            elif self.hybrid:
                listener.pull_trigger = self._wake_from_pool(listener.pull_trigger)
        self.trigger = self.listeners[0].trigger
        self.signal_pipe = _SignalPipe(self.map)

    def _gate(self, readable: Callable[[], bool]) -> Callable[[], bool]:
        """Accept only while a thread is free.

        waitress accepts whatever the kernel offers and queues the requests
        behind busy threads; a worker stuck on slow requests would hoard
        connections that an idle sibling could serve at once. Left in the
        shared kernel queue, they go to whichever worker can take them.
        """
        threads = max(1, self.settings.threads)  # inline: one request at a time
        busy, queue, pending = self.busy, self.dispatcher.queue, self.pending
        # NOTE: a request the relief thread stands in for takes no pool thread.
        stood_in = self.loop_thread if self.hybrid else None

        def gated() -> bool:
            # NOTE: readable() also runs waitress's idle-connection maintenance: call it first.
            working = len(busy) - (stood_in in busy) + len(queue) + len(pending)
            return bool(readable()) and working + self.fresh < threads

        return gated

    def _wake_from_pool(self, pull_trigger: Callable[[], None]) -> Callable[[], None]:
        """Wake the loop when a pool thread finishes; the loop thread itself polls next anyway."""
        loop_thread = self.loop_thread

        def wake() -> None:
            if threading.get_ident() != loop_thread:
                pull_trigger()

        return wake

    # -- called from request threads -------------------------------------------------

    def request_done(self, task: FleetTask) -> None:
        self.requests_done = next(self._done)
        if self.settings.access_log:
            request = task.request
            access_log.info(
                '%s "%s %s HTTP/%s" %s %d',
                task.channel.addr[0] if task.channel.addr else "-",
                request.command,
                request.path,
                request.version,
                (task.status or "-").split(" ", 1)[0],
                task.content_bytes_written,
            )
        if self.recycle_limit and self.requests_done >= self.recycle_limit and not self.recycle_requested:
            self.recycle_requested = True
            self.trigger.pull_trigger()  # wake the loop to begin draining

    def connection_expired(self, channel: HTTPChannel) -> bool:
        max_age = self.settings.keepalive_max_age
        return bool(max_age) and time.time() - channel.creation_time >= max_age

    # -- called from the event loop ----------------------------------------------------

    def start_accepting(self) -> None:
        for listener in self.listeners:
            listener.accepting = True

    def stop_accepting(self) -> None:
        """Leave new connections in the kernel's queue, where sibling workers take them."""
        for listener in self.listeners:
            listener.accepting = False

    def channels(self) -> Iterator[HTTPChannel]:
        return (obj for obj in list(self.map.values()) if isinstance(obj, HTTPChannel))

    def stuck_threads(self, older_than: float, now: float | None = None) -> int:
        """Pool threads on one request for ``older_than`` or more.

        A long request on the loop thread does not count: the relief thread
        serves in its place, so the worker still serves.
        """
        now = time.monotonic() if now is None else now
        loop_thread = None if self.inline else self.loop_thread
        return sum(1 for thread, started in list(self.busy.items())
                   if thread != loop_thread and now - started >= older_than)  # fmt: skip

    def close_idle(self, now: float | None = None) -> int:
        """Close connections with no request in flight and no traffic for IDLE_GRACE.

        Returns how many connections remain open.
        """
        now = time.time() if now is None else now
        remaining = 0
        for channel in self.channels():
            if channel.requests or channel.total_outbufs_len or channel.will_close:
                remaining += 1
                continue
            if now - channel.last_activity < IDLE_GRACE or _has_unread_bytes(channel.socket):
                remaining += 1
                continue
            channel.handle_close()
        return remaining

    def close_all(self) -> int:
        channels = list(self.channels())
        for channel in channels:
            channel.handle_close()
        return len(channels)

    def poll(self, timeout: float) -> None:
        """One poll pass, then serve on this (the loop) thread what it read, if serving inline."""
        with self.loop_lock:
            wasyncore.loop(timeout=timeout, map=self.map, use_poll=True, count=1)
        if self.pending:
            self.run_pending()

    def run_pending(self) -> None:
        pending = self.pending
        while pending:
            try:
                task = pending.popleft()
            except IndexError:
                return  # the relief thread handed it to the pool
            self.inline_since = time.monotonic()
            try:
                task.service()
            except Exception:
                log.exception("Exception when servicing %r", task)
            finally:
                self.inline_since = 0.0

    def resume_inline(self, now: float) -> None:
        """End the cool-down after a relief: serve on the loop again. Called holding loop_lock."""
        if self.hybrid and not self.hybrid.inline and now >= self.inline_resumes:
            self.hybrid.inline = True

    def start_relief(self, housekeeping: Callable[[], None]) -> None:
        """Watch requests served on the loop; stand in for the loop when one runs long.

        ``housekeeping`` is the worker's pass between polls (watchdog, drain,
        signals), run by the relief thread while it holds the loop.
        """
        if not self.hybrid:
            return
        threading.Thread(target=self._watch, args=(housekeeping,), name="fleet-relief", daemon=True).start()

    def _watch(self, housekeeping: Callable[[], None]) -> None:
        limit = self.settings.inline_max
        while not self._closing:
            time.sleep(RELIEF_CHECK)
            since = self.inline_since
            if since and time.monotonic() - since >= limit:
                self._relieve(since, housekeeping)

    def _relieve(self, since: float, housekeeping: Callable[[], None]) -> None:
        assert self.hybrid is not None
        with self.loop_lock:
            if self.inline_since != since:
                return  # it finished while we waited for the loop
            self.hybrid.inline = False
            self.inline_resumes = float("inf")  # not before this relief ends
            moved = self.hybrid.to_pool()
            log.debug("a request held the event loop for %.0f ms; the pool takes over (%d waiting)",
                      (time.monotonic() - since) * 1000, moved)
            while self.inline_since == since and not self._closing:
                wasyncore.loop(timeout=RELIEF_POLL, map=self.map, use_poll=True, count=1)
                housekeeping()
            self.inline_resumes = time.monotonic() + INLINE_COOLDOWN

    def shutdown(self) -> None:
        self._closing = True
        self.dispatcher.shutdown(cancel_pending=True, timeout=1)
        for obj in list(self.map.values()):
            obj.close()


def _has_unread_bytes(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False
