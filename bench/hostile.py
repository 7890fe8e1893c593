"""Hostile clients against a peer, with legitimate traffic measured alongside.

Each attack runs against 127.0.0.1 only, for a bounded time with a bounded number of
connections, and closes every socket it opened before it returns. While it runs, a
probe opens a NEW connection every 100 ms for ``GET /`` with a 2 s limit, as a
visitor arriving during the attack would: the share it got answered (2xx within 2 s)
and its latency are the legitimate client's view. The attack's own connections say
what the peer did about them: its *verdict* (answered, rejected with a status, closed
by the server, or left hanging).

    silent            N connections that send nothing
    idle-keepalive    N connections that each send one request, then stay quiet
    slowloris         N connections sending their headers a byte a second
    slow-body         N POSTs with a 100 kB Content-Length, sending a byte a second
    many-headers      4 clients in a loop, each request carrying 10,000 headers
    kill-storm        fleet only: kill -9 one worker every second (systemd replaces them)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.peers import Peer, PeerError

PROBE_EVERY = 0.1
PROBE_TIMEOUT = 2.0
CONNECT_TIMEOUT = 3.0
RAMP_MAX = 5.0  # the longest an attack may take to open its connections before probing starts

ATTACKS: dict[str, tuple[str, int]] = {
    # name -> (what it is, connections)
    "silent": ("TCP connections that send nothing", 64),
    "idle-keepalive": ("keep-alive connections: one request each, then quiet", 2000),
    "slowloris": ("connections sending their headers a byte per second", 400),
    "slow-body": ("POSTs of Content-Length 100 kB sending a byte per second", 400),
    "many-headers": ("clients in a loop, each request with 10,000 headers", 4),
    "kill-storm": ("kill -9 of one worker every second (fleet only)", 0),
}


@dataclass
class Conn:
    """The fate of one attack connection."""

    opened: bool = False
    status: int | None = None  # the first response status the server sent on it
    closed_at: float | None = None  # seconds after the attack began, when the server ended it
    error: str = ""  # connect failure, reset...
    requests: int = 0


@dataclass
class Hostile:
    """One attack on one peer: what legitimate clients got, and what the peer did."""

    peer: str
    attack: str
    seconds: float
    probes: int
    answered: int  # 2xx within PROBE_TIMEOUT
    latencies_ms: list[float] = field(default_factory=list)  # of the answered probes
    verdict: str = ""
    recovery_s: float | None = 0.0  # after the attack ended, until the peer served again

    @property
    def answered_pct(self) -> float:
        return 100.0 * self.answered / max(1, self.probes)

    @property
    def p99_ms(self) -> float | None:
        """p99 over every probe, an unanswered one counting as slower than any answer."""
        if not self.probes or self.answered < 0.99 * self.probes:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.99 * self.probes))]

    @property
    def p50_ms(self) -> float | None:
        if not self.probes or self.answered < 0.5 * self.probes:
            return None
        return statistics.median(sorted(self.latencies_ms) + [float("inf")] * (self.probes - self.answered))


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit: the attacks hold thousands."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run(peer: Peer, attack: str, seconds: float) -> Hostile:
    """Run ``attack`` on ``peer`` for ``seconds`` of probing; wait until it serves again."""
    result = asyncio.run(_run(peer, attack, seconds))
    started = time.monotonic()
    try:
        peer.wait_ready(timeout=60)
        result.recovery_s = time.monotonic() - started
    except PeerError:
        result.recovery_s = None
    return result


async def _run(peer: Peer, attack: str, seconds: float) -> Hostile:
    conns: list[Conn] = []
    t0 = time.monotonic()
    ready = asyncio.Event()
    stop = asyncio.Event()
    note: list[str] = []
    task = asyncio.create_task(_ATTACKS[attack](peer, conns, t0, ready, stop, note))
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(ready.wait(), RAMP_MAX)
    probes: list[float | None] = []
    await _probe(peer.port, seconds, probes)
    stop.set()
    # NOTE: every attack task closes its sockets in a finally; cancel is the backstop.
    try:
        await asyncio.wait_for(task, 10)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    answered = [p for p in probes if p is not None]
    return Hostile(
        peer=peer.key,
        attack=attack,
        seconds=seconds,
        probes=len(probes),
        answered=len(answered),
        latencies_ms=[round(x, 2) for x in answered],
        verdict=note[0] if note else verdict(conns, ATTACKS[attack][1]),
    )


async def _probe(port: int, seconds: float, out: list[float | None]) -> None:
    """A new connection every PROBE_EVERY s for ``seconds``; each result in ``out`` (ms or None)."""
    tasks = []
    start = time.monotonic()
    n = 0
    while (now := time.monotonic()) < start + seconds:
        tasks.append(asyncio.create_task(_one_probe(port)))
        n += 1
        await asyncio.sleep(max(0.0, start + n * PROBE_EVERY - now))
    out += await asyncio.gather(*tasks)


async def _one_probe(port: int) -> float | None:
    started = time.monotonic()
    writer = None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            status = await _read_response(reader)
        return (time.monotonic() - started) * 1000 if status is not None and 200 <= status < 300 else None
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
        return None
    finally:
        if writer is not None:
            writer.transport.abort()


async def _read_response(reader: asyncio.StreamReader) -> int | None:
    """Read one response (head and Content-Length body); its status, or None at EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {lines[0]!r}")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return int(parts[1])


def verdict(conns: list[Conn], wanted: int) -> str:
    """What the server did to the attack's connections, in one line."""
    opened = sum(c.opened for c in conns)
    parts = [f"{opened} of {len(conns) or wanted} connected"]
    requests = sum(c.requests for c in conns)
    if requests > len(conns):
        parts.append(f"{requests} requests sent")
    statuses = Counter(c.status for c in conns if c.status is not None)
    if statuses:
        parts.append("answered " + ", ".join(f"{s} ×{n}" for s, n in sorted(statuses.items())))
    closed = [c.closed_at for c in conns if c.closed_at is not None]
    if closed:
        parts.append(f"server closed {len(closed)} (median after {statistics.median(closed):.1f} s)")
    errors = Counter(c.error for c in conns if c.error)
    if errors:
        parts.append(", ".join(f"{e} ×{n}" for e, n in errors.most_common(2)))
    held = sum(c.opened and c.closed_at is None for c in conns)
    parts.append(f"{held} held open to the end")
    return "; ".join(parts)


# -- the attacks -----------------------------------------------------------------------------

Attack = Callable[[Peer, list[Conn], float, asyncio.Event, asyncio.Event, list[str]], Awaitable[None]]


async def _connect(port: int, conn: Conn) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            pair = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, TimeoutError) as exc:
        conn.error = "connect timed out" if isinstance(exc, TimeoutError) else f"connect: {exc.strerror}"
        return None
    conn.opened = True
    return pair


async def _hold(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    conn: Conn,
    t0: float,
    stop: asyncio.Event,
    tick: Callable[[], bytes] | None,
) -> None:
    """Keep a connection until ``stop``; send ``tick()`` every second; note a response or EOF."""
    buffered = b""
    while not stop.is_set():
        try:
            data = await asyncio.wait_for(reader.read(65536), 1.0)
        except TimeoutError:
            if tick is not None:
                writer.write(tick())
            continue
        except OSError:
            conn.closed_at = time.monotonic() - t0
            conn.error = "reset by server"
            return
        if not data:
            conn.closed_at = time.monotonic() - t0
            return
        buffered += data
        if conn.status is None and b"\r\n" in buffered:
            with contextlib.suppress(ValueError, IndexError):
                conn.status = int(buffered.split(b" ", 2)[1])


async def _many(
    peer: Peer,
    conns: list[Conn],
    t0: float,
    ready: asyncio.Event,
    stop: asyncio.Event,
    count: int,
    first: bytes,
    drip: bytes,
) -> None:
    """Open ``count`` connections (100 connecting at a time), send ``first``, hold them all.

    With ``drip``, each connection then sends it a byte a second, from its own start.
    """
    gate = asyncio.Semaphore(100)
    tried = 0

    async def one(conn: Conn) -> None:
        nonlocal tried
        writer = None
        try:
            async with gate:
                if stop.is_set():
                    return
                pair = await _connect(peer.port, conn)
            tried += 1
            if tried >= count:
                ready.set()
            if pair is None:
                return
            reader, writer = pair
            if first:
                writer.write(first)
                conn.requests = 1
            await _hold(reader, writer, conn, t0, stop, _drip(drip) if drip else None)
        except OSError as exc:
            conn.error = f"{exc.strerror or exc}"
        finally:
            if writer is not None:
                writer.transport.abort()

    for _ in range(count):
        conns.append(Conn())
    tasks = [asyncio.create_task(one(c)) for c in conns]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ready.set()


def _drip(text: bytes) -> Callable[[], bytes]:
    """A byte of ``text`` per call, forever."""
    position = [0]

    def tick() -> bytes:
        byte = text[position[0] % len(text) : position[0] % len(text) + 1]
        position[0] += 1
        return byte

    return tick


async def silent(
    peer: Peer, conns: list[Conn], t0: float, ready: asyncio.Event, stop: asyncio.Event, note: list[str]
) -> None:
    await _many(peer, conns, t0, ready, stop, ATTACKS["silent"][1], b"", b"")


async def idle_keepalive(
    peer: Peer, conns: list[Conn], t0: float, ready: asyncio.Event, stop: asyncio.Event, note: list[str]
) -> None:
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    await _many(peer, conns, t0, ready, stop, ATTACKS["idle-keepalive"][1], request, b"")


async def slowloris(
    peer: Peer, conns: list[Conn], t0: float, ready: asyncio.Event, stop: asyncio.Event, note: list[str]
) -> None:
    first = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    await _many(peer, conns, t0, ready, stop, ATTACKS["slowloris"][1], first, b"X-Slow: a\r\n")


async def slow_body(
    peer: Peer, conns: list[Conn], t0: float, ready: asyncio.Event, stop: asyncio.Event, note: list[str]
) -> None:
    head = (
        b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    await _many(peer, conns, t0, ready, stop, ATTACKS["slow-body"][1], head, b"x")


MANY_HEADERS = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    + b"".join(b"X-H%05d: v\r\n" % i for i in range(10_000))
    + b"Connection: close\r\n\r\n"
)


async def many_headers(
    peer: Peer, conns: list[Conn], t0: float, ready: asyncio.Event, stop: asyncio.Event, note: list[str]
) -> None:
    """4 clients, each sending 10,000-header requests on new connections until ``stop``."""
    clients = ATTACKS["many-headers"][1]
    took: list[float] = []
    errors: Counter[str] = Counter()
    statuses: Counter[int | str] = Counter()

    async def client() -> None:
        while not stop.is_set():
            conn = Conn()
            conns.append(conn)
            pair = await _connect(peer.port, conn)
            if pair is None:
                errors[conn.error] += 1
                await asyncio.sleep(0.1)
                continue
            reader, writer = pair
            started = time.monotonic()
            try:
                async with asyncio.timeout(5.0):
                    writer.write(MANY_HEADERS)
                    conn.requests = 1
                    await writer.drain()
                    statuses[await _read_response(reader) or "EOF"] += 1
                    took.append(time.monotonic() - started)
            except TimeoutError:  # NOTE: before OSError, of which it is a subclass
                statuses["no answer in 5 s"] += 1
            except (OSError, asyncio.IncompleteReadError):
                statuses["closed or reset"] += 1
            except ValueError:
                statuses["not HTTP"] += 1
            finally:
                writer.transport.abort()

    ready.set()
    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    answers = ", ".join(f"{s} ×{n}" for s, n in statuses.most_common())
    median = f"; median {statistics.median(took) * 1000:.0f} ms per request" if took else ""
    failed = "".join(f"; {e} ×{n}" for e, n in errors.most_common(2))
    note.append(f"{sum(statuses.values())} requests: {answers or 'none answered'}{median}{failed}")


async def kill_storm(
    peer: Peer, conns: list[Conn], t0: float, ready: asyncio.Event, stop: asyncio.Event, note: list[str]
) -> None:
    """kill -9 one worker a second, taking turns, until ``stop``."""
    ready.set()
    kills = 0
    while not stop.is_set():
        workers = sorted(peer.workers())
        if workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(workers[kills % len(workers)], signal.SIGKILL)
                kills += 1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    note.append(f"{kills} workers killed, one a second")


_ATTACKS: dict[str, Attack] = {
    "silent": silent,
    "idle-keepalive": idle_keepalive,
    "slowloris": slowloris,
    "slow-body": slow_body,
    "many-headers": many_headers,
    "kill-storm": kill_storm,
}
