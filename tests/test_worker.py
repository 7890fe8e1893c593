"""fleet-worker as systemd runs it: real sockets at fd 3, real sd_notify, real signals."""

from __future__ import annotations

import collections
import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from fleet.server import AGE_BOUND
from fleet.worker import EXIT_APP_LOAD, EXIT_CONFIG, EXIT_USAGE, StartHistory
from harness.attacks import exchange, parse_responses, request
from harness.http import get
from harness.net import sockets_held
from harness.worker import WorkerProcess


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the socket's timeout)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def test_two_workers_share_one_socket_and_stop_cleanly(listener, spawn):
    workers = [spawn(listener, FLEET_INSTANCE=str(i)) for i in (1, 2)]
    for w in workers:
        ready = w.notify.wait_for("READY", "1")
        assert "serving" in ready.get("STATUS", "")
    # NOTE: a shared accept queue is no round-robin: on a busy machine one
    # worker may win every accept. Freezing one leaves the queue to the other,
    # which proves each serves the one inherited socket.
    for frozen, serving in ((workers[0], "2"), (workers[1], "1")):
        frozen.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(20):
                status, headers, body = get(port_of(listener))
                assert (status, body) == (200, b"Hello World!")
                assert headers["content-type"] == "text/plain; charset=utf-8"
                assert headers["x-fleet-worker"] == serving
        finally:
            frozen.proc.send_signal(signal.SIGCONT)

    status, headers, body = get(port_of(listener), "/healthz")
    health = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert health["status"] == "ok" and health["worker"] in ("1", "2")
    assert health["pid"] in (workers[0].pid, workers[1].pid)

    for w in workers:
        w.terminate()
    for w in workers:
        assert w.wait() == 0, w.stderr()
        w.notify.wait_for("STOPPING", "1")


def test_request_in_flight_finishes_and_new_connections_go_to_the_sibling(listener, spawn):
    first = spawn(listener, FLEET_INSTANCE="1", FLEET_APP="tests.apps:slow")
    first.notify.wait_for("READY", "1")
    result: dict[str, object] = {}

    def slow_request() -> None:
        result["response"] = get(port_of(listener), "/?sleep=2")

    in_flight = threading.Thread(target=slow_request)
    in_flight.start()
    first.wait_entered()  # the only worker has it now
    second = spawn(listener, FLEET_INSTANCE="2", FLEET_APP="tests.apps:slow")
    second.notify.wait_for("READY", "1")

    first.terminate()
    first.notify.wait_for("STOPPING", "1")
    for _ in range(5):
        status, headers, _ = get(port_of(listener), "/?sleep=0")
        assert (status, headers["x-fleet-worker"]) == (200, "2")

    in_flight.join(10)
    status, headers, body = result["response"]
    assert (status, body) == (200, b"slept 2.0")
    assert headers["x-fleet-worker"] == "1"
    assert headers["connection"] == "close", "the last response of a draining worker ends keep-alive"
    assert first.wait() == 0, first.stderr()
    assert "drained" in first.stderr()


def test_idle_keepalive_connection_is_closed_and_busy_one_told_to_close(listener, spawn):
    worker = spawn(listener, FLEET_INSTANCE="1")
    worker.notify.wait_for("READY", "1")
    idle = http.client.HTTPConnection("127.0.0.1", port_of(listener), timeout=5)
    assert get(port_of(listener), conn=idle)[0] == 200
    busy = http.client.HTTPConnection("127.0.0.1", port_of(listener), timeout=5)
    assert get(port_of(listener), conn=busy)[0] == 200

    worker.terminate()
    worker.notify.wait_for("STOPPING", "1")
    # A request on a kept-alive connection during the drain is still answered, with Connection: close.
    status, headers, _ = get(port_of(listener), conn=busy)
    assert status == 200 and headers["connection"] == "close"
    assert worker.wait(5) == 0
    # The idle connection was closed cleanly (FIN, not reset): reading gives EOF.
    idle.sock.settimeout(2)
    assert idle.sock.recv(10) == b""


def test_graceful_timeout_bounds_the_drain(listener, spawn):
    worker = spawn(listener, FLEET_APP="tests.apps:slow", FLEET_GRACEFUL_TIMEOUT="1")
    worker.notify.wait_for("READY", "1")
    background_get(port_of(listener), "/?sleep=30", timeout=40)
    worker.wait_entered()
    worker.terminate()
    assert worker.wait(20) == 0, "the drain waited for the 30 s request"
    assert "FLEET_GRACEFUL_TIMEOUT" in worker.stderr()


def background_get(port: int, path: str, timeout: float = 30) -> None:
    """Send a request from a thread and ignore its fate: the test is about the server."""
    def send() -> None:
        try:
            get(port, path, timeout=timeout)
        except OSError:
            pass

    threading.Thread(target=send, daemon=True).start()


def test_serves_several_inherited_sockets(tmp_path, listener, spawn):
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "fleet.sock"))
    unix.listen(16)
    worker = spawn(listener, unix, FLEET_INSTANCE="9")
    ready = worker.notify.wait_for("READY", "1")
    assert f"unix:{tmp_path / 'fleet.sock'}" in ready["STATUS"]
    assert get(port_of(listener))[2] == b"Hello World!"
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(tmp_path / "fleet.sock"))
    client.sendall(b"GET / HTTP/1.0\r\n\r\n")
    reply = read_until_closed(client)
    assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"Hello World!")
    assert b"X-Fleet-Worker: 9" in reply
    worker.terminate()
    assert worker.wait() == 0
    unix.close()


def test_run_by_hand_binds_fleet_listen_and_says_so(spawn, listener):
    port = port_of(listener)
    listener.close()  # free the port for the worker to bind itself
    worker = spawn(notify=False, FLEET_LISTEN=f"127.0.0.1:{port}")
    for _ in range(100):
        try:
            assert get(port)[2] == b"Hello World!"
            break
        except ConnectionRefusedError:
            time.sleep(0.05)
    assert f"listening on 127.0.0.1:{port} myself (FLEET_LISTEN)" in worker.stderr()
    worker.terminate()
    assert worker.wait() == 0


def test_custom_app_gets_the_worker_header_and_health(listener, spawn):
    worker = spawn(listener, FLEET_APP="tests.apps:slow", FLEET_INSTANCE="alpha")
    worker.notify.wait_for("READY", "1")
    status, headers, body = get(port_of(listener), "/x?sleep=0")
    assert (status, headers["x-fleet-worker"], body) == (200, "alpha", b"slept 0.0")
    assert json.loads(get(port_of(listener), "/healthz")[2])["worker"] == "alpha"


def test_drain_file_turns_health_to_503_while_serving(tmp_path, listener, spawn):
    drain = tmp_path / "drain"
    worker = spawn(listener, FLEET_DRAIN_FILE=str(drain))
    worker.notify.wait_for("READY", "1")
    assert get(port_of(listener), "/healthz")[0] == 200
    drain.touch()
    status, _, body = get(port_of(listener), "/healthz")
    assert status == 503 and json.loads(body)["status"] == "draining"
    assert get(port_of(listener))[0] == 200
    drain.unlink()
    assert get(port_of(listener), "/healthz")[0] == 200


def test_keepalive_connection_closes_after_max_age(listener, spawn):
    worker = spawn(listener, FLEET_KEEPALIVE_MAX_AGE="500ms")
    worker.notify.wait_for("READY", "1")
    conn = http.client.HTTPConnection("127.0.0.1", port_of(listener), timeout=5)
    assert "connection" not in get(port_of(listener), conn=conn)[1]
    time.sleep(0.6)
    assert get(port_of(listener), conn=conn)[1]["connection"] == "close"


def test_keepalive_clients_split_evenly_and_then_stay(tmp_path, listener, spawn):
    # NOTE: no clock decides the outcome: a close is a failure only if its
    # connection is younger than the bound on every connection's age
    # (AGE_BOUND × FLEET_KEEPALIVE_MAX_AGE), as the client measures it from
    # before the worker accepted it.
    env = {"FLEET_KEEPALIVE_MAX_AGE": "1s", "STATE_DIRECTORY": str(tmp_path)}
    workers = [spawn(listener, FLEET_INSTANCE=str(n), **env) for n in (1, 2)]
    for worker in workers:
        worker.notify.wait_for("READY", "1")
    port = port_of(listener)
    clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(8)]
    opened = [0.0] * len(clients)
    bound = AGE_BOUND * 1.0

    def one_round() -> tuple[list[str], list[float]]:
        """Each client asks once; which worker answered each, and the age of each that was closed."""
        served, closed_at_age = [], []
        for i, conn in enumerate(clients):
            if conn.sock is None:  # NOTE: http.client reconnects for this request
                opened[i] = time.monotonic()
            _, headers, _ = get(port, conn=conn)
            served.append(headers["x-fleet-worker"])
            if headers.get("connection") == "close":
                closed_at_age.append(time.monotonic() - opened[i])
        return served, closed_at_age

    history = []
    deadline = time.monotonic() + 60
    while sorted(collections.Counter(served := one_round()[0]).values()) != [4, 4]:
        history.append(served)
        assert time.monotonic() < deadline, f"the clients never split 4/4: {history[-5:]}"
    # NOTE: past the age at least once more: every connection's answer is then made past it.
    moved: list[float] = []
    until = time.monotonic() + 1.5
    while time.monotonic() < until:
        moved += [age for age in one_round()[1] if age < bound]
    assert moved == [], f"connections of an even split were closed at ages {moved}"
    for conn in clients:
        conn.close()


def test_requests_pipelined_past_max_age_are_answered_before_the_close(listener, spawn):
    # NOTE: no clock: the first request sleeps past the connection's max age, so
    # every response is made past it, with the client's next requests sent already.
    worker = spawn(listener, FLEET_APP="tests.apps:slow", FLEET_KEEPALIVE_MAX_AGE="100ms")
    worker.notify.wait_for("READY", "1")
    asks = request(path="/?sleep=0.2") + request(path="/?sleep=0") * 4
    answered = exchange(port_of(listener), asks, ["GET"] * 5, timeout=30)
    assert [r.body for r in answered.responses] == [b"slept 0.2"] + [b"slept 0.0"] * 4, answered
    assert [r.headers.get("connection") for r in answered.responses] == [None] * 4 + ["close"], (
        "keep-alive ends at the first response with no request behind it")
    assert answered.closed


def test_a_client_pipelining_on_is_still_closed_at_its_age(listener, spawn):
    # NOTE: the requests sent once the first is inside the app stay unread
    # (the worker reads a connection's next requests only once it has answered
    # those it holds), so the first answer past the age is the last.
    worker = spawn(listener, FLEET_APP="tests.apps:slow", FLEET_KEEPALIVE_MAX_AGE="100ms")
    worker.notify.wait_for("READY", "1")
    with socket.create_connection(("127.0.0.1", port_of(listener)), timeout=30) as sock:
        sock.sendall(request(path="/?sleep=0.2"))
        worker.wait_entered()
        sock.sendall(request(path="/?sleep=0") * 3)
        answered = read_until_closed(sock)  # NOTE: ended cleanly, not reset with its bytes unread
    responses, _ = parse_responses(answered, ["GET"] * 4)
    assert [(r.body, r.headers.get("connection")) for r in responses] == [(b"slept 0.2", "close")]


def test_a_connection_closed_with_bytes_unread_lingers_then_closes(listener, spawn):
    # NOTE: closed at once, it would be reset, and a reset can destroy the
    # answer before the client reads it. The worker ends its side, drops what
    # comes, and closes after LINGER (5 s) even if the client never does.
    worker = spawn(listener, FLEET_APP="tests.apps:slow", FLEET_KEEPALIVE_MAX_AGE="100ms")
    worker.notify.wait_for("READY", "1")
    idle = sockets_held(worker.pid)
    with socket.create_connection(("127.0.0.1", port_of(listener)), timeout=30) as sock:
        sock.sendall(request(path="/?sleep=0.2"))
        worker.wait_entered()
        sock.sendall(request(path="/?sleep=0") * 3)
        assert read_until_closed(sock).endswith(b"slept 0.2"), "the answer, then a clean end"
        sock.sendall(request())  # NOTE: still read, and dropped
        deadline = time.monotonic() + 30
        while sockets_held(worker.pid) > idle and time.monotonic() < deadline:
            worker.notify.drain(0.1)
        assert sockets_held(worker.pid) == idle, "the lingering connection was never closed"


def test_requests_pipelined_before_a_drain_are_all_answered(tmp_path, listener, spawn):
    worker = spawn(listener, FLEET_APP="tests.apps:turns")
    worker.notify.wait_for("READY", "1")
    release = tmp_path / "release"
    with socket.create_connection(("127.0.0.1", port_of(listener)), timeout=30) as sock:
        sock.sendall(request(path=f"/?spin={release}") + request() * 3)
        worker.wait_entered()
        worker.terminate()
        worker.notify.wait_for("STOPPING", "1")
        release.touch()
        responses, _ = parse_responses(read_until_closed(sock), ["GET"] * 4)
    assert [r.body for r in responses] == [b"0", b"1", b"2", b"3"]
    assert [r.headers.get("connection") for r in responses] == [None] * 3 + ["close"]
    assert worker.wait() == 0, worker.stderr()


def test_max_requests_recycles_after_draining(listener, spawn):
    worker = spawn(listener, FLEET_MAX_REQUESTS="5")
    worker.notify.wait_for("READY", "1")
    for _ in range(5):
        assert get(port_of(listener))[0] == 200
    assert worker.wait(10) == 0
    assert "recycling after 5 requests" in worker.stderr()


def test_hung_worker_stops_watchdog_pings(listener, spawn):
    worker = spawn(listener, FLEET_APP="tests.apps:hang", FLEET_THREADS="1", FLEET_TIMEOUT="500ms",
                   WATCHDOG_USEC="400000")
    worker.notify.wait_for("READY", "1")
    worker.notify.wait_for("WATCHDOG", "1", timeout=2)
    background_get(port_of(listener), "/hang")
    # NOTE: the loop thread serves the first; the relief thread then stands in
    # for it and hands the second to the pool's one thread, which is the hang.
    assert not any(m.get("WATCHDOG") == "trigger" for m in worker.notify.drain(1.0)), (
        "one stuck request on the loop thread is not a hung worker: the pool still serves"
    )
    background_get(port_of(listener), "/hang")
    trigger = worker.notify.wait_for("WATCHDOG", "trigger", timeout=5)
    hung = [m for m in worker.notify.messages if m.get("STATUS", "").startswith("hung: ")]
    assert hung and "FLEET_TIMEOUT" in hung[-1]["STATUS"]
    since = worker.notify.messages.index(trigger)
    worker.notify.drain(1.0)  # 10 ping intervals
    pings = [m for m in worker.notify.messages[since:] if m.get("WATCHDOG") == "1"]
    assert pings == [], "a hung worker must stop pinging"
    assert "stopping watchdog pings and asking systemd to replace this worker" in worker.stderr()


def test_hung_worker_without_watchdog_exits_itself(listener, spawn):
    worker = spawn(listener, notify=False, FLEET_APP="tests.apps:hang", FLEET_THREADS="1",
                   FLEET_TIMEOUT="300ms")
    for _ in range(100):
        try:
            get(port_of(listener))
            break
        except OSError:
            time.sleep(0.05)
    background_get(port_of(listener), "/hang")
    worker.wait_entered(1)  # NOTE: the first holds the loop thread, the second the pool's thread
    background_get(port_of(listener), "/hang")
    assert worker.wait(10) == 75
    assert "no systemd to report to" in worker.stderr()


def test_journal_lines_carry_syslog_priorities(tmp_path, listener, spawn):
    # JOURNAL_STREAM names stderr's device:inode, as systemd sets it when stderr is the journal.
    log = tmp_path / "worker-0.log"
    log.touch()
    st = os.stat(log)
    worker = spawn(listener, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", FLEET_INSTANCE="3")
    worker.notify.wait_for("READY", "1")
    get(port_of(listener))
    worker.terminate()
    assert worker.wait() == 0
    lines = worker.stderr().splitlines()
    assert lines and all(line[:3] in ("<6>", "<4>") for line in lines), lines
    assert any(line.startswith("<6>worker 3: ready:") for line in lines)
    assert not any("GET /" in line for line in lines), "no per-request log by default"


def test_access_log_is_opt_in(listener, spawn):
    worker = spawn(listener, FLEET_ACCESS_LOG="yes")
    worker.notify.wait_for("READY", "1")
    get(port_of(listener), "/nope")
    worker.terminate()
    assert worker.wait() == 0
    assert '"GET /nope HTTP/1.1" 404' in worker.stderr()


# -- every bad input: one line naming the problem and the fix, and a non-zero exit --------

BAD_INPUTS = [
    ({"FLEET_APP": "nosuchmodule_xyz:app"}, EXIT_APP_LOAD,
     "cannot import WSGI app 'nosuchmodule_xyz:app': No module named 'nosuchmodule_xyz'; set FLEET_APP"),
    ({"FLEET_APP": "tests.apps:missing"}, EXIT_APP_LOAD,
     "module 'tests.apps' has no attribute 'missing'; set FLEET_APP to module:callable"),
    ({"FLEET_APP": "tests.apps:not_callable"}, EXIT_APP_LOAD,
     "WSGI app 'tests.apps:not_callable' is a int, not a callable"),
    ({"FLEET_APP": "tests.apps_broken:app"}, EXIT_APP_LOAD,
     "importing it raised RuntimeError: boom: the database URL is not set"),
    ({"FLEET_APP": "just-a-name"}, EXIT_CONFIG,
     "FLEET_APP must be module:callable, for example myproject.wsgi:application, got 'just-a-name'"),
    ({"FLEET_THREADS": "-1"}, EXIT_CONFIG, "FLEET_THREADS must be a whole number from 0 to 1024, got '-1'"),
    ({"FLEET_THREADS": "four"}, EXIT_CONFIG,
     "FLEET_THREADS must be a whole number from 0 to 1024, got 'four'"),
    ({"FLEET_GRACEFUL_TIMEOUT": "soon"}, EXIT_CONFIG, "FLEET_GRACEFUL_TIMEOUT must be a number of seconds"),
    ({"FLEET_MAX_RSS": "12Q"}, EXIT_CONFIG, "FLEET_MAX_RSS must be a size such as 512M"),
    ({"FLEET_LOG_LEVEL": "loud"}, EXIT_CONFIG, "FLEET_LOG_LEVEL must be debug or info or warning or error"),
    ({"FLEET_ACCESS_LOG": "maybe"}, EXIT_CONFIG, "FLEET_ACCESS_LOG must be yes or no, got 'maybe'"),
    ({"FLEET_HEALTH_PATH": "healthz"}, EXIT_CONFIG,
     "FLEET_HEALTH_PATH must be a path starting with '/', or off, got 'healthz'"),
    ({"FLEET_CPU_AFFINITY": "3"}, EXIT_CONFIG, "FLEET_CPU_AFFINITY must be auto or none, got '3'"),
]


@pytest.mark.parametrize(("env", "code", "message"), BAD_INPUTS,
                         ids=["=".join(next(iter(env.items()))) for env, _, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line_and_an_exit_code(listener, spawn, env, code, message):
    worker = spawn(listener, **env)
    assert worker.wait() == code
    last = worker.stderr().strip().splitlines()[-1]
    assert message in last, last
    assert worker.notify.wait_for("STATUS")["STATUS"].startswith("failed: ")


def test_bad_listen_address_by_hand(spawn):
    worker = spawn(notify=False, FLEET_LISTEN="localhost")
    assert worker.wait() == EXIT_CONFIG
    assert "FLEET_LISTEN must be HOST:PORT" in worker.stderr()


def test_busy_listen_address_by_hand(spawn, listener):
    worker = spawn(notify=False, FLEET_LISTEN=f"127.0.0.1:{port_of(listener)}")
    assert worker.wait() == EXIT_CONFIG
    err = worker.stderr()
    assert "cannot listen on 127.0.0.1:" in err and "set FLEET_LISTEN to a free address" in err


def test_arguments_are_refused(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-m", "fleet.worker", "--port", "80"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == EXIT_USAGE
    assert "fleet-worker takes no arguments" in proc.stderr and "FLEET_*" in proc.stderr


def test_inherited_fd_that_is_not_listening_is_refused(spawn):
    a, b = socket.socketpair()
    worker = spawn(a)
    assert worker.wait() == EXIT_CONFIG
    assert "not listening; fleet.socket must not set Accept=yes" in worker.stderr()
    a.close()
    b.close()


def test_start_history_backs_off_and_settles(tmp_path):
    history = StartHistory(str(tmp_path))
    delays = [history.begin() for _ in range(9)]
    assert delays == [0, 0, 0, 2, 4, 8, 16, 30, 30], "deaths without a word are paced at start"
    assert history.last_error() == "exited before it was ready"
    history.settle()
    assert history.count() == 0 and history.begin() == 0
    assert StartHistory(None).begin() == 0  # by hand: no back-off


def test_a_named_failure_waits_before_exiting_not_at_the_next_start(tmp_path):
    history = StartHistory(str(tmp_path))
    waits = []
    for _ in range(5):
        at_start = history.begin()
        waits.append((at_start, history.failed("cannot import WSGI app 'x:y'")))
    # Waiting before the exit lets the next start read a fixed configuration.
    assert waits == [(0, 0), (0, 0), (0, 0), (0, 2), (0, 4)]
    assert history.last_error() == "cannot import WSGI app 'x:y'"


def test_failed_starts_are_counted_and_paced(tmp_path, listener, spawn):
    for expected in (1, 2, 3):
        worker = spawn(listener, FLEET_APP="nosuch:app", RUNTIME_DIRECTORY=str(tmp_path))
        assert worker.wait() == EXIT_APP_LOAD
        assert (tmp_path / "starts").read_text() == str(expected)
    # The fourth failure in a row waits 2 s before exiting, saying why.
    started = time.monotonic()
    worker = spawn(listener, FLEET_APP="nosuch:app", RUNTIME_DIRECTORY=str(tmp_path))
    status = worker.notify.wait_for("STATUS")["STATUS"]
    assert status.startswith("failed: cannot import WSGI app 'nosuch:app'")
    assert status.endswith("(retrying in 2s)")
    assert worker.wait() == EXIT_APP_LOAD
    assert time.monotonic() - started >= 2
    # Fixed: the next start goes at once, and a clean exit settles the history.
    worker = spawn(listener, RUNTIME_DIRECTORY=str(tmp_path))
    worker.notify.wait_for("READY", "1")
    statuses = [m["STATUS"] for m in worker.notify.messages if "STATUS" in m]
    assert not any("retrying" in status for status in statuses), statuses
    worker.terminate()
    assert worker.wait() == 0
    assert not (tmp_path / "starts").exists()


def test_a_start_that_becomes_ready_settles_the_history(tmp_path, listener, spawn):
    (tmp_path / "starts").write_text("2")
    worker = spawn(listener, RUNTIME_DIRECTORY=str(tmp_path))
    worker.notify.wait_for("READY", "1")
    # NOTE: settled just after READY=1 is sent: wait for the file, not for a time.
    deadline = time.monotonic() + 30
    while (tmp_path / "starts").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (tmp_path / "starts").exists(), "a worker that became ready is no failed start"


def test_a_ready_worker_killed_again_and_again_restarts_at_once(tmp_path, listener, spawn):
    # NOTE: an OOM-kill loop or a crashing request: pacing these would take the fleet dark.
    for kill in range(6):
        worker = spawn(listener, RUNTIME_DIRECTORY=str(tmp_path))
        worker.notify.wait_for("READY", "1")
        statuses = [m["STATUS"] for m in worker.notify.messages if "STATUS" in m]
        assert not any("retrying" in status for status in statuses), f"start {kill + 1}: {statuses}"
        deadline = time.monotonic() + 30
        while (tmp_path / "starts").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        worker.kill()


def test_a_death_before_ready_is_paced(tmp_path, listener, spawn):
    (tmp_path / "starts").write_text("3")  # three starts died before they were ready
    started = time.monotonic()
    worker = spawn(listener, RUNTIME_DIRECTORY=str(tmp_path))
    assert worker.notify.wait_for("STATUS")["STATUS"] == (
        "failed: exited before it was ready (retrying in 2s)")
    worker.notify.wait_for("READY", "1")
    assert time.monotonic() - started >= 2


def test_worker_pins_itself_to_its_cpu(listener, spawn):
    cpus = sorted(os.sched_getaffinity(0))
    worker = spawn(listener, FLEET_INSTANCE="1")
    worker.notify.wait_for("READY", "1")
    assert os.sched_getaffinity(worker.pid) == {cpus[0]}
    beyond = spawn(listener, FLEET_INSTANCE=str(len(cpus) + 1))
    beyond.notify.wait_for("READY", "1")
    assert os.sched_getaffinity(beyond.pid) == set(cpus), "instances past the CPU count run unpinned"


def test_help_lists_every_setting(capsys):
    from fleet.settings import SETTINGS
    from fleet.worker import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(s.env in out for s in SETTINGS)


def test_worker_header_survives_path_mismatch(listener, spawn, tmp_path: Path):
    worker = spawn(listener, FLEET_HEALTH_PATH="off")
    worker.notify.wait_for("READY", "1")
    status, headers, _ = get(port_of(listener), "/healthz")
    assert status == 404 and headers["x-fleet-worker"] == "0", "health path turned off: the app answers"


def test_busy_worker_leaves_new_connections_to_its_sibling(listener, spawn):
    busy = spawn(listener, FLEET_INSTANCE="1", FLEET_APP="tests.apps:slow", FLEET_THREADS="1")
    busy.notify.wait_for("READY", "1")
    background_get(port_of(listener), "/?sleep=30", timeout=40)
    busy.wait_entered(1)  # NOTE: on worker 1's loop thread, which the relief thread stands in for
    background_get(port_of(listener), "/?sleep=30", timeout=40)
    busy.wait_entered(2)  # worker 1's only pool thread is taken too
    idle = spawn(listener, FLEET_INSTANCE="2", FLEET_APP="tests.apps:slow", FLEET_THREADS="1")
    idle.notify.wait_for("READY", "1")
    for _ in range(10):  # worker 1 would answer these only after 30 s, and as "1"
        status, headers, _ = get(port_of(listener), "/?sleep=0", timeout=20)
        assert (status, headers["x-fleet-worker"]) == (200, "2"), "waited behind the busy worker"


@pytest.mark.parametrize(("method", "path", "body", "framing"), [
    ("GET", "/", b"hello", ("content-length", "5")),
    ("HEAD", "/", b"", ("content-length", "5")),
    ("GET", "/chunked", b"one,two", ("transfer-encoding", "chunked")),
    ("GET", "/big", b"x" * (200 * 1024), ("content-length", str(200 * 1024))),
    ("GET", "/excess", b"abc", ("content-length", "3")),
], ids=["known-length", "head", "chunked", "big", "excess"])
def test_response_shapes_through_the_one_send_path(listener, spawn, method, path, body, framing):
    worker = spawn(listener, FLEET_APP="tests.apps:shapes")
    worker.notify.wait_for("READY", "1")
    conn = http.client.HTTPConnection("127.0.0.1", port_of(listener), timeout=5)
    for _ in range(2):  # twice on one connection: the framing must leave it usable
        conn.request(method, path)
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, body)
        assert resp.getheader(framing[0]) == framing[1]
        assert resp.getheader("x-fleet-worker") == "0"


def test_inline_mode_serves_drains_and_leaves_connections_to_a_sibling(listener, spawn):
    busy = spawn(listener, FLEET_INSTANCE="1", FLEET_THREADS="0", FLEET_APP="tests.apps:slow")
    assert "requests served inline" in busy.notify.wait_for("READY", "1")["STATUS"]
    background_get(port_of(listener), "/?sleep=2")
    busy.wait_entered()  # worker 1's loop is inside that request
    idle = spawn(listener, FLEET_INSTANCE="2", FLEET_THREADS="0", FLEET_APP="tests.apps:slow")
    idle.notify.wait_for("READY", "1")
    for _ in range(5):
        status, headers, _ = get(port_of(listener), "/?sleep=0")
        assert (status, headers["x-fleet-worker"]) == (200, "2")
    idle.terminate()
    assert idle.wait() == 0 and "drained" in idle.stderr()


def test_inline_mode_streams_a_body_bigger_than_waitress_buffers(listener, spawn):
    worker = spawn(listener, FLEET_THREADS="0", FLEET_APP="tests.apps:shapes")
    worker.notify.wait_for("READY", "1")
    status, _, body = get(port_of(listener), "/big")
    assert status == 200 and body == b"x" * (200 * 1024)


def test_inline_worker_stuck_in_a_request_stops_pinging(listener, spawn):
    worker = spawn(listener, FLEET_THREADS="0", FLEET_APP="tests.apps:hang", WATCHDOG_USEC="400000")
    worker.notify.wait_for("READY", "1")
    worker.notify.wait_for("WATCHDOG", "1", timeout=2)
    assert not any(m.get("STATUS", "").startswith("hung") for m in worker.notify.drain(0.5))
    background_get(port_of(listener), "/hang")
    worker.wait_entered()
    since = len(worker.notify.drain(0.2))
    worker.notify.drain(1.0)
    assert [m for m in worker.notify.messages[since:] if m.get("WATCHDOG") == "1"] == []


def served_by(port: int, path: str = "/") -> str:
    status, _, body = get(port, path)
    assert status == 200
    return body.decode()


def hand_overs(worker: WorkerProcess) -> list[str]:
    """Why the worker (at FLEET_LOG_LEVEL=debug) handed requests to its threads: for a failure's message."""
    return [line for line in worker.stderr().splitlines() if "serving on the threads" in line]


def test_fast_requests_are_served_on_the_event_loop_and_slow_ones_on_the_pool(listener, spawn):
    worker = spawn(listener, FLEET_APP="tests.apps:thread", FLEET_THREADS="2", FLEET_LOG_LEVEL="debug")
    worker.notify.wait_for("READY", "1")
    port = port_of(listener)
    assert {served_by(port) for _ in range(5)} == {"MainThread"}, hand_overs(worker)
    assert served_by(port, "/?sleep=0.1") == "MainThread", "a request starts on the loop"
    after = served_by(port)
    assert after.startswith("waitress-"), f"after a request ran long on the loop, the pool serves: {after}"


def test_many_short_computing_requests_stay_on_the_loop_and_one_long_one_goes_to_the_pool(listener, spawn):
    # NOTE: no clock: CPU time, counted by the app itself. Pipelined on one
    # connection, the 30 requests are one batch on the loop; together they
    # compute 6 times FLEET_INLINE_MAX, each a fifth of it.
    worker = spawn(listener, FLEET_APP="tests.apps:thread", FLEET_INLINE_MAX="100ms", FLEET_LOG_LEVEL="debug")
    worker.notify.wait_for("READY", "1")
    port = port_of(listener)
    ask = "/?compute=0.02"
    asks = request(path=ask) * 29 + request(path=ask, headers="Connection: close\r\n")
    answered = exchange(port, asks, ["GET"] * 30, timeout=60)
    served = {r.body for r in answered.responses}
    assert len(answered.responses) == 30, answered
    assert served == {b"MainThread"}, f"requests that only compute were handed over: {hand_overs(worker)}"
    assert served_by(port, "/?compute=0.15") == "MainThread", "a request starts on the loop"
    after = served_by(port)
    assert after.startswith("waitress-"), f"after a request computed long, the pool serves: {after}"


def test_a_request_read_while_the_loop_computes_waits_for_one_request_not_the_whole_pass(
        tmp_path: Path, listener, spawn):
    # NOTE: no clock: the order the app began requests in. The first of 6
    # requests pipelined on one connection computes until the test has sent
    # another connection's request; served a whole pass at a time, that
    # request would wait for all 6.
    worker = spawn(listener, FLEET_APP="tests.apps:turns", FLEET_INLINE_MAX="1s")
    worker.notify.wait_for("READY", "1")
    port = port_of(listener)
    release = tmp_path / "release"
    other = socket.create_connection(("127.0.0.1", port), timeout=60)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock, other:
        sock.sendall(request(path=f"/?spin={release}") + request(path="/?compute=0.005") * 4
                     + request(path="/?compute=0.005", headers="Connection: close\r\n"))
        worker.wait_entered()
        other.sendall(request(headers="Connection: close\r\n"))
        release.touch()
        pipelined = [r.body for r in parse_responses(read_until_closed(sock), ["GET"] * 6)[0]]
        turn = int(parse_responses(read_until_closed(other), ["GET"])[0][0].body)
    assert len(pipelined) == 6 and pipelined[0] == b"0", pipelined
    assert 1 <= turn < 5, f"the other connection's request began after {turn} of the 6"


def test_a_long_request_on_the_loop_holds_up_no_other_connection(listener, spawn):
    worker = spawn(listener, FLEET_APP="tests.apps:thread", FLEET_THREADS="2")
    worker.notify.wait_for("READY", "1")
    port = port_of(listener)
    long_done = threading.Event()

    def long_request() -> None:
        assert served_by(port, "/?sleep=5") == "MainThread"
        long_done.set()

    threading.Thread(target=long_request, daemon=True).start()
    worker.wait_entered()  # NOTE: on the loop thread, which no longer polls
    for _ in range(10):
        assert served_by(port).startswith("waitress-")
    assert not long_done.is_set(), "the others waited for the long request"
    worker.terminate()
    assert worker.wait(10) == 0, "the long request finishes and the worker stops cleanly"
    assert "drained" in worker.stderr()


def test_fleet_inline_max_0_hands_every_request_to_the_pool(listener, spawn):
    worker = spawn(listener, FLEET_APP="tests.apps:thread", FLEET_INLINE_MAX="0")
    worker.notify.wait_for("READY", "1")
    assert all(served_by(port_of(listener)).startswith("waitress-") for _ in range(5))


def test_a_body_over_waitress_output_bound_does_not_stall_the_loop_serving_it(listener, spawn):
    # NOTE: the client reads only after a second, so the 48 MiB pile up past
    # waitress's 16 MiB bound; fleet spools them (fleet.dispatch.OUTPUT_SPOOL)
    # rather than have the loop thread wait for a flush only it could do.
    worker = spawn(listener, FLEET_APP="tests.apps:shapes")
    worker.notify.wait_for("READY", "1")
    with socket.create_connection(("127.0.0.1", port_of(listener)), timeout=20) as client:
        client.sendall(b"GET /huge HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n")
        time.sleep(1.0)
        received = 0
        while chunk := client.recv(1 << 20):
            received += len(chunk)
    assert received > 48 * 2**20, f"only {received} bytes of the 48 MiB body arrived"
