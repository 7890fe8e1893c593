"""Hostile clients, and the measurements taken while they attack: for the e2e suite and the bench.

Three parts, each usable alone against any HTTP server on 127.0.0.1:

- :class:`Horde` runs one attack (:class:`Attack`): many connections from one thread
  that send nothing, send a byte a second, flood, or never read; it replaces the
  connections the server closes and records when and how it closed them;
- :class:`Probe` asks ``GET /`` on a new connection every 100 ms, as a user would,
  and counts the answers that came within 2 s;
- :class:`Sampler` reads the workers' pid, restart count and resident memory from
  inside the container once a second.

Example::

    silent = Attack("8 silent connections", 8)
    with Sampler(fleet, ("1", "2")) as workers, Probe(fleet.port) as probe, Horde(fleet.port, silent):
        time.sleep(10)
    print(probe.summary(), workers.summary())
"""

from __future__ import annotations

import contextlib
import errno
import math
import resource
import selectors
import socket
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

from harness.net import HOST

if TYPE_CHECKING:
    from harness.fleet import Fleet

HELLO = b"Hello World!"

# --- the test process's own limits -------------------------------------------------------


def raise_open_files(wanted: int | None = None) -> int:
    """Raise this process's RLIMIT_NOFILE towards ``wanted`` (None: the hard limit); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted is None:
        wanted = hard
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- the attacks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    """What each of ``connections`` connections does, from connect to the end of the attack.

    ``head`` is sent at once; then ``drip`` one byte every ``drip_every`` seconds (cycling);
    ``flood`` is sent again and again as fast as the server takes it. With ``read`` the
    client reads and discards whatever comes back (and so notices a close); without it, it
    never reads. With ``reopen`` a connection the server closed is replaced by a new one,
    as a real attacker would.
    """

    name: str
    connections: int
    head: bytes = b""
    drip: bytes = b""
    drip_every: float = 1.0
    flood: bytes = b""
    read: bool = True
    reopen: bool = True
    rcvbuf: int = 0  # SO_RCVBUF for clients that never read: keeps their kernel buffers small
    rate: int = 1000  # new connections a second, at most


def request(method: str = "GET", path: str = "/", headers: str = "", body: bytes = b"") -> bytes:
    """Return an HTTP/1.1 request's bytes; ``headers`` are extra ``Name: value\\r\\n`` lines."""
    return f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n".encode() + body


# The classic shapes, as ``head`` and ``drip`` of an :class:`Attack`.
#: slowloris: a request line, then a header byte a second (``SLOWLORIS_DRIP``), never the blank line
SLOWLORIS_HEAD = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n".encode()
SLOWLORIS_DRIP = b"X-Slow: a\r\n"


def slow_body(length: int, path: str = "/") -> bytes:
    """The head of an upload of ``length`` bytes, whose body is then dripped (``drip=b"x"``)."""
    return request("POST", path, f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n")


def many_headers(count: int) -> bytes:
    """A GET carrying ``count`` headers (and ``Connection: close``), which a server must refuse."""
    return request(headers="".join(f"X-Many-{i}: v\r\n" for i in range(count)) + "Connection: close\r\n")


@dataclass
class _Conn:
    sock: socket.socket
    opened: float
    connected: bool = False
    out: bytes = b""  # bytes due now
    dripped: int = 0
    next_drip: float = 0.0
    first: bytes = b""  # the start of what the server sent
    received: int = 0


@dataclass
class HordeReport:
    """What the server did to an attack's connections."""

    name: str
    opened: int = 0
    connected: int = 0
    closed_by_server: int = 0
    close_ages: list[float] = field(default_factory=list)  # seconds from connect to the server's close
    oldest_at_end: float = 0.0  # age of the oldest connection still open when the attack ended
    statuses: Counter[int | None] = field(default_factory=Counter)  # first status per closed connection
    open_statuses: Counter[int | None] = field(default_factory=Counter)  # the same, of those open at the end
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    received: int = 0

    @property
    def held(self) -> int:
        """Connections still open when the attack ended."""
        return sum(self.open_statuses.values())

    @property
    def longest_lived(self) -> float:
        """The longest any connection stayed open (closed by the server, or still open at the end)."""
        return max([self.oldest_at_end, *self.close_ages])

    def summary(self) -> str:
        ages = sorted(self.close_ages)
        closes = (
            f"server closed {self.closed_by_server} (after {statistics.median(ages):.1f} s median, "
            f"{ages[-1]:.1f} s max)" if ages else "server closed none"
        )
        errors = f"; client errors {dict(self.errors)}" if self.errors else ""
        return (
            f"{self.opened} opened, {self.connected} connected, {closes}; oldest open at the end "
            f"{self.oldest_at_end:.1f} s; first status of the closed {_counts(self.statuses)}, "
            f"of the open {_counts(self.open_statuses)}; "
            f"sent {self.sent / 2**20:.1f} MiB, received {self.received / 2**20:.1f} MiB{errors}"
        )


class Horde:
    """Run one :class:`Attack` from a thread until the ``with`` ends; every socket is closed then.

    New connections are opened at most ``attack.rate`` a second. Thousands opened in one
    instant would be another attack, a burst of new connections and requests, whose effect
    depends on how fast this machine is at that moment; a test must not.
    """

    TICK = 0.02

    def __init__(self, port: int, attack: Attack) -> None:
        self.port = port
        self.attack = attack
        self.report = HordeReport(attack.name)
        self._stop = threading.Event()
        self._conns: dict[int, _Conn] = {}
        self._selector = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, name=f"horde-{attack.name}", daemon=True)
        self._crashed: BaseException | None = None

    def __enter__(self) -> Horde:
        raise_open_files(self.attack.connections + 1024)
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def open(self) -> int:
        return len(self._conns)

    def wait_connected(self, count: int, timeout: float) -> int:
        """Wait until ``count`` connections have completed their handshake (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.report.connected < count and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)
        return self.report.connected

    def stop(self) -> HordeReport:
        """End the attack, close every socket, return the report."""
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), f"the {self.attack.name} attack did not stop"
        if self._crashed is not None:
            crashed = self._crashed
            raise AssertionError(f"the {self.attack.name} attack failed: {crashed!r}") from crashed
        return self.report

    # -- the loop (the horde's thread only) --------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # noqa: BLE001 - handed to stop()
            self._crashed = error
        finally:
            now = time.monotonic()
            ages = [now - c.opened for c in self._conns.values() if c.connected]
            self.report.oldest_at_end = max(ages, default=0.0)
            self.report.open_statuses.update(status_of(c.first) for c in self._conns.values() if c.connected)
            for conn in list(self._conns.values()):
                self._forget(conn)
            self._selector.close()

    def _loop(self) -> None:
        attack = self.attack
        # NOTE: a token bucket holding one second's worth: connections the server closed
        # together may be replaced together, but the first ones are opened at `rate`.
        tokens, last = 0.0, time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            tokens, last = min(float(attack.rate), tokens + (now - last) * attack.rate), now
            missing = attack.connections - len(self._conns)
            if missing > 0 and (attack.reopen or self.report.opened < attack.connections):
                for _ in range(min(missing, int(tokens))):
                    self._open()
                    tokens -= 1
            for key, events in self._selector.select(self.TICK):
                conn = self._conns.get(key.fd)
                if conn is not None:
                    self._event(conn, events)
            if attack.drip:
                self._drip(time.monotonic())

    def _open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.attack.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.attack.rcvbuf)
        sock.setblocking(False)
        code = sock.connect_ex((HOST, self.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.report.errors[errno.errorcode.get(code, str(code))] += 1
            return
        conn = _Conn(sock, time.monotonic())
        self._conns[sock.fileno()] = conn
        self.report.opened += 1
        self._selector.register(sock, selectors.EVENT_WRITE)

    def _watch(self, conn: _Conn) -> None:
        events = selectors.EVENT_READ if self.attack.read else 0
        if conn.out or self.attack.flood:
            events |= selectors.EVENT_WRITE
        if events:
            self._selector.modify(conn.sock, events)
        else:
            # NOTE: nothing to wait for: a client that neither reads nor writes just holds.
            self._selector.unregister(conn.sock)

    def _event(self, conn: _Conn, events: int) -> None:
        if not conn.connected:
            code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.report.errors[errno.errorcode.get(code, str(code))] += 1
                self._forget(conn)
                return
            conn.connected = True
            conn.opened = time.monotonic()
            self.report.connected += 1
            conn.out = self.attack.head
            conn.next_drip = conn.opened + self.attack.drip_every
            self._watch(conn)
            if not conn.out and not self.attack.flood:
                return
            events |= selectors.EVENT_WRITE
        if events & selectors.EVENT_READ and not self._read(conn):
            return
        if events & selectors.EVENT_WRITE:
            self._write(conn)

    def _read(self, conn: _Conn) -> bool:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError as error:
            self._closed(conn, type(error).__name__)
            return False
        if not data:
            self._closed(conn, None)
            return False
        conn.received += len(data)
        self.report.received += len(data)
        if len(conn.first) < 16:
            conn.first += data[:16]
        return True

    def _write(self, conn: _Conn) -> None:
        if not conn.out and self.attack.flood:
            conn.out = self.attack.flood
        if not conn.out:
            self._watch(conn)
            return
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError as error:
            self._closed(conn, type(error).__name__)
            return
        self.report.sent += sent
        conn.out = conn.out[sent:]
        if not conn.out and not self.attack.flood:
            self._watch(conn)

    def _drip(self, now: float) -> None:
        drip, every = self.attack.drip, self.attack.drip_every
        for conn in list(self._conns.values()):
            if conn.connected and not conn.out and now >= conn.next_drip:
                byte = drip[conn.dripped % len(drip) : conn.dripped % len(drip) + 1]
                try:
                    sent = conn.sock.send(byte)
                except BlockingIOError:
                    continue
                except OSError as error:
                    self._closed(conn, type(error).__name__)
                    continue
                conn.dripped += sent
                self.report.sent += sent
                conn.next_drip = now + every

    def _closed(self, conn: _Conn, error: str | None) -> None:
        """The server closed (or reset) this connection."""
        report = self.report
        report.closed_by_server += 1
        report.close_ages.append(time.monotonic() - conn.opened)
        report.statuses[status_of(conn.first)] += 1
        if error:
            report.errors[error] += 1
        self._forget(conn)

    def _forget(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        self._conns.pop(fd, None)
        conn.sock.close()


def _counts(counter: Counter[int | None]) -> str:
    return "{" + ", ".join(f"{k or 'none'}: {v}" for k, v in sorted(counter.items(), key=str)) + "}"


def status_of(first: bytes) -> int | None:
    """Return the status code at the start of a response (``HTTP/1.1 408 ...``), or None."""
    parts = first.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:3].isdigit():
        return int(parts[1][:3])
    return None


# --- one connection, spoken to by hand ---------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes


@dataclass
class Exchange:
    """What came back on one connection: the responses parsed, and whether it was closed."""

    responses: list[Response]
    closed: bool  # the server closed the connection (EOF or reset) within the timeout
    left: bytes  # bytes after the last response that parse as none


def exchange(port: int, data: bytes, methods: list[str], timeout: float = 5.0) -> Exchange:
    """Send ``data`` on a new connection, read until the server closes it or ``timeout``; parse.

    ``methods`` are the requests' methods in order: a response to HEAD has no body whatever
    its Content-Length says (RFC 9112 6.3), which is how a client frames what follows it.
    """
    raw = bytearray()
    closed = False
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            raw += chunk
    responses, rest = parse_responses(bytes(raw), methods)
    return Exchange(responses, closed, rest)


def parse_responses(raw: bytes, methods: list[str]) -> tuple[list[Response], bytes]:
    """Split ``raw`` into responses framed by Content-Length; return them and what is left."""
    responses: list[Response] = []
    for method in methods:
        end = raw.find(b"\r\n\r\n")
        status = status_of(raw[:16])
        if end < 0 or status is None:
            break
        lines = raw[:end].decode("latin-1").split("\r\n")[1:]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        body, raw = raw[end + 4 : end + 4 + length], raw[end + 4 + length :]
        responses.append(Response(status, headers, body))
    return responses, raw


def _complete(response: Response) -> bool:
    return len(response.body) >= int(response.headers.get("content-length", "0"))


# --- the probe: is everyone else still served? -----------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic time the request was started
    seconds: float
    ok: bool
    why: str = ""


class Probe:
    """``GET /`` on a new connection every ``every`` seconds, each given ``timeout`` in all.

    Requests are started on schedule whatever the ones before did (each on its own
    thread), so an outage counts for every request that fell in it. A request is
    answered when ``200`` and fleet's ``Hello World!`` arrived within ``timeout``.
    """

    def __init__(self, port: int, every: float = 0.1, timeout: float = 2.0, path: str = "/") -> None:
        self.port = port
        self.every = every
        self.timeout = timeout
        self.path = path
        self.started = 0.0
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(int(timeout / every) + 8, thread_name_prefix="probe")
        self._thread = threading.Thread(target=self._schedule, name="probe", daemon=True)
        self._lock = threading.Lock()

    def __enter__(self) -> Probe:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        self.samples.sort(key=lambda s: s.at)

    def _schedule(self) -> None:
        tick = 0
        while not self._stop.is_set():
            due = self.started + tick * self.every
            self._stop.wait(max(0.0, due - time.monotonic()))
            if self._stop.is_set():
                return
            self._pool.submit(self._one)
            tick += 1

    def _one(self) -> None:
        start = time.monotonic()
        deadline = start + self.timeout
        why = ""
        try:
            with socket.create_connection((HOST, self.port), timeout=self.timeout) as sock:
                sock.sendall(request("GET", self.path, "Connection: close\r\n"))
                raw = b""
                while (left := deadline - time.monotonic()) > 0:
                    sock.settimeout(left)
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    raw += chunk
                    responses, _ = parse_responses(raw, ["GET"])
                    if responses and _complete(responses[0]):
                        break
            responses, _ = parse_responses(raw, ["GET"])
            if not responses:
                why = f"no response ({len(raw)} bytes)"
            elif (responses[0].status, responses[0].body) != (200, HELLO):
                why = f"{responses[0].status} {responses[0].body[:40]!r}"
        except OSError as error:
            why = f"{type(error).__name__}: {error}"
        seconds = time.monotonic() - start
        if not why and seconds > self.timeout:
            why = f"answered after {seconds:.2f} s"
        with self._lock:
            self.samples.append(Sample(start, seconds, not why, why))

    def window(self, since: float = 0.0, until: float = math.inf) -> list[Sample]:
        """The samples started in [since, until) (monotonic times)."""
        return [s for s in self.samples if since <= s.at < until]

    @staticmethod
    def rate(samples: list[Sample]) -> float:
        """The share of ``samples`` answered in time, in percent (100 for none)."""
        return 100.0 * sum(s.ok for s in samples) / len(samples) if samples else 100.0

    @staticmethod
    def p99(samples: list[Sample]) -> float:
        """The 99th percentile of the time to an answer; a failed request counts as infinite."""
        times = sorted(s.seconds if s.ok else math.inf for s in samples)
        return times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)] if times else 0.0

    def longest_outage(self, samples: list[Sample]) -> tuple[float, float]:
        """The longest run of failed requests in a row: its length and when it began (monotonic)."""
        longest, began, run = 0.0, 0.0, None
        for sample in samples:
            if sample.ok:
                run = None
                continue
            run = sample.at if run is None else run
            if sample.at - run + self.every > longest:
                longest, began = sample.at - run + self.every, run
        return longest, began

    def summary(self, samples: list[Sample] | None = None) -> str:
        samples = self.samples if samples is None else samples
        p99 = self.p99(samples)
        shown = f"{p99 * 1000:.0f} ms" if p99 != math.inf else f"over {self.timeout:g} s"
        failures = Counter(s.why.split(":")[0] for s in samples if not s.ok)
        more = f"; failures {dict(failures.most_common(3))}" if failures else ""
        if failures and samples:
            length, began = self.longest_outage(samples)
            more += f", in a row for {length:.1f} s from {began - self.started:.1f} s"
        answered = f"{self.rate(samples):.1f}% of {len(samples)} answered within {self.timeout:g} s"
        return f"probe {answered}, p99 {shown}{more}"


# --- the workers, seen from inside the container -----------------------------------------

# NOTE: one systemctl call per worker reads MainPID and NRestarts together (two calls
# could straddle a restart); VmRSS comes from /proc of that pid, because MemoryCurrent
# is unset where the container's cgroups have no memory accounting.
SAMPLE_SCRIPT = r"""
for i in "$@"; do
  MainPID=0 NRestarts=0 ActiveState=unknown
  eval "$(systemctl show -p MainPID -p NRestarts -p ActiveState "fleet-worker@$i.service")"
  rss=$(sed -n 's/^VmRSS:[^0-9]*\([0-9]*\).*/\1/p' "/proc/$MainPID/status" 2>/dev/null)
  cpu=$(cut -d' ' -f14,15 "/proc/$MainPID/stat" 2>/dev/null | tr ' ' +)
  echo "$i $MainPID $NRestarts $ActiveState ${rss:-0} $((${cpu:-0}))"
done
"""


@dataclass(frozen=True)
class Worker:
    instance: str
    pid: int
    restarts: int
    state: str
    rss_kib: int
    cpu_ticks: int  # utime + stime, in clock ticks (USER_HZ, 100 a second)


def workers(fleet: Fleet, instances: tuple[str, ...]) -> dict[str, Worker]:
    """Read each worker's pid, restart count, state and VmRSS, one consistent line per worker."""
    out = fleet.box.run("sh", "-c", SAMPLE_SCRIPT, "sample", *instances, timeout=30).stdout
    found = {}
    for line in out.splitlines():
        instance, pid, restarts, state, rss, cpu = line.split()
        found[instance] = Worker(instance, int(pid), int(restarts), state, int(rss), int(cpu))
    return found


class Sampler:
    """Read the workers (see :func:`workers`) every ``every`` seconds while the ``with`` lasts."""

    def __init__(self, fleet: Fleet, instances: tuple[str, ...], every: float = 1.0) -> None:
        self.fleet = fleet
        self.instances = instances
        self.every = every
        self.samples: list[dict[str, Worker]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> Sampler:
        self.before = workers(self.fleet, self.instances)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.after = workers(self.fleet, self.instances)
        self.samples.append(self.after)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.samples.append(workers(self.fleet, self.instances))
            except Exception as error:  # noqa: BLE001 - a busy container may time a read out
                self.errors.append(repr(error))

    def peak_rss_mib(self) -> dict[str, float]:
        """Each worker's highest VmRSS seen, in MiB."""
        return {i: max((s[i].rss_kib for s in self.samples if i in s), default=0) / 1024
                for i in self.instances}  # fmt: skip

    def pids_seen(self) -> dict[str, set[int]]:
        return {i: {s[i].pid for s in [self.before, *self.samples] if i in s} for i in self.instances}

    def restarts(self) -> dict[str, int]:
        """Restarts of each worker from the first sample to the last."""
        return {i: self.after[i].restarts - self.before[i].restarts for i in self.instances}

    def cpu_seconds(self) -> float:
        """CPU time the workers spent from the first sample to the last (workers that lived throughout)."""
        return sum(self.after[i].cpu_ticks - self.before[i].cpu_ticks for i in self.instances
                   if self.after[i].pid == self.before[i].pid) / 100  # fmt: skip

    def summary(self) -> str:
        peaks = ", ".join(f"{i}: {mib:.0f}" for i, mib in self.peak_rss_mib().items())
        base = ", ".join(f"{i}: {w.rss_kib / 1024:.0f}" for i, w in self.before.items())
        return f"worker VmRSS peak MiB {{{peaks}}} (before {{{base}}}); restarts {self.restarts()}"
