"""waitress, adapted to a worker that shares its listening sockets with its siblings.

waitress has no graceful shutdown (Pylons/waitress#198): on exit it cancels
queued tasks. fleet adds one by stopping accepting (the kernel's queue then
feeds the sibling workers), answering what it already holds with
``Connection: close`` and closing keep-alive connections only between requests.
The same mechanism bounds a keep-alive connection's age, so clients spread
again over every worker, a freshly restarted one included.

It also guards the worker against clients that hold connections without
sending requests (silent, idle, slowloris): only requests count as work in the
accept gate, every phase of a request has a deadline (:class:`Deadlines`), and
a worker at its connection limit closes its longest-idle connections.

waitress's internals used here are checked against waitress 2.1 and 3.x by
the tests.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import select
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
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.server import BaseWSGIServer
from waitress.task import ThreadedTaskDispatcher, WSGITask
from waitress.utilities import RequestHeaderFieldsTooLarge

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
RELIEF_CHECK = 0.002
RELIEF_POLL = 0.005
# The relief thread samples the loop thread while it serves requests: once at
# least WAIT_SAMPLES samples found it inside a batch and WAIT_SHARE of them
# found it asleep on I/O, or two samples in a row inside the same batch did,
# requests that wait are being served one at a time, and the threads take over.
WAIT_SAMPLES = 8
WAIT_SHARE = 0.5
# A batch that neither computes FLEET_INLINE_MAX nor is seen waiting on I/O
# (a lock, a preempted thread) is stood in for after this many times it in
# wall time, so the worker's other connections are never left unpolled long.
WALL_LIMIT_FACTOR = 10
# With no request served inline for this long, the relief thread sleeps until one is.
RELIEF_IDLE = 0.2
# After a request waited or ran long inline, requests go to the pool for a
# while: COOLDOWN_MIN, doubled each time the loop tries again and requests
# still wait within COOLDOWN_RESET of it, up to COOLDOWN_MAX. A one-off wait
# costs a second of hand-offs; an app that waits is tried inline twice a minute.
COOLDOWN_MIN = 1.0
COOLDOWN_MAX = 30.0
COOLDOWN_RESET = 5.0
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
# who polls first.
GATE_PATIENCE = 0.001
GATE_PATIENCE_PER_CONNECTION = 0.0002
GATE_PATIENCE_MAX = 0.02
# How often the connection deadlines are checked.
SWEEP_EVERY = 0.5
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                   b"Content-Type: text/plain\r\nContent-Length: 16\r\n\r\nRequest Timeout\n")
_FRAMING_HEADER = re.compile(rb"^(content-length|transfer-encoding)[ \t]*:", re.I | re.M)
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 section 5.6.2: a token
# A response the client does not read is spooled (past 1 MiB to a temporary
# file) up to this much before the thread writing it waits for the client: a
# client that never reads must not hold a thread.
OUTPUT_SPOOL = 256 * 2**20


class FleetParser(HTTPRequestParser):  # type: ignore[misc]
    """waitress's request parser, stricter about framing and header count.

    A request with both Content-Length and Transfer-Encoding is ambiguous
    (RFC 9112 section 6.1): a proxy in front may frame it differently, which is
    how requests are smuggled. waitress lets the chunked framing win and keeps
    the connection; fleet answers 400 and closes it, as it does a method that
    is no token (waitress 2.1 passes control bytes on to the app). Too many
    header fields cost CPU to parse (10,000 took ~35 ms), so they are counted
    before parsing.
    """

    max_headers = 100  # set per server from FLEET_MAX_HEADERS

    def parse_header(self, header_plus: bytes) -> None:
        fields = header_plus.rstrip().count(b"\n")  # one per field: after the request line
        if fields > self.max_headers:
            super().parse_header(b"GET / HTTP/1.0\r\n")
            self.error = RequestHeaderFieldsTooLarge(
                f"more than {self.max_headers} header fields (FLEET_MAX_HEADERS)")
            return
        framing = {name.lower() for name in _FRAMING_HEADER.findall(header_plus)}
        if len(framing) == 2:
            raise ParsingError("Content-Length and Transfer-Encoding together")
        if not _METHOD.match(header_plus, 0, max(0, header_plus.find(b" "))):
            raise ParsingError("the request method is not a token")
        super().parse_header(header_plus)


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

    def get_environment(self) -> Any:
        environ = super().get_environment()
        if self.request.command == "HEAD":
            # NOTE: a file wrapper is sent by the channel, past write(): without
            # it the app's body comes through write(), which drops it for HEAD.
            environ.pop("wsgi.file_wrapper", None)
        return environ

    def write(self, data: bytes) -> None:
        if self.request.command == "HEAD":
            # NOTE: waitress 2.1 and 3.0 send a HEAD response's body when the
            # app gives one (RFC 9110 section 9.3.2: it MUST NOT), and the next
            # response on the connection is read from the middle of it.
            if not self.wrote_header:
                self.channel.write_soon(self.build_response_header())
                self.wrote_header = True
            self.content_bytes_written += len(data)
            return
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

    def finish(self) -> None:
        if self.request.command == "HEAD":
            if not self.wrote_header:
                self.write(b"")
            return  # no last chunk either: a HEAD response has no body at all
        super().finish()

    def build_response_header(self) -> Any:
        fleet: FleetServer = self.channel.server.fleet
        if fleet.draining or fleet.connection_expired(self.channel):
            # NOTE: as if the client had asked: waitress 2.1 and 3.x both then
            # send "Connection: close" and close once the response is out.
            self.request.headers["CONNECTION"] = "close"
        self.response_headers.append(("X-Fleet-Worker", fleet.instance))
        return super().build_response_header()


class FleetChannel(HTTPChannel):  # type: ignore[misc]
    """A connection, with the times its deadlines run from (see :class:`Deadlines`).

    It counts as "fresh" in the accept gate from accept() until its bytes are
    read, but only if it had bytes waiting when accepted: that is a request
    about to land, and a worker could otherwise take a burst of them in one
    pass that only one of its threads is free to serve. A connection with
    nothing to say is no work, however many there are. fleet.socket's
    DeferAcceptSec= has the kernel hand over a connection once its first
    bytes are in, so the two are told apart at accept().
    """

    task_class = FleetTask
    parser_class = FleetParser

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any, map: Any = None) -> None:
        fleet: FleetServer = server.fleet
        fleet.accepted += 1
        self.accepted_at = time.monotonic()
        self.spoke = False  # loop thread only, as every field below
        self._fresh = _has_unread_bytes(sock)
        if self._fresh:
            fleet.fresh += 1
        self.timed: Any = None  # the partial request the two times below are for
        self.head_started = 0.0
        self.body_started = 0.0
        super().__init__(server, sock, addr, adj, map=map)

    def _settle(self) -> None:
        self.spoke = True
        if self._fresh:
            self._fresh = False
            self.server.fleet.fresh -= 1

    def received(self, data: bytes) -> Any:
        if not self.spoke:
            self._settle()
        result = super().received(data)
        request = self.request
        if request is not None:  # a request is still arriving: time it
            if request is not self.timed:
                self.timed = request
                self.head_started = time.monotonic()
                self.body_started = 0.0
            if request.headers_finished and not self.body_started:
                self.body_started = time.monotonic()
        return result

    def handle_close(self) -> None:
        if not self.spoke:
            self._settle()
        super().handle_close()

    def idle(self) -> bool:
        """Nothing in flight: no request arriving, queued, running or being sent."""
        return not (self.request is not None or self.requests or self.total_outbufs_len
                    or self.will_close or self.close_when_flushed)

    def time_out(self) -> None:
        """Answer 408 where nothing else is being sent, and close."""
        if not (self.requests or self.total_outbufs_len):
            try:
                self.socket.send(REQUEST_TIMEOUT, socket.MSG_DONTWAIT)
            except OSError:
                pass
        self.handle_close()


class Deadlines:
    """Close connections that hold a worker's resources without sending a request in time.

    As nginx's client_header_timeout and client_body_timeout and Apache's
    mod_reqtimeout (body=20,MinRate=500) do: a silent connection is closed
    after FLEET_SILENT_TIMEOUT, a request head must arrive within
    FLEET_HEADER_TIMEOUT of its first byte, a body within FLEET_BODY_TIMEOUT
    plus a second per FLEET_BODY_MIN_RATE bytes. Idle keep-alive connections
    are waitress's channel_timeout. Run by the thread holding the event loop.
    """

    def __init__(self, settings: Settings) -> None:
        self.silent = settings.silent_timeout
        self.head = settings.header_timeout
        self.body = settings.body_timeout
        self.rate = float(settings.body_min_rate)
        self.next_sweep = 0.0
        self.closed = {"silent": 0, "head": 0, "body": 0}  # loop thread; counted for metrics to come

    def _body_allowance(self, request: HTTPRequestParser) -> float:
        received: int = request.body_bytes_received
        return self.body + received / self.rate

    def sweep(self, channels: Iterator[HTTPChannel], now: float) -> None:
        if now < self.next_sweep:
            return
        self.next_sweep = now + SWEEP_EVERY
        for channel in channels:
            if not isinstance(channel, FleetChannel) or channel.requests or channel.total_outbufs_len:
                continue  # a response is due: the server, not the client, is behind
            request = channel.request
            if request is None:
                if not channel.spoke and self.silent and now - channel.accepted_at >= self.silent:
                    self.closed["silent"] += 1
                    channel.handle_close()
            elif not request.headers_finished:
                if self.head and now - channel.head_started >= self.head:
                    self.closed["head"] += 1
                    channel.time_out()
            elif self.body and now - channel.body_started >= self._body_allowance(request):
                self.closed["body"] += 1
                channel.time_out()


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
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)  # as fleet.socket
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
    """The default: serve requests that only compute on the event loop, the rest on the pool.

    Handing every request to a pool thread is most of a fast request's cost
    (docs/benchmarks.md); serving it on the loop is not safe for a request
    that waits, as the loop is every connection's and it would serve one
    request at a time. So the loop serves what the last poll pass read, and
    :class:`Relief` watches what that costs: once a request waits (its thread
    neither runs nor is runnable) or runs long, the pool takes over for a
    cool-down, after which the loop tries again. An app that waits is served
    on the threads but for a few milliseconds every COOLDOWN_MAX.
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


class LoopThread:
    """Whether the event-loop thread is asleep on I/O right now, as another thread sees it.

    The kernel says where a sleeping thread waits (``/proc/.../wchan``): a
    socket, a pipe, a timer are I/O that other requests could use the CPU
    during; a futex is the GIL or a lock, which threads would not make
    faster; a running or preempted thread has no wait channel. Where the
    kernel does not tell, the thread's CPU clock between two looks is used
    instead (a preempted thread then looks like a waiting one).
    """

    def __init__(self, thread_id: int, native_id: int) -> None:
        self._clock = time.pthread_getcpuclockid(thread_id)
        self._last = (0.0, 0.0)  # (wall, CPU) at the last look, for the fallback
        self._wchan: int | None = None  # open for the worker's life, as the loop thread is
        try:
            self._wchan = os.open(f"/proc/self/task/{native_id}/wchan", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass

    def asleep_on_io(self) -> bool:
        if self._wchan is not None:
            try:
                where = os.pread(self._wchan, 64, 0)
            except OSError:
                where = b"0"
            return where not in (b"", b"0") and b"futex" not in where
        now, cpu = time.monotonic(), time.clock_gettime(self._clock)
        (then, cpu_then), self._last = self._last, (now, cpu)
        return now - then < 0.1 and cpu - cpu_then < WAIT_SHARE * (now - then)

    def cpu(self) -> float:
        """Seconds of CPU the thread has used."""
        return time.clock_gettime(self._clock)


class Relief:
    """Watch what serving on the event loop costs; hand the loop's work to the pool when requests wait.

    The loop thread serves each poll pass's requests as one batch and marks
    it (:meth:`begin`, :meth:`end`: a clock read, nothing more, as this is
    every fast request's path). A relief thread looks at the loop thread
    every RELIEF_CHECK while it serves: asleep on I/O in two looks in a row
    within one batch, or in WAIT_SHARE of WAIT_SAMPLES looks, the requests
    wait and are served one at a time; the threads take over. A batch that
    still waits, or that used FLEET_INLINE_MAX of CPU, is stood in for: the relief
    thread takes the loop over, hands the requests queued behind to the pool
    and runs the loop until the batch ends. Then the pool serves for a
    cool-down (COOLDOWN_MIN up to COOLDOWN_MAX). The relief thread sleeps
    while nothing is served inline, so an idle worker uses no CPU.
    """

    def __init__(self, server: FleetServer, hybrid: HybridDispatcher, limit: float) -> None:
        self.server = server
        self.hybrid = hybrid
        self.limit = limit
        self.loop = LoopThread(server.loop_thread, threading.get_native_id())
        self.active = threading.Event()  # set while the loop serves inline; cleared by the relief thread
        self.since = 0.0  # loop thread writes, relief thread reads: when the batch began; 0: none
        # Whoever hands over or resumes (the relief thread, or the loop thread holding loop_lock):
        self.resumes = 0.0  # when the loop serves inline again
        self.resumed_at = 0.0
        self.cooldown = COOLDOWN_MIN

    def begin(self) -> None:
        """The loop thread starts serving a batch."""
        self.since = time.monotonic()
        if not self.active.is_set():
            self.active.set()

    def end(self) -> None:
        """The loop thread served its batch."""
        self.since = 0.0

    def hand_over(self, why: str) -> None:
        now = time.monotonic()
        recent = now - self.resumed_at < COOLDOWN_RESET
        self.cooldown = min(COOLDOWN_MAX, self.cooldown * 2) if recent else COOLDOWN_MIN
        self.hybrid.inline = False
        self.resumes = now + self.cooldown
        log.debug("serving on the threads for %gs: %s", self.cooldown, why)

    def resume(self, now: float) -> None:
        """End the cool-down: serve on the loop again. Called holding loop_lock."""
        if not self.hybrid.inline and now >= self.resumes:
            self.hybrid.inline = True
            self.resumed_at = now

    def start(self, housekeeping: Callable[[], None]) -> None:
        threading.Thread(target=self._watch, args=(housekeeping,), name="fleet-relief", daemon=True).start()

    def _watch(self, housekeeping: Callable[[], None]) -> None:
        server, active, hybrid = self.server, self.active, self.hybrid
        last_busy = time.monotonic()
        looks = asleep = 0  # looks inside a batch, and how many found the loop thread asleep on I/O
        last_asleep_in = 0.0  # the batch the last look found asleep in
        watched = cpu_at_first_look = 0.0  # the batch being timed, and the loop's CPU clock then
        while not server.closing:
            active.wait()
            time.sleep(RELIEF_CHECK)
            since = self.since
            now = time.monotonic()
            if not since:
                if now - last_busy >= RELIEF_IDLE:
                    active.clear()
                    if self.since:  # NOTE: begin() ran between the check and the clear
                        active.set()
                continue
            last_busy = now
            # NOTE: a batch begun before a hand-over is watched too: the loop
            # thread serving it is not polling. Its CPU time counts from the
            # first look at it, not its wall time: a thread preempted on a busy
            # machine is not computing, and the threads would not serve faster.
            cpu = self.loop.cpu()
            if since != watched:
                watched, cpu_at_first_look = since, cpu
            elif cpu - cpu_at_first_look >= self.limit or now - since >= WALL_LIMIT_FACTOR * self.limit:
                ran = f"{(cpu - cpu_at_first_look) * 1000:.0f} ms of CPU in {(now - since) * 1000:.0f} ms"
                self._relieve(since, housekeeping, f"a request ran {ran} on the loop")
                continue
            looks += 1
            if self.loop.asleep_on_io():
                asleep += 1
                if last_asleep_in == since and self.since == since:
                    self._relieve(since, housekeeping, "a request waited on I/O")
                    looks = asleep = 0
                    last_asleep_in = 0.0
                    continue
                last_asleep_in = since
            if looks >= WAIT_SAMPLES:
                if asleep >= WAIT_SHARE * looks and hybrid.inline:
                    self.hand_over(f"requests waited on I/O in {asleep} of {looks} looks")
                looks = asleep = 0

    def _relieve(self, since: float, housekeeping: Callable[[], None], why: str) -> None:
        server = self.server
        with server.loop_lock:
            if self.since != since:
                return  # it finished while we waited for the loop
            self.hand_over(why)
            self.resumes = float("inf")  # not before this relief ends
            self.hybrid.to_pool()
            while self.since == since and not server.closing:
                wasyncore.loop(timeout=RELIEF_POLL, map=server.map, use_poll=True, count=1)
                housekeeping()
            self.resumes = time.monotonic() + self.cooldown


class FleetServer:
    """The worker's HTTP side: waitress channels and threads on already-listening sockets."""

    def __init__(self, app: Callable[..., Any], sockets: list[socket.socket], settings: Settings) -> None:
        self.instance = settings.instance
        self.settings = settings
        self.map: dict[int, Any] = {}
        self.draining = False
        self.busy: dict[int, float] = {}  # thread -> when its request began; each thread its own key
        self.fresh = 0  # loop thread: connections accepted with bytes waiting, not yet read
        self.accepted = 0  # loop thread: connections accepted so far
        self._done = itertools.count(1)
        self.requests_done = 0
        self.recycle_requested = False
        self.recycle_limit = 0  # requests after which to drain and exit; 0: never
        self.addresses = [describe(s) for s in sockets]
        self.deadlines = Deadlines(settings)
        self.limit = settings.connection_limit
        self.closed_since = 0.0  # loop thread: when the gate last closed for want of a thread; 0: open
        self.done_when_closed = 0  # loop thread: requests_done then
        self.seen_empty = 0.0  # loop thread: when the gate last saw no connection waiting for it
        self.owed = 0  # loop thread: connections the patience let in this pass, not yet accepted
        adjustments: dict[str, Any] = dict(
            threads=max(1, settings.threads),
            # NOTE: fleet's gate enforces the limit, by closing idle connections
            # first; waitress's own (which just stops accepting) stays out of the way.
            connection_limit=settings.connection_limit + 64,
            channel_timeout=int(max(1, settings.channel_timeout)),
            asyncore_use_poll=True,
            ident="fleet",
        )
        self.loop_thread = threading.get_ident()
        # NOTE: the event loop's owner. The loop thread holds it for each poll
        # pass and each housekeeping pass; the relief thread for as long as it
        # stands in for a loop thread that is busy serving a long request.
        self.loop_lock = threading.Lock()
        self.closing = False
        self.inline = settings.threads == 0
        self.pending: deque[Any] = deque()
        self.hybrid: HybridDispatcher | None = None
        self.relief: Relief | None = None
        if self.inline:
            inline = InlineDispatcher()
            self.pending = inline.pending
            self.dispatcher: ThreadedTaskDispatcher = inline
            # NOTE: past this much buffered output, waitress's write_soon() waits
            # for the event loop to flush: inline, that is the loop waiting on
            # itself. Unbounded, big bodies spill to a temporary file instead.
            adjustments["outbuf_high_watermark"] = 2**62
        else:
            adjustments["outbuf_high_watermark"] = OUTPUT_SPOOL
            if settings.inline_max > 0:
                # NOTE: past OUTPUT_SPOOL, a response served on the loop waits for
                # its own flush: a request that waits, and the relief thread then
                # flushes it.
                self.hybrid = HybridDispatcher(self.loop_thread)
                self.pending = self.hybrid.pending
                self.dispatcher = self.hybrid
                self.relief = Relief(self, self.hybrid, settings.inline_max)
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
        parser = type("FleetParser", (FleetParser,), {"max_headers": settings.max_headers})
        channel = type("FleetChannel", (FleetChannel,), {"parser_class": parser})
        for listener in self.listeners:
            listener.channel_class = channel
            listener.fleet = self
            listener.readable = self._gate(listener.readable)
            listener.handle_accept = self._accept_batch(listener.handle_accept)
            if self.inline:
                # The loop polls again right after serving: no wake-up needed.
                listener.pull_trigger = lambda: None
            elif self.hybrid:
                listener.pull_trigger = self._wake_from_pool(listener.pull_trigger)
        self.trigger = self.listeners[0].trigger
        # NOTE: looked at only while the gate is closed, when the event loop's
        # own poll leaves the listening sockets out.
        self.queues = select.poll()
        for listener in self.listeners:
            self.queues.register(listener.socket.fileno(), select.POLLIN)
        self.signal_pipe = _SignalPipe(self.map)
        self._not_channels = len(self.map)  # listeners, their triggers, the signal pipe

    # -- the accept gate (loop thread) -------------------------------------------------

    def _has_capacity(self) -> bool:
        """Whether a new request would find a thread free (inline: the loop itself)."""
        busy = len(self.busy) - (self.hybrid is not None and self.loop_thread in self.busy)
        working = busy + len(self.dispatcher.queue) + len(self.pending)
        return working + self.fresh < max(1, self.settings.threads)

    def _has_room(self) -> bool:
        """Whether a connection may be added, closing the longest-idle ones at the limit."""
        return len(self.map) - self._not_channels < self.limit or self._make_room()

    def _make_room(self) -> bool:
        idle = [c for c in self.channels() if isinstance(c, FleetChannel) and c.idle()]
        if not idle:
            return False
        idle.sort(key=lambda c: c.last_activity)
        # NOTE: a batch, so a flood of new connections does not sort on every accept.
        for channel in idle[:max(1, self.limit // 64)]:
            channel.handle_close()
        return True

    def _gate(self, readable: Callable[[], bool]) -> Callable[[], bool]:
        """Accept only while a thread is free, and room is left or can be made.

        waitress accepts whatever the kernel offers and queues the requests
        behind busy threads; a worker stuck on slow requests would hoard
        connections that an idle sibling could serve at once. Left in the
        shared kernel queue, they go to whichever worker can take them. Only
        requests count: a connection that sends nothing (a preconnect, a port
        scan, an idle keep-alive) never closes the gate. When every worker is
        busy, a connection this worker has seen waiting for its patience
        (longer the more connections it holds) goes to it if it is getting
        through its requests, never if its threads are stuck.
        """
        def gated() -> bool:
            # NOTE: readable() also runs waitress's idle-connection maintenance: call it first.
            if not (readable() and self._has_room()):
                return False
            if self._has_capacity():
                self.seen_empty = time.monotonic()  # NOTE: whatever waits is accepted in this pass
                self.owed = 0
                return True
            return self._patience_over()

        return gated

    def _patience_over(self) -> bool:
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
        if not self.closed_since:
            self._close_gate(now)
            return False
        if not self.queues.poll(0):
            self.seen_empty = now
            return False
        held = len(self.map) - self._not_channels
        patience = min(GATE_PATIENCE_MAX, GATE_PATIENCE + GATE_PATIENCE_PER_CONNECTION * held)
        waited = now - max(self.seen_empty, self.closed_since)
        if waited < patience or self.requests_done == self.done_when_closed:
            return False
        self.owed = min(ACCEPT_BATCH, int(waited / patience))
        return True

    def _close_gate(self, now: float) -> None:
        self.closed_since = now
        self.done_when_closed = self.requests_done

    def _accept_batch(self, handle_accept: Callable[[], None]) -> Callable[[], None]:
        """Accept up to ACCEPT_BATCH connections a pass while the gate stays open.

        One per pass (waitress's way) lets a burst of silent connections, each
        pass slower with every connection it adds, queue a real client's
        connection behind them for seconds.
        """
        def accept() -> None:
            for _ in range(ACCEPT_BATCH):
                before = self.accepted
                handle_accept()
                if self.accepted == before or not self._has_room():
                    return
                if not self._has_capacity():
                    self.owed -= 1
                    if self.owed > 0:
                        continue
                    self._close_gate(time.monotonic())  # NOTE: patience again before the next one
                    return
                self.closed_since = 0.0

        return accept

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

    # -- called by the holder of loop_lock ------------------------------------------------

    def start_accepting(self) -> None:
        for listener in self.listeners:
            listener.accepting = True

    def stop_accepting(self) -> None:
        """Leave new connections in the kernel's queue, where sibling workers take them."""
        for listener in self.listeners:
            listener.accepting = False

    def channels(self) -> Iterator[HTTPChannel]:
        return (obj for obj in list(self.map.values()) if isinstance(obj, HTTPChannel))

    def sweep(self, now: float) -> None:
        """Close connections past a deadline (see :class:`Deadlines`)."""
        self.deadlines.sweep(self.channels(), now)

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
        pending, relief, hybrid = self.pending, self.relief, self.hybrid
        if relief is not None:
            relief.begin()
        try:
            while pending:
                if hybrid is not None and not hybrid.inline:
                    hybrid.to_pool()  # NOTE: the relief thread or the last batch handed over
                    return
                try:
                    task = pending.popleft()
                except IndexError:
                    return  # the relief thread handed it to the pool
                try:
                    task.service()
                except Exception:
                    log.exception("Exception when servicing %r", task)
        finally:
            if relief is not None:
                relief.end()

    def resume_inline(self, now: float) -> None:
        """End the cool-down after a hand-over: serve on the loop again. Called holding loop_lock."""
        if self.relief is not None:
            self.relief.resume(now)

    def start_relief(self, housekeeping: Callable[[], None]) -> None:
        """Watch requests served on the loop; stand in for the loop when one waits or runs long.

        ``housekeeping`` is the worker's pass between polls (watchdog, drain,
        signals), run by the relief thread while it holds the loop.
        """
        if self.relief is not None:
            self.relief.start(housekeeping)

    def shutdown(self) -> None:
        self.closing = True
        if self.relief is not None:
            self.relief.active.set()  # let the relief thread see closing
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
