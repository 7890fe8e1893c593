"""fleet/server.py against real clients: dispatch, the accept gate, deadlines, framing."""

from __future__ import annotations

import gc
import http.client
import os
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fleet.dispatch import LoopThread
from harness.attacks import request
from harness.http import get
from tests.test_worker import background_get, port_of, read_until_closed


def connect(port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:g} s")
        time.sleep(0.02)


# --- dispatch ------------------------------------------------------------------------


def test_with_the_defaults_a_worker_serves_as_many_waiting_requests_at_once_as_it_has_threads(
        tmp_path: Path, listener, spawn):
    # NOTE: no clock: requests wait inside the app until the test releases them,
    # so the count can only reach 4 if 4 are served concurrently.
    worker = spawn(listener, FLEET_APP="tests.apps:held")
    worker.notify.wait_for("READY", "1")
    release = tmp_path / "release"
    inside = Path(f"{release}.inside")
    for _ in range(5):
        background_get(port_of(listener), f"/?release={release}", timeout=60)
    try:
        wait_until(lambda: inside.exists() and int(inside.read_text() or 0) >= 4, 30,
                   "4 requests inside the app at once (FLEET_THREADS=4)")
    finally:
        release.touch()


def test_requests_with_short_waits_are_served_concurrently(listener, spawn):
    # NOTE: a compute limit of 1 s leaves only the waiting itself to tell the
    # worker these requests are better served by its threads.
    worker = spawn(listener, FLEET_APP="tests.apps:brief", FLEET_INLINE_MAX="1s")
    worker.notify.wait_for("READY", "1")
    most = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(listener), timeout=30)
        try:
            for _ in range(40):
                conn.request("GET", "/")
                most.append(int(conn.getresponse().read()))
        finally:
            conn.close()

    clients = [threading.Thread(target=client) for _ in range(8)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    assert len(most) == 8 * 40, "every request was answered"
    assert max(most) >= 2, "requests that wait were served one at a time"


def test_requests_that_wait_go_to_the_threads_and_fast_ones_come_back_to_the_loop(listener, spawn):
    worker = spawn(listener, FLEET_APP="tests.apps:thread")
    worker.notify.wait_for("READY", "1")
    port = port_of(listener)

    def served_by(path: str) -> str:
        status, _, body = get(port, path)
        assert status == 200
        return body.decode()

    assert {served_by("/") for _ in range(5)} == {"MainThread"}
    for _ in range(30):  # NOTE: 3 ms waits, each too short to watch: they add up
        served_by("/?sleep=0.003")
    assert served_by("/").startswith("waitress-"), "after requests waited, the threads serve"


def test_an_idle_worker_leaves_its_relief_thread_asleep(listener, spawn):
    worker = spawn(listener)
    worker.notify.wait_for("READY", "1")

    def switches() -> int:
        """Context switches of every thread but the loop thread (which wakes 4 times a second)."""
        total = 0
        for task in Path(f"/proc/{worker.pid}/task").iterdir():
            if task.name != str(worker.pid):
                for line in (task / "status").read_text().splitlines():
                    if "ctxt_switches" in line:
                        total += int(line.split()[1])
        return total

    def quiet_for_half_a_second() -> bool:
        before = switches()
        time.sleep(0.5)
        return switches() == before

    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            get(port_of(listener))

    client = threading.Thread(target=load)
    client.start()
    try:
        assert not quiet_for_half_a_second(), "the relief thread watches while requests come in"
    finally:
        stop.set()
        client.join()
    wait_until(quiet_for_half_a_second, 10, "the relief thread asleep once requests stop")


def test_the_cpu_a_request_runs_on_the_loop_leaves_out_garbage_collections():
    # NOTE: no wall clock: the thread's own CPU clock, compared with what the relief
    # thread reads. A full collection in a Django worker held the loop 18-20 ms: counted
    # as the request's, it made the worker hand requests to the pool after 2 ms ones.
    loop_thread = LoopThread(threading.get_ident(), threading.get_native_id())
    try:
        kept = [[] for _ in range(300_000)]  # NOTE: containers every full collection walks
        before, clock = loop_thread.cpu(), time.thread_time()
        gc.collect()
        collecting, counted_collecting = time.thread_time() - clock, loop_thread.cpu() - before
        before, clock = loop_thread.cpu(), time.thread_time()
        total = sum(i * i % 7 for i in range(len(kept) * 3))
        computing, counted_computing = time.thread_time() - clock, loop_thread.cpu() - before
    finally:
        loop_thread.close()
    assert total > 0 and collecting > 0.001, "the collection walked the kept objects"
    assert counted_collecting < collecting / 4, (counted_collecting, collecting)
    assert counted_computing > computing / 2, (counted_computing, computing)
    assert loop_thread._collection not in gc.callbacks, "close() stops timing collections"


# --- the accept gate and the connection limit ------------------------------------------


def test_connections_that_send_nothing_never_close_the_gate(listener, spawn):
    worker = spawn(listener, FLEET_THREADS="1")
    worker.notify.wait_for("READY", "1")
    silent = [connect(port_of(listener)) for _ in range(50)]
    try:
        for _ in range(5):
            assert get(port_of(listener), timeout=10)[0] == 200
    finally:
        for sock in silent:
            sock.close()


def test_a_busy_worker_with_no_idle_sibling_still_takes_new_connections(listener, spawn):
    # NOTE: one worker, one thread, kept busy by keep-alive clients: no sibling
    # will ever take a new connection, so the worker must not leave it waiting.
    worker = spawn(listener, FLEET_APP="tests.apps:thread", FLEET_THREADS="1", FLEET_INLINE_MAX="0")
    worker.notify.wait_for("READY", "1")
    port = port_of(listener)
    busy_client_done = threading.Event()
    newcomer_answered = threading.Event()

    def keep_busy() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for _ in range(2000):  # NOTE: at most ~20 s at 10 ms each; ends early once the newcomer is in
                conn.request("GET", "/?sleep=0.01")
                conn.getresponse().read()
                if newcomer_answered.is_set():
                    return
            busy_client_done.set()
        except (OSError, http.client.HTTPException):
            pass  # NOTE: at teardown the worker is gone: the test was decided before
        finally:
            conn.close()

    clients = [threading.Thread(target=keep_busy) for _ in range(4)]  # NOTE: more than threads
    for client in clients:
        client.start()
    try:
        for _ in range(20):
            get(port, "/?sleep=0.01")  # NOTE: each a new connection, as a browser or a proxy opens them
        assert not busy_client_done.is_set(), "new connections were served only once the busy clients stopped"
    finally:
        newcomer_answered.set()
        for client in clients:
            client.join()


def test_at_the_connection_limit_the_longest_idle_connections_make_room(listener, spawn):
    worker = spawn(listener, FLEET_CONNECTION_LIMIT="16")
    worker.notify.wait_for("READY", "1")
    idle = []
    for _ in range(16):
        sock = connect(port_of(listener))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        idle.append(sock)
    try:
        for _ in range(3):
            assert get(port_of(listener), timeout=10)[0] == 200, "new clients are served at the limit"
        idle[0].settimeout(10)
        assert idle[0].recv(10) == b"", "the longest-idle connection was closed to make room"
    finally:
        for sock in idle:
            sock.close()



def test_making_room_spares_a_connection_whose_request_is_not_read_yet(tmp_path, listener, spawn):
    # NOTE: with FLEET_THREADS=0 the loop thread is inside the spinning request
    # and reads nothing: the longest-idle connection's new request and the
    # newcomer are both there at its next poll. The newcomer is the 16th
    # connection, so the worker makes room once it has accepted it.
    worker = spawn(listener, FLEET_CONNECTION_LIMIT="16", FLEET_THREADS="0", FLEET_APP="tests.apps:turns")
    worker.notify.wait_for("READY", "1")
    port = port_of(listener)
    release = tmp_path / "release"
    idle = []
    for _ in range(14):
        sock = connect(port)
        sock.sendall(request())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        idle.append(sock)
    spinner = connect(port)
    spinner.sendall(request(path=f"/?spin={release}", headers="Connection: close\r\n"))
    worker.wait_entered()
    newcomer = connect(port)
    try:
        idle[0].sendall(request(headers="Connection: close\r\n"))
        newcomer.sendall(request(headers="Connection: close\r\n"))
        release.touch()
        assert read_until_closed(idle[0]).startswith(b"HTTP/1.1 200"), "its request was dropped to make room"
        assert read_until_closed(newcomer).startswith(b"HTTP/1.1 200")
    finally:
        for sock in [*idle, spinner, newcomer]:
            sock.close()

# --- gate patience (in-process: the rule itself, with the clock and the load set by hand) ---


def clock_by_hand(monkeypatch, module: Any) -> list[float]:  # type: ignore[no-untyped-def]
    """``module``'s own view of time.monotonic, set by hand; wait_until and pytest keep the real clock."""
    clock = [1000.0]
    fake = SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    fake.monotonic = lambda: clock[0]
    monkeypatch.setattr(module, "time", fake)
    return clock


def server_on_its_own_socket(env: dict[str, str], state_directory: str = "") -> tuple[Any, socket.socket]:
    """A FleetServer of an app that answers nothing, on a listening socket of its own."""
    from fleet.server import FleetServer
    from fleet.settings import Settings

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    fleet = FleetServer(lambda environ, start_response: [], [sock], Settings.from_env(env), state_directory)
    return fleet, sock


@pytest.fixture
def gated_server(monkeypatch):  # type: ignore[no-untyped-def]
    """A FleetServer on a listening socket of its own, with its gate closed for want of a thread."""
    from fleet import gate

    fleet, sock = server_on_its_own_socket({"FLEET_THREADS": "1", "FLEET_INLINE_MAX": "0"})
    monkeypatch.setattr(fleet.gate, "has_capacity", lambda: False)
    clock = clock_by_hand(monkeypatch, gate)
    yield fleet, clock, sock.getsockname()[1]
    fleet.shutdown()
    sock.close()


def test_a_busy_worker_takes_a_waiting_connection_after_its_patience_from_the_last_empty_look(gated_server):
    from fleet import gate

    fleet, clock, port = gated_server
    assert not fleet.gate.patience_over(), "the gate just closed"
    fleet.accounting.requests_done += 1  # NOTE: the worker is getting through its requests
    clock[0] += 1.0
    assert not fleet.gate.patience_over(), "nothing waits"
    with connect(port) as newcomer:
        newcomer.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: bool(fleet.gate.queues.poll(0)), 5, "the connection in the listening queue")
        clock[0] += gate.GATE_PATIENCE * 0.9
        assert not fleet.gate.patience_over(), "waited less than the patience since the queue was seen empty"
        clock[0] += gate.GATE_PATIENCE * 0.2
        assert fleet.gate.patience_over(), "waited the patience of a worker holding nothing"
        assert fleet.gate.owed == 1, "one connection a patience"
        clock[0] += gate.GATE_PATIENCE * 4
        assert fleet.gate.patience_over() and fleet.gate.owed == 5, \
            "a long pass lets in one for each patience it took"


def test_gate_patience_grows_with_the_connections_a_worker_holds(gated_server, monkeypatch):
    from fleet import gate

    fleet, clock, port = gated_server
    fleet.gate.patience_over()
    fleet.accounting.requests_done += 1
    monkeypatch.setattr(fleet.loop, "connections", lambda: 20)  # NOTE: as if it held 20
    with connect(port) as newcomer:
        newcomer.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: bool(fleet.gate.queues.poll(0)), 5, "the connection in the listening queue")
        clock[0] += 0.001
        fleet.gate.seen_empty = fleet.gate.closed_since = clock[0]
        patience = gate.GATE_PATIENCE + 20 * gate.GATE_PATIENCE_PER_CONNECTION
        clock[0] += patience * 0.9
        assert not fleet.gate.patience_over(), "a worker holding 20 connections waits longer"
        clock[0] += patience * 0.2
        assert fleet.gate.patience_over()


def test_a_worker_whose_requests_do_not_progress_never_takes_a_waiting_connection(gated_server):
    fleet, clock, port = gated_server
    fleet.gate.patience_over()
    with connect(port) as newcomer:
        newcomer.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: bool(fleet.gate.queues.poll(0)), 5, "the connection in the listening queue")
        clock[0] += 10.0
        assert not fleet.gate.patience_over(), "its threads are stuck: a sibling or nobody"


@pytest.fixture
def leading_server(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """A busy FleetServer (instance 1) with a busy sibling (instance 2) in its table, and its gate's clock."""
    from fleet import gate
    from fleet.siblings import Siblings

    fleet, sock = server_on_its_own_socket({"FLEET_INSTANCE": "1", "FLEET_INLINE_MAX": "0"}, str(tmp_path))
    monkeypatch.setattr(fleet.gate, "has_capacity", lambda: False)
    clock = clock_by_hand(monkeypatch, gate)
    held = [3]
    monkeypatch.setattr(fleet.loop, "connections", lambda: held[0])
    sibling = Siblings.open(str(tmp_path), "2")
    sibling.publish_busy(True, 0)
    with connect(sock.getsockname()[1]) as newcomer:
        newcomer.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_until(lambda: bool(fleet.gate.queues.poll(0)), 5, "the connection in the listening queue")
        yield fleet, clock, held, sibling
    sibling.leave()
    fleet.shutdown()
    sock.close()


def test_a_busy_worker_holding_no_more_than_its_siblings_takes_a_waiting_connection_at_once(leading_server):
    fleet, clock, held, sibling = leading_server
    sibling.publish(3, clock[0])
    assert not fleet.gate.patience_over(), "the gate just closed"
    fleet.accounting.busy[1] = clock[0]  # NOTE: a request began just now
    assert fleet.gate.patience_over(), "3 against 3: no sibling would serve it sooner"
    sibling.publish_busy(False, 0)
    assert not fleet.gate.patience_over(), "the sibling has a thread free: it serves it sooner"
    sibling.publish_busy(True, 0)
    sibling.publish(2, clock[0])
    assert not fleet.gate.patience_over(), "3 against 2: the sibling takes it, or this one after its patience"


def test_a_busy_worker_whose_requests_are_old_and_do_not_end_leads_no_more(leading_server):
    from fleet import gate

    fleet, clock, held, sibling = leading_server
    fleet.gate.patience_over()
    fleet.accounting.busy[1] = clock[0]
    clock[0] += gate.GATE_FRESH
    sibling.publish(3, clock[0])
    assert not fleet.gate.patience_over(), "its newest request began GATE_FRESH ago and none ended: stuck"
    fleet.accounting.requests_done += 1
    assert fleet.gate.patience_over(), "a request ended since the gate closed: not stuck"


def test_a_busy_worker_that_ends_no_request_while_a_sibling_does_leads_no_more(leading_server):
    # NOTE: a hung worker whose requests began just now looks fresh; its sibling
    # getting through requests while it gets through none says it may be stuck.
    fleet, clock, held, sibling = leading_server
    sibling.publish(3, clock[0])
    fleet.gate.patience_over()
    fleet.accounting.busy[1] = clock[0]
    sibling.served_one(1)
    assert not fleet.gate.patience_over(), "the sibling served one since this worker's threads filled"
    fleet.accounting.requests_done += 1
    assert fleet.gate.patience_over(), "this one served one too: not stuck"


def test_a_leading_worker_takes_connections_up_to_one_more_than_its_lightest_sibling(leading_server):
    fleet, clock, held, sibling = leading_server
    held[0] = 1
    sibling.publish(3, clock[0])
    fleet.gate.patience_over()
    fleet.accounting.busy[1] = clock[0]
    assert fleet.gate.patience_over()

    def handle_accept() -> None:  # NOTE: as waitress's listener does, with a connection to take
        held[0] += 1
        fleet.gate.connection_accepted(True)

    fleet.gate.accept_batch(handle_accept)()
    assert held[0] == 4, "from 1 against 3 it takes 3, to one more than the sibling"
    assert sibling.lightest(clock[0]) == 4, "each one published to the siblings as it is taken"


def test_a_worker_past_its_share_ends_only_its_excess_connections_at_their_age(tmp_path, monkeypatch):
    # NOTE: the clock is set by hand, so every answer comes within one SPLIT_EVERY, in which
    # the sibling's count is read once; the worker's own is counted live, less what it has ended.
    from fleet import server
    from fleet.siblings import Siblings

    clock = clock_by_hand(monkeypatch, server)
    env = {"FLEET_INSTANCE": "1", "FLEET_KEEPALIVE_MAX_AGE": "1"}
    fleet, sock = server_on_its_own_socket(env, str(tmp_path))
    sibling = Siblings.open(str(tmp_path), "2")

    def connection(age: float) -> SimpleNamespace:
        return SimpleNamespace(accepted_at=clock[0] - age, read_more=lambda: False)

    try:
        monkeypatch.setattr(fleet.loop, "connections", lambda: 9)  # NOTE: as if it held 9
        sibling.publish(3, clock[0])
        assert not fleet.ends_keepalive(connection(0.5)), "younger than the age: kept"
        ended = [fleet.ends_keepalive(connection(2.0)) for _ in range(8)]
        assert ended == [True] * 5 + [False] * 3, "9 against 3: 5 leave, and 4 against 3 is even"
        assert fleet.ends_keepalive(connection(server.AGE_BOUND + 1.0)), "past AGE_BOUND ages: ends"
        clock[0] += server.SPLIT_EVERY  # NOTE: the table is read again; the 5 ended are closed by now
        monkeypatch.setattr(fleet.loop, "connections", lambda: 4)
        assert not fleet.ends_keepalive(connection(2.0)), "4 against 3 is even"
    finally:
        sibling.leave()
        fleet.shutdown()
        sock.close()


# --- deadlines --------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_after_the_silent_timeout(listener, spawn):
    worker = spawn(listener, FLEET_SILENT_TIMEOUT="0.5")
    worker.notify.wait_for("READY", "1")
    with connect(port_of(listener)) as sock:
        assert read_until_closed(sock) == b""


def test_a_request_head_that_trickles_gets_408_and_is_closed(listener, spawn):
    worker = spawn(listener, FLEET_HEADER_TIMEOUT="1")
    worker.notify.wait_for("READY", "1")
    with connect(port_of(listener), timeout=20) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
        for _ in range(100):  # a byte at a time, as slowloris does, until the server closes
            try:
                sock.sendall(b"X")
            except OSError:
                break
            time.sleep(0.05)
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply


def test_a_body_slower_than_the_minimum_rate_gets_408(listener, spawn):
    worker = spawn(listener, FLEET_BODY_TIMEOUT="1", FLEET_BODY_MIN_RATE="100")
    worker.notify.wait_for("READY", "1")
    with connect(port_of(listener), timeout=20) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nabc")
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply


def test_a_body_that_keeps_its_rate_is_served(listener, spawn):
    worker = spawn(listener, FLEET_APP="tests.apps:thread", FLEET_BODY_TIMEOUT="1", FLEET_BODY_MIN_RATE="100")
    worker.notify.wait_for("READY", "1")
    with connect(port_of(listener), timeout=20) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2000\r\n\r\n")
        for _ in range(20):  # 100 bytes every 50 ms: well above the minimum rate
            sock.sendall(b"x" * 100)
            time.sleep(0.05)
        reply = read_until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 200"), reply


# --- framing ---------------------------------------------------------------------------


def status_of(reply: bytes) -> bytes:
    """The status code of the first response in ``reply`` (HTTP/1.0 or 1.1)."""
    return reply.split(b"\r\n", 1)[0].split(b" ")[1] if reply else b"(closed)"


def raw(port: int, request: bytes) -> bytes:
    with connect(port) as sock:
        sock.sendall(request)
        return read_until_closed(sock)


@pytest.mark.parametrize(("count", "status"), [(100, b"200"), (101, b"431")])
def test_header_count_is_bounded(listener, spawn, count, status):
    worker = spawn(listener)
    worker.notify.wait_for("READY", "1")
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(count - 2))  # + Host and Connection
    reply = raw(port_of(listener), b"GET / HTTP/1.1\r\nHost: t\r\n" + headers + b"Connection: close\r\n\r\n")
    assert status_of(reply) == status, reply[:200]


def test_ten_thousand_headers_are_refused_before_parsing(listener, spawn):
    worker = spawn(listener)
    worker.notify.wait_for("READY", "1")
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    reply = raw(port_of(listener), b"GET / HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
    assert status_of(reply) == b"431", reply[:200]
    assert b"connection: close" in reply.lower()


@pytest.mark.parametrize("framing", [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\ncontent-length: 5\r\n",
    b"Content-Length: 5\r\nContent-Length: 6\r\n",
], ids=["cl-te", "te-cl", "two-lengths"])
def test_ambiguous_framing_gets_400_and_the_connection_closed(listener, spawn, framing):
    worker = spawn(listener)
    worker.notify.wait_for("READY", "1")
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    reply = raw(port_of(listener), b"POST / HTTP/1.1\r\nHost: t\r\n" + framing + b"\r\n0\r\n\r\n" + smuggled)
    assert status_of(reply) == b"400", reply[:200]
    assert reply.count(b"HTTP/1.") == 1, "nothing after the bad request was answered"


def test_a_method_that_is_no_token_gets_400_and_the_connection_closed(listener, spawn):
    worker = spawn(listener, FLEET_APP="tests.apps:thread")
    worker.notify.wait_for("READY", "1")
    follow = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    reply = raw(port_of(listener), b"\x00\x01\x02 / HTTP/1.1\r\nHost: t\r\n\r\n" + follow)
    assert status_of(reply) == b"400", reply[:200]
    assert reply.count(b"HTTP/1.") == 1, "nothing after the bad request was answered"


def test_clients_that_never_read_a_large_response_hold_no_thread(listener, spawn):
    worker = spawn(listener, FLEET_APP="tests.apps:shapes", FLEET_THREADS="1", FLEET_INLINE_MAX="0")
    worker.notify.wait_for("READY", "1")
    readers = []
    try:
        for _ in range(3):  # NOTE: 3 clients, 1 thread: each must be let go of
            sock = connect(port_of(listener))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n")
            readers.append(sock)
        for _ in range(3):
            assert get(port_of(listener), timeout=20)[0] == 200
    finally:
        for sock in readers:
            sock.close()


def read_response(stream: Any) -> tuple[bytes, bytes]:
    """One response from a buffered socket file: its head, and its body (by length or chunked)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = stream.readline()
        assert line, f"closed in the middle of a head: {head[:200]!r}"
        head += line
    fields = {k.strip().lower(): v.strip() for k, _, v in
              (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)}  # fmt: skip
    if b"content-length" in fields:
        return head, stream.read(int(fields[b"content-length"]))
    body = b""
    while size := int(stream.readline().strip(), 16):
        body += stream.read(size)
        stream.readline()
    stream.readline()
    return head, body


def assert_counted_body(body: bytes, mib: int) -> None:
    """``body`` is tests.apps:counted's ``mib`` chunks, whole and in order."""
    assert len(body) == mib * 2**20, f"{len(body)} bytes, not {mib} MiB"
    for k in range(mib):
        chunk = body[k * 2**20:(k + 1) * 2**20]
        assert chunk == bytes([k % 251]) * 2**20, f"MiB {k} is not chunk {k}"


def recorded(path: Path) -> str:
    return path.read_text() if path.exists() else ""


# NOTE: the kernel buffers a few MiB of a response no one reads on loopback (the sender's buffer
# grows to tcp_wmem's maximum, 4 MiB by default); past that, no more than PAUSE_AT and a chunk.
# The clients keep their default receive buffer: one of 4 KiB makes reading 48 MiB take minutes.
AHEAD_MIB = 12


@pytest.mark.parametrize(("dispatch", "framing"), [
    ({}, ""), ({}, "&chunked=1"), ({"FLEET_INLINE_MAX": "0"}, ""), ({"FLEET_THREADS": "0"}, "&chunked=1"),
])  # fmt: skip
def test_a_response_its_client_does_not_read_pauses_frees_its_thread_and_resumes_whole(
        tmp_path: Path, listener, spawn, dispatch: dict[str, str], framing: str) -> None:  # fmt: skip
    worker = spawn(listener, FLEET_APP="tests.apps:counted", **({"FLEET_THREADS": "1"} | dispatch))
    worker.notify.wait_for("READY", "1")
    port = port_of(listener)
    big, after = tmp_path / "big", tmp_path / "after"
    with connect(port, timeout=30) as sock:
        # NOTE: a second request pipelined behind the paused one must come out after it, whole.
        sock.sendall(f"GET /?mib=48&record={big}{framing} HTTP/1.1\r\nHost: t\r\n\r\n"
                     f"GET /?mib=2&record={after} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        wait_until(lambda: recorded(big), 10, "the app starting its body")
        # NOTE: with one thread (or none), another client is served only if the paused body let go.
        status, _, _ = get(port, f"/?mib=1&record={tmp_path / 'other'}", timeout=20)
        assert status == 200
        taken = int(recorded(big))
        assert taken <= AHEAD_MIB, f"{taken} MiB of 48 produced for a client that read none of it"
        stream = sock.makefile("rb")
        head, body = read_response(stream)
        assert_counted_body(body, 48)
        if framing:
            # NOTE: waitress closes after a response of unknown length, whatever follows.
            assert b"Connection: close" in head and stream.read() == b""
        else:
            _, body = read_response(stream)
            assert_counted_body(body, 2)
            # NOTE: the app's body is closed once its last chunk is buffered, maybe after it was read.
            wait_until(lambda: recorded(after) == "2 closed", 10, "the second body closed")
    wait_until(lambda: recorded(big) == "48 closed", 10, "the paused body closed")


def test_a_client_that_leaves_while_its_response_is_paused_has_the_app_body_closed(
        tmp_path: Path, listener, spawn) -> None:  # fmt: skip
    worker = spawn(listener, FLEET_APP="tests.apps:counted", FLEET_THREADS="1")
    worker.notify.wait_for("READY", "1")
    port = port_of(listener)
    big = tmp_path / "big"
    with connect(port) as sock:
        sock.sendall(f"GET /?mib=48&record={big} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        wait_until(lambda: recorded(big), 10, "the app starting its body")
        assert get(port, f"/?mib=1&record={tmp_path / 'other'}", timeout=20)[0] == 200
    wait_until(lambda: recorded(big).endswith("closed"), 10, "the app's body closed (PEP 3333)")
    assert int(recorded(big).split()[0]) <= AHEAD_MIB
    assert get(port, f"/?mib=1&record={tmp_path / 'again'}", timeout=20)[0] == 200


def test_a_paused_response_read_by_no_one_for_the_channel_timeout_is_closed(tmp_path: Path, listener, spawn):
    worker = spawn(listener, FLEET_APP="tests.apps:counted", FLEET_CHANNEL_TIMEOUT="1")
    worker.notify.wait_for("READY", "1")
    big = tmp_path / "big"
    with connect(port_of(listener), timeout=30) as sock:
        sock.sendall(f"GET /?mib=48&record={big} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        wait_until(lambda: recorded(big).endswith("closed"), 15, "the paused response closed")
        assert int(recorded(big).split()[0]) <= AHEAD_MIB
        while sock.recv(2**20):
            pass  # NOTE: what was sent, then the close: recv() returns b"" (a timeout fails the test)


@pytest.mark.parametrize("path", ["/", "/chunked", "/big"])
def test_head_never_carries_a_body_so_the_next_response_parses(listener, spawn, path):
    worker = spawn(listener, FLEET_APP="tests.apps:shapes")
    worker.notify.wait_for("READY", "1")
    reply = raw(port_of(listener), f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n"
                                   f"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if path == "/chunked":
        # NOTE: waitress closes after any response of unknown length; the last
        # chunk (0 CRLF CRLF) would be a body too.
        assert b"Connection: close" in head and rest == b"", rest[:60]
        return
    assert rest.startswith(b"HTTP/1.1 200"), f"the HEAD response carried a body: {rest[:60]!r}"
    assert rest.endswith(b"hello")
    if path == "/big":
        assert b"Content-Length: 204800" in head, "HEAD keeps the headers GET would have"


def test_head_of_a_file_response_carries_no_body(tmp_path: Path, listener, spawn):
    worker = spawn(listener, FLEET_APP="tests.apps:file_response", FLEET_TEST_FILE=str(tmp_path / "f"))
    (tmp_path / "f").write_bytes(b"z" * 1000)
    worker.notify.wait_for("READY", "1")
    reply = raw(port_of(listener), b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and rest == b"", rest[:60]


def test_many_silent_and_idle_connections_leave_new_clients_served(listener, spawn):
    worker = spawn(listener, FLEET_THREADS="2")
    worker.notify.wait_for("READY", "1")
    port = port_of(listener)
    held: list[socket.socket] = []
    try:
        for i in range(300):
            sock = connect(port)
            if i % 2:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            held.append(sock)
        for _ in range(5):
            assert get(port, timeout=10)[0] == 200
    finally:
        for sock in held:
            sock.close()
    assert os.path.exists(f"/proc/{worker.pid}"), "the worker is still there"
    assert threading.active_count() >= 1


def test_a_draining_worker_leaves_its_siblings_table_at_once(tmp_path):  # type: ignore[no-untyped-def]
    from fleet.siblings import Siblings

    fleet, sock = server_on_its_own_socket({"FLEET_INSTANCE": "1"}, str(tmp_path))
    sibling = Siblings.open(str(tmp_path), "2")
    try:
        fleet.sweep(time.monotonic())
        assert sibling.lightest(time.monotonic()) == 0, "its slot, written by the sweep"
        fleet.begin_drain()
        fleet.sweep(time.monotonic())
        assert sibling.lightest(time.monotonic()) is None, "a draining worker takes no client: not a sibling"
    finally:
        sibling.leave()
        fleet.shutdown()
        sock.close()
