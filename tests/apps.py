"""WSGI apps the tests serve with FLEET_APP=tests.apps:NAME."""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

from harness.worker import ENTERED

not_callable = 42


def _entered(environ: dict[str, Any]) -> None:
    """Say on stderr that a request is inside the app, for a test to wait on rather than sleep."""
    sys.stderr.write(f"{ENTERED} {environ.get('PATH_INFO')}?{environ.get('QUERY_STRING', '')}\n")
    sys.stderr.flush()


def slow(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Sleep ``?sleep=SECONDS`` (default 1) before answering: a request that is in flight."""
    seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("sleep", ["1"])[0])
    _entered(environ)
    time.sleep(seconds)
    body = f"slept {seconds}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _compute(seconds: float) -> None:
    """Use ``seconds`` of this thread's CPU time: work that never sleeps, timed without a wall clock."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def thread(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer the name of the thread serving the request.

    First it sleeps ``?sleep=SECONDS`` and computes ``?compute=SECONDS`` of its
    thread's CPU time (default 0 each). Only a request that sleeps says it
    entered: a write to stderr's file can wait on the disk, and the worker
    would rightly see a request that waits.
    """
    query = parse_qs(environ.get("QUERY_STRING", ""))
    sleep = float(query.get("sleep", ["0"])[0])
    if sleep:
        _entered(environ)
        time.sleep(sleep)
    _compute(float(query.get("compute", ["0"])[0]))
    body = threading.current_thread().name.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


_turns = itertools.count()


def turns(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer how many requests the app began before this one (from 0), then compute.

    ``?spin=PATH`` computes until PATH exists; ``?compute=SECONDS`` computes that
    much of its thread's CPU time. Neither sleeps: to the worker, both only compute.
    Only a request that spins says it entered (on stderr, whose file can wait on the disk).
    """
    turn = next(_turns)
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if "spin" in query:
        _entered(environ)
        while not os.path.exists(query["spin"][0]):
            pass
    _compute(float(query.get("compute", ["0"])[0]))
    body = str(turn).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


_served = 0


def sometimes_slow(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer at once, but take 20 ms over every 20th request: a mostly fast app."""
    global _served
    _served += 1
    if _served % 20 == 0:
        time.sleep(0.02)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


_forever = threading.Event()


def hang(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Block forever on ``/hang``; answer anything else: a worker that gets stuck."""
    if environ.get("PATH_INFO") == "/hang":
        _entered(environ)
        _forever.wait()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def shapes(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer in the shapes a response takes through waitress's write path."""
    path = environ.get("PATH_INFO")
    if path == "/chunked":  # no Content-Length: chunked transfer
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"one,", b"two"]
    if path == "/huge":  # over waitress's output bound: the writer waits for the loop to flush
        start_response("200 OK", [("Content-Length", str(48 * 2**20))])
        return (b"y" * 2**20 for _ in range(48))
    if path == "/big":  # over the one-send size
        body = b"x" * (200 * 1024)
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/excess":  # more bytes than Content-Length: waitress cuts them
        start_response("200 OK", [("Content-Length", "3")])
        return [b"abcdef"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


_inside_lock = threading.Lock()
_inside = 0


def held(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Wait inside the app until the file ``?release=PATH`` exists, counting requests inside.

    How many are inside at once goes to ``PATH.inside``, so a test can wait for
    a number of requests to be in the app together, then release them.
    """
    global _inside
    release = parse_qs(environ.get("QUERY_STRING", ""))["release"][0]
    with _inside_lock:
        _inside += 1
        with open(release + ".inside", "w") as f:
            f.write(str(_inside))
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.005)  # NOTE: a wait on I/O, as a database query is
    with _inside_lock:
        _inside -= 1
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def file_response(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer the file named by $FLEET_TEST_FILE through the server's wsgi.file_wrapper if any."""
    path = os.environ["FLEET_TEST_FILE"]
    size = os.path.getsize(path)
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
    f = open(path, "rb")
    wrapper = environ.get("wsgi.file_wrapper")
    return wrapper(f) if wrapper else iter(lambda: f.read(8192), b"")


_most_inside = 0


def brief(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Wait 1 ms (a quick database query), and answer the most requests seen inside at once."""
    global _inside, _most_inside
    with _inside_lock:
        _inside += 1
        _most_inside = max(_most_inside, _inside)
    time.sleep(0.001)
    with _inside_lock:
        _inside -= 1
        body = str(_most_inside).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class _Counted:
    """A body of ``mib`` chunks of 1 MiB (chunk k is the byte k % 251 repeated) that records, in
    the file ``record``, how many chunks the server took so far and, once it does, that it was closed.
    """

    def __init__(self, mib: int, record: str) -> None:
        self.mib = mib
        self.record = record
        self.taken = 0

    def __iter__(self) -> Iterator[bytes]:
        for k in range(self.mib):
            self.taken = k + 1
            self._write(str(self.taken))
            yield bytes([k % 251]) * 2**20

    def _write(self, text: str) -> None:
        with open(self.record + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.record + ".tmp", self.record)

    def close(self) -> None:
        self._write(f"{self.taken} closed")


def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``/?mib=N&record=PATH[&chunked=1]``: a body generated 1 MiB at a time (:class:`_Counted`)."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    mib = int(query["mib"][0])
    headers = [("Content-Type", "application/octet-stream")]
    if "chunked" not in query:
        headers.append(("Content-Length", str(mib * 2**20)))
    start_response("200 OK", headers)
    return _Counted(mib, query["record"][0])
