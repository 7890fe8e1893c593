"""Where a request is served once read: the dispatch strategies, one class each behind one interface.

* :class:`InlineDispatch` (FLEET_THREADS=0): on the event-loop thread, after the poll pass.
* :class:`PoolDispatch` (FLEET_INLINE_MAX=0): on waitress's thread pool.
* :class:`HybridDispatch` (the default): on the loop while that costs nothing,
  on the pool once a request waits or runs long (:class:`Relief`, :class:`LoopThread`).

:func:`choose` picks one from the settings. Each is waitress's dispatcher (a
:class:`fleet.waitress_api.ThreadPool`), so waitress hands it every request.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from threading import get_ident
from time import monotonic as _monotonic  # NOTE: bound once, as it is read for every request served inline
from typing import Any

from fleet.settings import Settings
from fleet.waitress_api import EventLoop, ThreadPool

log = logging.getLogger("fleet.worker")

# A response body in chunks pauses while its client is slow to read it
# (fleet.waitress_api.PAUSE_AT); what one chunk, or a list of them, puts in
# the output buffer is spooled (past 1 MiB to a temporary file) up to this
# much before the thread writing it waits for the client.
OUTPUT_SPOOL = 256 * 2**20
# How often the relief thread looks at the request the event loop is serving
# inline, and how long it polls in one pass while it holds the loop. Each
# look takes the GIL from the loop thread (a context switch or two on its
# CPU), so while looks find only requests that end between two looks (an app
# that neither waits nor runs long), the interval doubles up to
# RELIEF_CHECK_MAX; a look that finds a request it saw before, or the loop
# asleep on I/O, brings it back to RELIEF_CHECK.
RELIEF_CHECK = 0.002
RELIEF_CHECK_MAX = 0.016
RELIEF_POLL = 0.005
# The relief thread samples the loop thread while it serves requests: once at
# least WAIT_SAMPLES samples found it serving and WAIT_SHARE of them found it
# asleep on I/O, or two samples in a row did, requests that wait are being
# served one at a time, and the threads take over.
WAIT_SAMPLES = 8
WAIT_SHARE = 0.5
# A request that neither computes FLEET_INLINE_MAX nor is seen waiting on I/O
# (a lock, a preempted thread) is stood in for after this many times it in
# wall time, so the worker's other connections are never left unpolled long.
WALL_LIMIT_FACTOR = 10
# The loop thread polls again once it has served requests on the loop for this
# long, and serves the rest after: requests read meanwhile queue behind them,
# served in turn rather than behind a whole pass's worth of requests more.
INLINE_SLICE = 0.002
# With no request served inline for this long, the relief thread sleeps until one is.
RELIEF_IDLE = 0.2
# After a request waited or ran long inline, requests go to the pool for a
# while: COOLDOWN_MIN, doubled each time the loop tries again and requests
# still wait within COOLDOWN_RESET of it, up to COOLDOWN_MAX. A one-off wait
# costs a second of hand-offs; an app that waits is tried inline twice a minute.
COOLDOWN_MIN = 1.0
COOLDOWN_MAX = 30.0
COOLDOWN_RESET = 5.0

Housekeeping = Callable[[], None]


class Dispatch(ThreadPool):
    """The interface every strategy has; as is, it serves every request on the pool.

    ``pending`` holds the requests the loop thread serves after its poll pass
    (appended while waitress holds the channel's requests_lock, which
    serving takes again); the loop thread reads it after each pass.
    """

    # NOTE: past this much buffered output, waitress's write_soon() waits for
    # the event loop to flush (its outbuf_high_watermark).
    output_limit = OUTPUT_SPOOL

    def __init__(self, loop: EventLoop, threads: int) -> None:
        super().__init__()
        self.loop = loop
        self.loop_thread = threading.get_ident()  # built by the loop thread
        self.pending: deque[Any] = deque()
        self.start_threads(threads)

    def wake(self, pull_trigger: Callable[[], Any]) -> Callable[[], Any]:
        """How a served request wakes the loop to send its response: waitress's trigger."""
        return pull_trigger

    def working(self, busy: dict[int, float]) -> int:
        """Requests that hold a thread or wait for one; ``busy``: thread -> when its request began."""
        return len(busy) + self.queued() + len(self.pending)

    def stands_in(self) -> int | None:
        """The thread whose long request another thread serves around (not stuck), if any."""
        return self.loop_thread

    def serve_pending(self) -> None:
        """Serve what the last poll pass left for the loop thread. Loop thread, after the pass."""

    def start(self, housekeeping: Housekeeping) -> None:
        """The worker serves now; ``housekeeping`` is its pass between polls."""

    def resume(self, now: float) -> None:
        """Housekeeping: end a cool-down that is over. Called holding the loop's lock."""

    def close(self) -> None:
        """Stop serving: cancel what is queued, stop the threads."""
        self.shutdown(cancel_pending=True, timeout=1)


class PoolDispatch(Dispatch):
    """FLEET_INLINE_MAX=0: waitress's way, every request to a pool thread."""


class InlineDispatch(Dispatch):
    """FLEET_THREADS=0: serve each request on the event-loop thread, after the poll pass that read it.

    waitress hands every request to a pool thread (a lock, a condition
    variable, the GIL changing hands) and the thread wakes the loop back
    through a pipe. For an app that only computes, that is overhead: inline,
    a worker runs one request at a time, like a gunicorn sync worker that keeps
    connections alive. A request that waits on I/O stalls every connection of
    its worker, so this suits apps that do not wait, with one worker per CPU.
    """

    # NOTE: past output_limit, write_soon() waits for the event loop to flush:
    # inline, that is the loop waiting on itself. Unbounded, big bodies spill
    # to a temporary file instead.
    output_limit = 2**62

    def start_threads(self, count: int) -> None:
        pass  # no pool

    def take(self, task: Any) -> None:
        self.pending.append(task)

    add_task = take  # NOTE: waitress's call, without ThreadPool.add_task's: one call less a request

    def wake(self, pull_trigger: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: None  # the loop polls again right after serving: no wake-up needed

    def stands_in(self) -> int | None:
        return None  # nobody: a long request holds the whole worker

    def serve_pending(self) -> None:
        pending = self.pending
        while pending:
            task = pending.popleft()
            _serve(task)

    def stop(self, cancel_pending: bool, timeout: float) -> bool:
        self.pending.clear()
        return True


class HybridDispatch(Dispatch):
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

    # NOTE: past OUTPUT_SPOOL, a response served on the loop waits for its own
    # flush: a request that waits, and the relief thread then flushes it.

    def __init__(self, loop: EventLoop, threads: int, inline_max: float) -> None:
        # Written by whoever hands over or resumes (the relief thread, or the
        # loop thread holding the loop's lock); read by the loop thread.
        self.inline = True  # False while relieved and during the cool-down
        super().__init__(loop, threads)
        self.relief = Relief(self, inline_max)

    def take(self, task: Any) -> None:
        if self.inline and get_ident() == self.loop_thread:
            self.pending.append(task)
        else:
            self.to_pool(task)

    add_task = take  # NOTE: waitress's call, without ThreadPool.add_task's: one call less a request

    def wake(self, pull_trigger: Callable[[], Any]) -> Callable[[], Any]:
        """Wake the loop when a pool thread finishes; the loop thread itself polls next anyway."""
        loop_thread = self.loop_thread

        def wake() -> None:
            if get_ident() != loop_thread:
                pull_trigger()

        return wake

    def working(self, busy: dict[int, float]) -> int:
        # NOTE: the loop thread's own request is stood in for by the relief thread.
        return len(busy) - (self.loop_thread in busy) + self.queued() + len(self.pending)

    def all_to_pool(self) -> int:
        """Hand every request still waiting for the loop to the pool; return how many."""
        moved = 0
        while True:
            try:
                task = self.pending.popleft()
            except IndexError:
                return moved
            self.to_pool(task)
            moved += 1

    def serve_pending(self) -> None:
        pending, relief = self.pending, self.relief
        started = relief.begin()
        try:
            while True:
                if not self.inline:
                    self.all_to_pool()  # NOTE: the relief thread or the last request handed over
                    return
                try:
                    task = pending.popleft()
                except IndexError:
                    return  # the relief thread handed it to the pool
                _serve(task)
                if not pending:
                    return
                now = _monotonic()
                if now - started >= INLINE_SLICE:
                    return  # NOTE: the loop polls, and what it reads queues behind the rest
                relief.since = now  # NOTE: the next request's start
        finally:
            relief.end()

    def start(self, housekeeping: Housekeeping) -> None:
        """Watch requests served on the loop; stand in for the loop when one waits or runs long.

        ``housekeeping`` is the worker's pass between polls (watchdog, drain,
        signals), run by the relief thread while it holds the loop.
        """
        self.relief.start(housekeeping)

    def resume(self, now: float) -> None:
        self.relief.resume(now)

    def close(self) -> None:
        self.relief.close()
        super().close()

    def stop(self, cancel_pending: bool, timeout: float) -> bool:
        self.all_to_pool()
        return super().stop(cancel_pending, timeout)


def _serve(task: Any) -> None:
    try:
        task.service()
    except Exception:
        log.exception("Exception when servicing %r", task)


def choose(loop: EventLoop, settings: Settings) -> Dispatch:
    """The strategy the settings ask for."""
    if settings.threads == 0:
        return InlineDispatch(loop, 0)
    if settings.inline_max > 0:
        return HybridDispatch(loop, settings.threads, settings.inline_max)
    return PoolDispatch(loop, settings.threads)


class LoopThread:
    """Whether the event-loop thread is asleep on I/O right now, and the CPU its requests used, as
    another thread sees them.

    The kernel says where a sleeping thread waits (``/proc/.../wchan``): a
    socket, a pipe, a timer are I/O that other requests could use the CPU
    during; a futex is the GIL or a lock, which threads would not make
    faster; a running or preempted thread has no wait channel. Where the
    kernel does not tell, the thread's CPU clock between two looks is used
    instead (a preempted thread then looks like a waiting one).

    The CPU the thread spends in Python's garbage collector is not its
    request's: a full collection holds the GIL for as long as it takes (18-20
    ms in a Django worker, every ~4,000 requests), so no thread could stand in
    meanwhile, and counted, it sent the worker to the pool for a cool-down
    after a request that computed for 2 ms.
    """

    def __init__(self, thread_id: int, native_id: int) -> None:
        self._thread = thread_id
        self._clock = time.pthread_getcpuclockid(thread_id)
        self._last = (0.0, 0.0)  # (wall, CPU) at the last look, for the fallback
        # Written by the loop thread in its collections (holding the GIL), read by the relief thread,
        # one tuple so that it is read whole: CPU seconds of the thread's collections that ended,
        # and its CPU clock when the collection under way began (0.0: none is).
        self._collections = (0.0, 0.0)
        self._wchan: int | None = None  # open for the worker's life, as the loop thread is
        try:
            self._wchan = os.open(f"/proc/self/task/{native_id}/wchan", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass
        gc.callbacks.append(self._collection)

    def _collection(self, phase: str, info: dict[str, int]) -> None:
        """gc's callback, on the thread that collects: time the loop thread's collections."""
        if get_ident() != self._thread:
            return
        collected, since = self._collections
        if phase == "start":
            self._collections = (collected, time.thread_time())
        elif since:
            self._collections = (collected + time.thread_time() - since, 0.0)

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
        """Seconds of CPU the thread has used, less its garbage collections.

        A collection can let other threads run before it ends (a finalizer
        that closes a file or a database releases the GIL): the part of it
        under way counts as collecting too.
        """
        now = time.clock_gettime(self._clock)
        collected, since = self._collections
        return now - collected - (now - since if since else 0.0)

    def close(self) -> None:
        """Stop timing collections. (The wait channel stays open: the relief thread may still look.)"""
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._collection)


class Relief:
    """Watch what serving on the event loop costs; hand the loop's work to the pool when requests wait.

    The loop thread marks when each request it serves began (:meth:`begin`,
    :meth:`end`, ``since``: a clock read, nothing more, as this is every
    fast request's path). A relief thread looks at the loop thread every
    RELIEF_CHECK while it serves: asleep on I/O in two looks in a row, or in
    WAIT_SHARE of WAIT_SAMPLES looks, the requests wait and are served one
    at a time; the threads take over. A request still waiting, or one that
    used FLEET_INLINE_MAX of CPU, is stood in for: the relief thread takes
    the loop over, hands the requests queued behind to the pool and runs
    the loop until the request ends. Then the pool serves for a cool-down
    (COOLDOWN_MIN up to COOLDOWN_MAX).

    The limit is a request's, not a poll pass's: many short requests that
    only compute are served fastest in turn on the loop. On the pool the
    same CPU work would be shared out by the GIL at the same pace, plus its
    hand-offs (0.3 ms a request more for a Django view; bench/analysis.md).
    The relief thread sleeps while nothing is served inline, so an idle
    worker uses no CPU.
    """

    def __init__(self, hybrid: HybridDispatch, limit: float) -> None:
        self.hybrid = hybrid
        self.loop = hybrid.loop
        self.limit = limit
        # NOTE: built on the loop thread, so its native id is this thread's.
        self.loop_thread = LoopThread(hybrid.loop_thread, threading.get_native_id())
        self.active = threading.Event()  # set while the loop serves inline; cleared by the relief thread
        self.closing = False  # set once by close(); read by the relief thread
        self.since = 0.0  # loop thread writes, relief thread reads: when its request began; 0: none
        # Whoever hands over or resumes (the relief thread, or the loop thread holding the loop's lock):
        self.resumes = 0.0  # when the loop serves inline again
        self.resumed_at = 0.0
        self.cooldown = COOLDOWN_MIN

    def begin(self) -> float:
        """The loop thread starts serving what a poll pass read, with its first request; returns when."""
        # NOTE: since is set before the event is read, as _watch() clears the event before it reads since.
        self.since = now = _monotonic()
        if not self.active.is_set():
            self.active.set()
        return now

    def end(self) -> None:
        """The loop thread served what it will for now."""
        self.since = 0.0

    def hand_over(self, why: str) -> None:
        now = time.monotonic()
        recent = now - self.resumed_at < COOLDOWN_RESET
        self.cooldown = min(COOLDOWN_MAX, self.cooldown * 2) if recent else COOLDOWN_MIN
        self.hybrid.inline = False
        self.resumes = now + self.cooldown
        log.debug("serving on the threads for %gs: %s", self.cooldown, why)

    def resume(self, now: float) -> None:
        """End the cool-down: serve on the loop again. Called holding the loop's lock."""
        if not self.hybrid.inline and now >= self.resumes:
            self.hybrid.inline = True
            self.resumed_at = now

    def close(self) -> None:
        self.closing = True
        self.active.set()  # let the relief thread see closing
        self.loop_thread.close()

    def start(self, housekeeping: Housekeeping) -> None:
        threading.Thread(target=self._watch, args=(housekeeping,), name="fleet-relief", daemon=True).start()

    def _watch(self, housekeeping: Housekeeping) -> None:
        active, hybrid = self.active, self.hybrid
        last_busy = time.monotonic()
        looks = asleep = 0  # looks while serving, and how many found the loop thread asleep on I/O
        last_look_asleep = False  # the last look found it serving and asleep on I/O
        watched = cpu_at_first_look = 0.0  # the request being timed, and the loop's CPU clock then
        interval = RELIEF_CHECK
        while not self.closing:
            if not active.is_set():
                active.wait()
                interval = RELIEF_CHECK  # NOTE: serving again after a quiet spell: look closely
            time.sleep(interval)
            since = self.since
            now = time.monotonic()
            if not since:
                last_look_asleep = False
                interval = min(RELIEF_CHECK_MAX, 2 * interval)
                if now - last_busy >= RELIEF_IDLE:
                    active.clear()
                    if self.since:  # NOTE: begin() ran between the check and the clear
                        active.set()
                continue
            last_busy = now
            # NOTE: a request seen at the last look too is one worth watching closely.
            interval = RELIEF_CHECK if since == watched else min(RELIEF_CHECK_MAX, 2 * interval)
            # NOTE: a request begun before a hand-over is watched too: the loop
            # thread serving it is not polling. Its CPU time counts from the
            # first look at it, not its wall time: a thread preempted on a busy
            # machine is not computing, and the threads would not serve faster.
            cpu = self.loop_thread.cpu()
            if since != watched:
                watched, cpu_at_first_look = since, cpu
            elif cpu - cpu_at_first_look >= self.limit or now - since >= WALL_LIMIT_FACTOR * self.limit:
                ran = f"{(cpu - cpu_at_first_look) * 1000:.0f} ms of CPU in {(now - since) * 1000:.0f} ms"
                self._relieve(since, housekeeping, f"a request ran {ran} on the loop")
                continue
            looks += 1
            if self.loop_thread.asleep_on_io():
                interval = RELIEF_CHECK
                asleep += 1
                if last_look_asleep:
                    self._relieve(since, housekeeping, "requests waited on I/O in two looks in a row")
                    looks = asleep = 0
                    last_look_asleep = False
                    continue
                last_look_asleep = True
            else:
                last_look_asleep = False
            if looks >= WAIT_SAMPLES:
                if asleep >= WAIT_SHARE * looks and hybrid.inline:
                    self.hand_over(f"requests waited on I/O in {asleep} of {looks} looks")
                looks = asleep = 0

    def _relieve(self, since: float, housekeeping: Housekeeping, why: str) -> None:
        """Stand in for the loop thread while it serves the request begun at ``since``."""
        loop = self.loop
        with loop.lock:
            if not since or self.since != since:
                return  # it finished while we waited for the loop
            self.hand_over(why)
            self.resumes = float("inf")  # not before this relief ends
            self.hybrid.all_to_pool()
            while self.since == since and not self.closing:
                loop.poll_once(RELIEF_POLL)
                housekeeping()
            self.resumes = time.monotonic() + self.cooldown
