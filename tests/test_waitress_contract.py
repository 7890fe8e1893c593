"""What fleet/waitress_api.py needs from waitress beyond its public API, checked on real objects.

fleet adapts waitress to a shared socket, a drain, deadlines and an inline
dispatch; doing so it uses names waitress does not promise to keep, all of
them in fleet/waitress_api.py, the one module of fleet that imports waitress.
Each is listed here with why fleet needs it, so a waitress release that moves
one fails this test with a message naming it, instead of failing a worker in
production; then the module's own API is run on real waitress objects.
``make unit`` runs it against Debian's waitress, ``make pypi`` against the
newest release.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import waitress
from waitress import wasyncore
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.parser import (
    HTTPRequestParser,
    ParsingError,
    TransferEncodingNotImplemented,
    crack_first_line,
    get_header_lines,
)
from waitress.server import BaseWSGIServer
from waitress.task import Task, ThreadedTaskDispatcher, WSGITask
from waitress.utilities import RequestHeaderFieldsTooLarge

from fleet import waitress_api

WHERE = "fleet/waitress_api.py"

PARAMETERS = {
    waitress.create_server: {"map": "to share one event loop map between IP and UNIX sockets",
                             "_start": "to keep the Backlog= that fleet.socket set",
                             "_dispatcher": "to plug in fleet's dispatch"},
    wasyncore.readwrite: {"obj": "to hand what epoll reports to the socket's object, as poll2() does",
                          "flags": ""},
    ThreadedTaskDispatcher.shutdown: {"cancel_pending": "", "timeout": ""},
    HTTPRequestParser.parse_header: {"header_plus": "to check framing and count headers first"},
}
CLASS_ATTRIBUTES = {
    HTTPChannel: {"task_class": "to count requests in flight and mark the worker",
                  "parser_class": "to parse with fleet's stricter parser",
                  "received": "to time a request's head and body",
                  "handle_close": "", "write_soon": "to send a small response in one send()",
                  "handle_write": "to resume a paused response once its client read it",
                  "error_task_class": "(fleet's copy of HTTPChannel.service)",
                  "_flush_outbufs_below_high_watermark": "", "send_continue": "", "logger": "",
                  "readable": "for the event loop to ask", "writable": "for the event loop to ask"},
    BaseWSGIServer: {"channel_class": "to use fleet's channel", "readable": "for the accept gate",
                     "handle_accept": "to accept a batch per pass", "pull_trigger": "",
                     "accepting": "to stop accepting while draining"},
    ThreadedTaskDispatcher: {"add_task": "to serve inline or on the pool", "set_thread_count": ""},
    WSGITask: {"service": "", "write": "", "finish": "to keep a HEAD response bodiless",
               "logger": "",
               "build_response_header": "(fleet's faster copy, which ends keep-alive when due)",
               "has_body": "", "remove_content_length_header": "to send a file wrapper of another size",
               "environ": "(fleet's copy of get_environment caches it there)"},
    wasyncore: {"file_dispatcher": "to wake the loop on signals"},
}
INSTANCE_ATTRIBUTES = {
    "channel": ("request", "requests", "total_outbufs_len", "will_close", "close_when_flushed",
                "last_activity", "socket", "server", "addr", "connected", "adj",
                "requests_lock", "outbuf_lock", "current_outbuf_count", "sent_continue",
                "check_client_disconnected", "_fileno", "accepting"),
    "listener": ("trigger", "adj", "socket", "application", "effective_port", "server_name"),
    "dispatcher": ("queue",),
    "parser": ("headers_finished", "body_bytes_received", "completed", "error", "command", "headers",
               "path", "version", "request_uri", "query", "url_scheme", "get_body_stream"),
    "task": ("wrote_header", "complete", "content_length", "chunked_response",
             "content_bytes_written", "request", "channel", "status", "response_headers", "version",
             "close_on_finish"),
}


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "0")])
    return []


@pytest.fixture
def objects() -> Iterator[dict[str, Any]]:
    """A listener, a channel on a real connection, a parser and a task, as fleet makes them."""
    dispatcher = ThreadedTaskDispatcher()
    event_map: dict[int, Any] = {}
    listener = _listener(event_map, dispatcher)
    ours, theirs = socket.socketpair()
    channel = HTTPChannel(listener, ours, ("127.0.0.1", 1), listener.adj, map=event_map)
    parser = HTTPRequestParser(listener.adj)
    parser.received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    task = WSGITask(channel, parser)
    yield {"listener": listener, "channel": channel, "parser": parser, "task": task,
           "dispatcher": dispatcher}
    for obj in list(event_map.values()):
        obj.close()
    theirs.close()


def version() -> str:
    from importlib.metadata import version as of

    return of("waitress")


@pytest.mark.parametrize("function", list(PARAMETERS), ids=lambda f: f.__qualname__)
def test_functions_take_the_parameters_fleet_passes(function: Any) -> None:
    have = inspect.signature(function).parameters
    for name, why in PARAMETERS[function].items():
        assert name in have, (f"waitress {version()}: {function.__qualname__}() lost its {name!r} "
                              f"parameter, which {WHERE} passes {why}".rstrip())


@pytest.mark.parametrize("owner", list(CLASS_ATTRIBUTES), ids=lambda o: o.__name__)
def test_classes_have_what_fleet_overrides_or_calls(owner: Any) -> None:
    for name, why in CLASS_ATTRIBUTES[owner].items():
        assert hasattr(owner, name), (f"waitress {version()}: {owner.__name__}.{name} is gone; "
                                      f"{WHERE} uses it {why}".rstrip())


@pytest.mark.parametrize("kind", list(INSTANCE_ATTRIBUTES))
def test_objects_keep_the_state_fleet_reads(objects: dict[str, Any], kind: str) -> None:
    obj = objects[kind]
    for name in INSTANCE_ATTRIBUTES[kind]:
        assert hasattr(obj, name), (f"waitress {version()}: a {type(obj).__name__} has no {name!r}, "
                                    f"which {WHERE} reads")


ADJUSTMENTS = ("sockets", "threads", "connection_limit", "channel_timeout", "asyncore_use_poll", "ident",
               "outbuf_high_watermark")


def test_create_server_takes_the_settings_fleet_passes() -> None:
    from waitress.adjustments import Adjustments

    known = {name for name, _ in Adjustments._params}
    for name in ADJUSTMENTS:
        assert name in known, f"waitress {version()}: create_server() no longer takes {name}="


# NOTE: fleet keeps its own copy of these (waitress 2.1.2 and 3.0.2's, by sha256 of their source):
# FleetChannel.service lets a response pause; FleetTask's give the same results in fewer bytecodes
# (checked below). Another source is a change to read and carry over, then add its hash here.
COPIES = {
    HTTPChannel.service: ("FleetChannel.service", {"f73afa13748e1128"}),
    Task.service: ("FleetTask.service", {"d96bb4019c488cca"}),
    Task.build_response_header: ("FleetTask.build_response_header", {"6a5c817099420757", "2cf70b88816fabc1"}),
    WSGITask.execute: ("FleetTask.execute and start_response", {"200cd31bbdf5f29a", "207afc60fcf3181f"}),
    WSGITask.get_environment: ("FleetTask.get_environment", {"57bc4516ab3cd115", "3bb57be6c7db4e59"}),
    HTTPRequestParser.parse_header: ("FleetParser._parse", {"056969079319fe4b", "c2c093b901782da6"}),
    get_header_lines: ("_parse_fields", {"968a7db45a59f12c"}),
    crack_first_line: ("_parse_request_line", {"e93cfb7105e90e2f", "5ef0eba51166e715"}),
}


@pytest.mark.parametrize("original", list(COPIES), ids=lambda f: f.__qualname__)
def test_fleets_copies_are_of_the_installed_waitress(original: Any) -> None:
    import hashlib

    copy, known = COPIES[original]
    digest = hashlib.sha256(inspect.getsource(original).encode()).hexdigest()[:16]
    assert digest in known, (
        f"waitress {version()} changed {original.__qualname__} (sha256 {digest}): {copy} in {WHERE} "
        f"does what it does; carry the change over, then add {digest!r} to COPIES")


RESPONSE_HEADERS = (
    [],
    [("Content-Length", "5")],
    [("content-type", "text/plain"), ("content-length", "5")],
    [("Date", "Thu, 01 Jan 1970 00:00:00 GMT"), ("SERVER", "app"), ("Content-Length", "5")],
    [("x-a", "1"), ("set-cookie", "a=1"), ("X-A", "2"), ("Set-Cookie", "b=2"), ("x-fleet-worker", "app")],
    [("Connection", "close"), ("content-length", "5")],
)


@pytest.mark.parametrize("headers", RESPONSE_HEADERS, ids=lambda h: ",".join(n for n, _ in h) or "none")
def test_fleets_response_head_is_waitresss_with_the_worker_header(objects: dict[str, Any],
                                                                   headers: list[tuple[str, str]]) -> None:
    channel, adj = objects["channel"], objects["listener"].adj

    class Host:
        instance = "7"

        def __init__(self, closing: bool) -> None:
            self.closing = closing

        def ends_keepalive(self, channel: Any) -> bool:
            return self.closing

    def task(kind: Any, version: str, asked: str, closing: bool) -> Any:
        parser = HTTPRequestParser(adj)
        parser.received(f"GET / HTTP/{version}\r\nHost: t\r\n{asked}\r\n".encode())
        if kind is WSGITask and closing:
            parser.headers["CONNECTION"] = "close"
        return kind(channel, parser)

    cases = itertools.product(
        ("1.0", "1.1", "2.0"),
        ("", "Connection: close\r\n", "Connection: keep-alive\r\n", "Connection: Keep-Alive\r\n"),
        ("200 OK", "204 No Content", "304 Not Modified", "101 Switching Protocols", "404 Not Found"),
        (None, 5), (False, True), (False, True))
    for (version, asked, status, length, closing_before, ending), time_ in itertools.product(
            cases, ("first", "again")):  # NOTE: again: the head fleet kept from the first time
        theirs = task(WSGITask, version, asked, ending)
        ours = task(waitress_api.FleetTask, version, asked, ending)
        channel.host = Host(ending)
        theirs.status = status
        ours.start_response(status, [])  # NOTE: fleet's task knows whether a status has a body from here
        for each, extra in ((theirs, [("X-Fleet-Worker", "7")]), (ours, [])):
            each.content_length = length
            each.response_headers = list(headers) + extra
            each.start_time = 86400 * 365.25 * 56 + 0.75
            each.close_on_finish = closing_before
        case = (f"HTTP/{version} {asked!r} {status}, length {length}, "
                f"closing {closing_before}/{ending} ({time_})")
        assert ours.build_response_header() == theirs.build_response_header(), case
        assert ours.response_headers == theirs.response_headers, case
        assert (ours.close_on_finish, ours.chunked_response) == \
            (theirs.close_on_finish, theirs.chunked_response), case


def _listener(event_map: dict[int, Any] | None = None, dispatcher: Any = None, **adjustments: Any) -> Any:
    """A waitress listening server on a loopback port, not started, as fleet makes them."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(8)
    return waitress.create_server(app, map={} if event_map is None else event_map, _start=False,
                                  _dispatcher=dispatcher or ThreadedTaskDispatcher(), sockets=[listening],
                                  **adjustments)


def _request(listener: Any, raw: bytes, addr: Any = ("127.0.0.1", 50000)) -> Any:
    """A channel that read ``raw``, as waitress makes it, with the parsed request."""
    ours, theirs = socket.socketpair()
    theirs.close()
    channel = HTTPChannel(listener, ours, addr, listener.adj, map={})
    parser = HTTPRequestParser(listener.adj)
    rest = raw
    while rest and not parser.completed:
        rest = rest[parser.received(rest):]
    assert parser.completed and not parser.error, raw
    return channel, parser


ENVIRON_REQUESTS = (
    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET //a//b?x=1&y=%20 HTTP/1.0\r\n\r\n",
    b"GET ///p HTTP/1.1\r\nHost: t\r\nUser-Agent: wrk\r\nAccept: */*\r\nAccept: text/html\r\n\r\n",
    b"POST /p/q HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    b"PUT /prefix HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    b"DELETE /prefix/x/ HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\nCookie: a=1; b=2\r\n\r\n",
    b"HEAD /prefixed HTTP/1.1\r\nHost: t\r\nHttp-Content-Type: x\r\nX:  padded \t\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET http://example.org:8080/abs?q HTTP/1.1\r\nHost: t\r\n\r\n",
)


@pytest.mark.parametrize("url_prefix", ["", "/prefix"])
def test_fleets_environ_is_waitresss(url_prefix: str) -> None:
    listener = _listener(url_prefix=url_prefix, ident="fleet-test")
    try:
        for raw, addr in itertools.product(ENVIRON_REQUESTS, (("127.0.0.1", 50000), ("localhost", None))):
            theirs = WSGITask(*_request(listener, raw, addr)).get_environment()
            ours = waitress_api.FleetTask(*_request(listener, raw, addr)).get_environment()
            case = f"{raw!r} from {addr}, url_prefix {url_prefix!r}"
            their_body, our_body = theirs.pop("wsgi.input"), ours.pop("wsgi.input")
            assert type(our_body) is type(their_body) and our_body.read() == their_body.read(), case
            theirs.pop("waitress.client_disconnected")
            assert ours.pop("waitress.client_disconnected").__self__.__class__ is HTTPChannel, case
            assert ours == theirs, case
    finally:
        listener.close()


class _Closing(list):  # type: ignore[type-arg]
    """A body with a close() that says it was called."""

    closed = False

    def close(self) -> None:
        self.closed = True


def _generated(*chunks: bytes) -> Iterator[bytes]:
    yield from chunks


# Each: what the app does with start_response, then what it returns.
APPS: dict[str, tuple[list[tuple[Any, ...]], Any]] = {
    "one chunk": ([("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])], [b"hello"]),
    "one chunk, no length": ([("200 OK", [("content-type", "text/plain")])], [b"hello"]),
    "empty": ([("200 OK", [])], []),
    "empty chunk": ([("200 OK", [])], [b""]),
    "chunks": ([("200 OK", [("X-A", "1")])], [b"a", b"", b"bc"]),
    "chunks of a length": ([("200 OK", [("Content-Length", "3")])], [b"a", b"bc"]),
    "generator": ([("201 Created", [])], _generated(b"ab", b"cd")),
    "tuple of one": ([("200 OK", [])], (b"hello",)),
    "closing": ([("200 OK", [])], _Closing([b"a", b"b"])),
    "closing, one chunk": ([("200 OK", [])], _Closing([b"a"])),
    "too few bytes": ([("200 OK", [("Content-Length", "9")])], [b"abc"]),
    "too few bytes, none": ([("200 OK", [("Content-Length", "9")])], []),
    "too many bytes": ([("200 OK", [("Content-Length", "2")])], [b"abc", b"d"]),
    "204 with a body": ([("204 No Content", [])], [b"x"]),
    "304": ([("304 Not Modified", [("ETag", '"1"')])], []),
    "status bytes": ([(b"200 OK", [])], []),
    "status with a newline": ([("200 OK\r\nX: 1", [])], []),
    "name not a string": ([("200 OK", [(b"X", "1")])], []),
    "value not a string": ([("200 OK", [("X", 1)])], []),
    "value a list": ([("200 OK", [("X", ["1"])])], []),
    "header a list": ([("200 OK", [["X-A", "1"], ["Content-Length", "1"]])], [b"a"]),
    "newline in a value": ([("200 OK", [("X", "1\r\nSet-Cookie: a=1")])], []),
    "newline in a name": ([("200 OK", [("X\nY", "1")])], []),
    "hop-by-hop": ([("200 OK", [("Connection", "close")])], []),
    "hop-by-hop, lowercase": ([("200 OK", [("transfer-encoding", "chunked")])], []),
    "length not a number": ([("200 OK", [("Content-Length", "five")])], []),
    "a second call": ([("200 OK", []), ("500 Oops", [])], []),
    "a second call with exc_info": ([("200 OK", [("X-A", "1")]), ("500 Oops", [("X-B", "2")], "exc")],
                                    [b"e"]),
}
# waitress 2.1 closes without saying so when the head is still to go; fleet says so, as 3.0 does.
SAYS_CLOSE = {"too few bytes, none"}


def _serve(task: Any, calls: list[tuple[Any, ...]], body: Any) -> tuple[bytes, str, bool]:
    """Run ``task`` as waitress's Task.service() does, with an app that makes ``calls``.

    Returns what went out, the error start_response or the task raised (its type and words),
    and whether the connection closes after.
    """
    sent: list[bytes] = []
    task.channel.write_soon = lambda data: sent.append(bytes(data)) or len(data)
    errors: list[str] = []

    def the_app(environ: dict[str, Any], start_response: Any) -> Any:
        for call in calls:
            try:
                if len(call) == 3:
                    try:
                        raise RuntimeError("the app failed")
                    except RuntimeError:
                        start_response(*call[:2], sys.exc_info())
                else:
                    start_response(*call)
            except Exception as error:
                errors.append(f"{type(error).__name__}: {error}")
                raise
        return body

    task.channel.server.application = the_app
    task.start_time = 86400 * 365.25 * 56 + 0.75
    try:
        task.execute()
        task.finish()
    except Exception as error:
        errors.append(f"{type(error).__name__}: {error}")
    return b"".join(sent), " / ".join(errors), task.close_on_finish


@pytest.mark.parametrize("name", list(APPS))
def test_fleets_start_response_and_execute_are_waitresss(name: str) -> None:
    listener = _listener()
    raw = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    calls, body = APPS[name]
    try:
        theirs = WSGITask(*_request(listener, raw))
        ours = waitress_api.FleetTask(*_request(listener, raw))
        ours.channel.host = type("Host", (), {"instance": "7", "ends_keepalive": lambda self, c: False})()
        their_body = list(body) if isinstance(body, Iterator) else body
        their_out = _serve(theirs, calls, _generated(*their_body) if isinstance(body, Iterator) else body)
        if isinstance(body, _Closing):
            assert body.closed, "waitress closes the body"
            body.closed = False
        our_out = _serve(ours, calls, _generated(*their_body) if isinstance(body, Iterator) else body)
        if isinstance(body, _Closing):
            assert body.closed, f"{name}: fleet closes the app's body as waitress does"
        sent = our_out[0].replace(b"X-Fleet-Worker: 7\r\n", b"")
        if name in SAYS_CLOSE and version().startswith("2."):
            assert sent.replace(b"Connection: close\r\n", b"", 1) == their_out[0], name
            their_out = (sent, *their_out[1:])
        assert (sent, *our_out[1:]) == their_out, name
        for attribute in ("status", "content_length", "content_bytes_written", "complete",
                          "has_body", "chunked_response"):
            assert getattr(ours, attribute) == getattr(theirs, attribute), f"{name}: {attribute}"
    finally:
        listener.close()


HEADS = (
    b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET /a%20b/%2Fc?x=1&y#frag HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET //double//path?q HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET http://example.org:8080/p?q HTTP/1.1\r\nHost: t\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: t\r\n\r\n",
    b"GET /\r\n\r\n",
    b"GET / HTTP/1.1\r\nX:  padded \t\r\nY:\r\nAccept: a\r\naccept: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX_Forwarded_For: 10.0.0.1\r\nContent_Length: 5\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Long: a\r\n b\r\n\tc\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: caf\xc3\xa9 \x85\r\n\r\n",
    b"POST /p HTTP/1.1\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n",
    b"POST /p HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /p HTTP/1.1\r\nTransfer-Encoding: Chunked \r\n\r\n",
    b"POST /p HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    b"POST /p HTTP/1.1\r\nTransfer-Encoding: \x85chunked\r\n\r\n",
    b"POST /p HTTP/1.1\r\nTransfer-Encoding: ,\r\n\r\n",
    b"POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    b"POST /p HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n",
    b"POST /p HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"POST /p HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
    b"POST /p HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: \x01\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\n fold-first: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
    b"GET / HTTP/1.1\r\nX : a\r\n\r\n",
    b"get / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\n\r\n\r\n",
    b"GET / HTTP/1.1",
    b"GET / HTTP/1.1\r\nCookie: " + b"c" * (waitress_api.KEPT_HEAD_MAX + 1) + b"\r\n\r\n",
)
# waitress 2.1 took any digits and dots for a version, and a request line it could not split for an
# empty one; fleet refuses both, as 3.0 does.
REFUSED_SINCE_3 = (b"GET / HTTP/1.1.1\r\n\r\n", b"GET  / HTTP/1.1\r\n\r\n")


def _parsed(parser: Any, parse: Any, head: bytes) -> dict[str, Any]:
    """What parsing ``head`` raised, or the state it left in ``parser``."""
    try:
        parse(head)
    except (ParsingError, TransferEncodingNotImplemented) as error:
        return {"raised": f"{type(error).__name__}: {error}"}
    state = {name: value for name, value in vars(parser).items() if name not in ("adj", "body_rcv")}
    receiver = parser.body_rcv
    state["body_rcv"] = (type(receiver).__name__, getattr(receiver, "remain", None))
    return state


@pytest.mark.parametrize("head", HEADS + REFUSED_SINCE_3, ids=lambda h: repr(h[:40]))
def test_fleets_parse_is_waitresss(head: bytes) -> None:
    from waitress.adjustments import Adjustments

    adj = Adjustments()
    theirs = HTTPRequestParser(adj)
    expected = _parsed(theirs, theirs.parse_header, head)
    if head in REFUSED_SINCE_3 and version().startswith("2."):
        expected = {"raised": "ParsingError: Start line is invalid"}
    for time_ in ("first", "again"):  # NOTE: the second parse is of the head kept from the first
        ours = waitress_api.FleetParser(adj)
        assert _parsed(ours, ours._parse, head) == expected, f"{head!r}, parsed {time_}"


def test_a_parse_error_is_a_400_and_too_many_headers_a_431() -> None:
    assert issubclass(ParsingError, Exception)
    assert issubclass(ClientDisconnected, Exception), "a paused response's client left"
    assert RequestHeaderFieldsTooLarge("x").code == 431, "FLEET_MAX_HEADERS answers with it"


def test_add_task_is_called_with_the_channel_from_received(objects: dict[str, Any]) -> None:
    # NOTE: the inline dispatch queues the channel add_task() gets and serves it after the pass.
    seen: list[Any] = []
    objects["dispatcher"].add_task = seen.append
    channel = objects["channel"]
    channel.received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert seen == [channel], f"waitress {version()}: received() no longer hands the channel to add_task()"


# --- the boundary itself -------------------------------------------------------------------


def test_only_waitress_api_imports_waitress() -> None:
    package = Path(waitress_api.__file__).parent
    for path in sorted(package.rglob("*.py")):
        if path.name == "waitress_api.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] != "waitress", (
                    f"{path.relative_to(package.parent)}:{node.lineno} imports {name}; "
                    f"waitress is reached only through {WHERE}")


class _Host:
    """A stand-in for FleetServer: what waitress's objects, as fleet adapts them, report."""

    instance = "t"

    def __init__(self) -> None:
        self.accepted: list[bool] = []
        self.fresh_reads = 0
        self.started: list[int] = []
        self.finished: list[int] = []
        self.paused: list[int] = []

    def connection_accepted(self, fresh: bool) -> None:
        self.accepted.append(fresh)

    def fresh_read(self) -> None:
        self.fresh_reads += 1

    def request_started(self, thread: int) -> None:
        self.started.append(thread)

    def request_finished(self, thread: int, task: waitress_api.FleetTask) -> None:
        self.finished.append(thread)

    def request_paused(self, thread: int) -> None:
        self.paused.append(thread)

    def ends_keepalive(self, channel: waitress_api.FleetChannel) -> bool:
        return True


@pytest.fixture
def boundary() -> Iterator[dict[str, Any]]:
    """fleet's API over waitress, on a real listening socket, and a connection it accepted."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(8)
    loop = waitress_api.EventLoop()
    pool = waitress_api.ThreadPool()
    host = _Host()
    wrapped: list[str] = []

    def wrapper(name: str) -> Any:
        def wrap(original: Any) -> Any:
            wrapped.append(name)
            return original
        return wrap

    listeners = waitress_api.Listeners(app, [listening], loop, pool, host, max_headers=5,
                                       asyncore_use_poll=True)
    listeners.adapt(readable=wrapper("readable"), accept=wrapper("accept"), wake=wrapper("wake"))
    loop.seal()
    listeners.set_accepting(True)
    client = socket.create_connection(listening.getsockname(), timeout=5)
    deadline = time.monotonic() + 5
    while loop.connections() == 0 and time.monotonic() < deadline:
        with loop.lock:
            loop.poll_once(0.05)
    yield {"loop": loop, "pool": pool, "host": host, "listeners": listeners, "wrapped": wrapped,
           "client": client, "listening": listening}
    client.close()
    loop.close()


def test_listeners_hand_connections_to_fleets_channel_and_take_its_hooks(boundary: dict[str, Any]) -> None:
    assert boundary["wrapped"] == ["readable", "accept", "wake"], \
        f"waitress {version()}: Listeners.adapt() no longer reaches the listener's hooks"
    loop = boundary["loop"]
    assert loop.connections() == 1, f"waitress {version()}: EventLoop.poll_once() accepted nothing"
    channels = list(loop.channels())
    assert len(channels) == 1 and isinstance(channels[0], waitress_api.FleetChannel), \
        f"waitress {version()}: the listener's channel_class is not used for new connections"
    assert boundary["host"].accepted == [False], "FleetChannel reports each accepted connection to its Host"
    assert boundary["listeners"].filenos() == [boundary["listening"].fileno()]


def test_fleet_channel_sends_at_once_what_nothing_waits_before_and_buffers_the_rest_in_order(
        boundary: dict[str, Any]) -> None:
    loop, client = boundary["loop"], boundary["client"]
    channel = next(loop.channels())
    buffered: list[bytes] = []
    channel.outbufs[-1].append = buffered.append  # NOTE: waitress's way: buffer, then flush
    channel.write_soon(b"small")
    assert channel.total_outbufs_len == 0 and not buffered, "a write with nothing buffered goes straight out"
    del channel.outbufs[-1].append
    assert client.recv(100) == b"small"
    big = bytes(range(256)) * 16384  # NOTE: 4 MiB, more than the socket buffers hold
    channel.write_soon(big)
    left = channel.total_outbufs_len
    assert 0 < left < len(big), "what the socket did not take is buffered"
    channel.write_soon(b"tail")
    assert channel.total_outbufs_len == left + 4, "a write behind buffered bytes waits its turn"
    received = bytearray()
    client.setblocking(False)
    deadline = time.monotonic() + 30
    while len(received) < len(big) + 4 and time.monotonic() < deadline:
        with loop.lock:
            loop.poll_once(0.01)
        try:
            received += client.recv(1 << 20)
        except BlockingIOError:
            pass
    assert bytes(received) == big + b"tail", "the bytes arrive whole and in order"
    assert channel.total_outbufs_len == 0


def test_a_poll_pass_asks_only_the_connections_whose_state_may_have_changed(boundary: dict[str, Any]) -> None:
    """waitress asks every connection before each poll; an idle one must cost a pass nothing."""
    loop, listening = boundary["loop"], boundary["listening"]
    loop.rescan = 3600.0  # NOTE: no full rescan within the test
    clients: list[socket.socket] = []
    deadline = time.monotonic() + 10
    try:
        for _ in range(10):  # NOTE: one at a time, as the listening socket's backlog is short
            clients.append(socket.create_connection(listening.getsockname(), timeout=5))
            while loop.connections() < len(clients) + 1 and time.monotonic() < deadline:
                with loop.lock:
                    loop.poll_once(0.01)
        assert loop.connections() == 11
        for _ in range(3):  # NOTE: the passes that ask the new connections once
            with loop.lock:
                loop.poll_once(0)
        asked: list[Any] = []
        by_address = {}
        for channel in loop.channels():
            by_address[channel.addr] = channel
            channel.readable = lambda channel=channel, ask=channel.readable: asked.append(channel) or ask()
        for _ in range(5):
            with loop.lock:
                loop.poll_once(0)
        assert asked == [], "a pass asks no connection where nothing happened"
        clients[3].sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        speaker = by_address[clients[3].getsockname()]
        while not speaker.requests and time.monotonic() < deadline:
            with loop.lock:
                loop.poll_once(0.01)
        with loop.lock:
            loop.poll_once(0)
        assert speaker.requests and set(asked) == {speaker}, "the connection that was read is asked again"
        assert speaker.readable() is False, "a request queued: the connection reads no further"
        asked.clear()
        speaker.requests.clear()  # NOTE: as a thread serving it would, and then:
        speaker.ask_again()
        with loop.lock:
            loop.poll_once(0)
        assert set(asked) == {speaker}, "a connection told to be asked again is"
        clients[5].sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        while not by_address[clients[5].getsockname()].requests and time.monotonic() < deadline:
            with loop.lock:
                loop.poll_once(0.01)
        assert by_address[clients[5].getsockname()].requests, "another connection is still polled for reading"
    finally:
        for client in clients:
            client.close()


def test_fleet_channel_reads_waitress_state_under_fleets_names(boundary: dict[str, Any]) -> None:
    loop = boundary["loop"]
    boundary["client"].sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # NOTE: a head still arriving
    deadline = time.monotonic() + 5
    channel = next(loop.channels())
    while channel.arriving() is None and time.monotonic() < deadline:
        with loop.lock:
            loop.poll_once(0.05)
    request = channel.arriving()
    assert request is not None, f"waitress {version()}: the channel's request being read is not its .request"
    assert channel.spoke and boundary["host"].fresh_reads == 0
    assert not channel.head_complete(request) and channel.body_received(request) == 0
    assert not channel.idle() and not channel.owes_response() and not channel.closing_after_response()
    assert 0 < time.time() - channel.last_traffic() < 10
    assert not channel.has_unread_bytes()
    channel.time_out()
    assert loop.connections() == 0
    assert boundary["client"].recv(100).startswith(b"HTTP/1.1 408"), "time_out() answers 408"


def test_thread_pool_takes_requests_through_add_task() -> None:
    pool = waitress_api.ThreadPool()
    taken: list[Any] = []
    pool.to_pool = taken.append  # type: ignore[method-assign]
    pool.add_task("task")
    assert taken == ["task"] and pool.queued() == 0
    pool.start_threads(1)
    assert pool.stop(cancel_pending=True, timeout=1), f"waitress {version()}: the pool did not stop"
