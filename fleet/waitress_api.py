"""fleet's one boundary to waitress: every waitress name fleet uses, behind a small API.

waitress has no API for what fleet does with it (a shared listening socket,
an accept gate, a drain, deadlines, requests served on the event loop), so
fleet uses names waitress does not promise to keep. They are all here, and
only here: the rest of fleet imports this module, never ``waitress``.
tests/test_waitress_contract.py checks each name against the installed
waitress (2.1 and 3.x), and fails naming the one that moved.

The API, by what it wraps:

* :class:`EventLoop`: waitress's socket map, polled with epoll one pass at a
  time (``wasyncore.readwrite`` handles what it reports), the connections in
  it, and the lock that says who runs it.
* :class:`Listeners`: ``waitress.create_server`` on already-listening
  sockets, and the hooks fleet sets on the listening servers (the accept gate,
  the accept batch, how a finished request wakes the loop, accepting or not).
* :class:`ThreadPool`: ``ThreadedTaskDispatcher``, with the hooks fleet's
  dispatch strategies (fleet/dispatch.py) override.
* :class:`FleetChannel`, :class:`FleetParser`, :class:`FleetTask`: waitress's
  connection, request parser and request, as fleet adapts them; they report
  to a :class:`Host` (the worker's FleetServer). A response its client reads
  slowly pauses between two chunks of its body and gives its thread back
  (:class:`Body`, ``FleetChannel.service``).
* :class:`SignalPipe`: a ``wasyncore.file_dispatcher`` that wakes the loop on signals.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import operator
import os
import re
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from threading import get_ident
from typing import Any, Protocol

import waitress
from waitress import wasyncore
from waitress.buffers import OverflowableBuffer, ReadOnlyFileBasedBuffer
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError, TransferEncodingNotImplemented, split_uri
from waitress.receiver import ChunkedReceiver, FixedStreamReceiver
from waitress.rfc7230 import HEADER_FIELD_RE, ONLY_DIGIT_RE
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask, hop_by_hop, rename_headers
from waitress.utilities import InternalServerError, RequestHeaderFieldsTooLarge, build_http_date

# Bodies up to this size are joined to their header for one send(); larger
# ones are not worth the copy.
ONE_SEND_MAX = 64 * 1024
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                   b"Content-Type: text/plain\r\nContent-Length: 16\r\n\r\nRequest Timeout\n")
# A response body its client has not read is produced no further ahead than
# PAUSE_AT (what waits in the worker, beyond what the kernel's socket buffers
# hold): its task pauses between two chunks and the thread serves others, and
# it goes on once the client has read all but RESUME_AT. 32 clients never
# reading a 32 MiB body otherwise had 1 GiB produced and spooled to temporary
# files before anyone else was served.
PAUSE_AT = 256 * 1024
RESUME_AT = 64 * 1024
# A connection closed after its last response while its client's bytes wait
# unread would be reset, and a reset can destroy the response before the
# client reads it (a pipelined request, an upload answered 413). So the worker
# ends its own side (FIN after the response), reads and drops what comes,
# and closes at the client's end or after LINGER seconds, as nginx's
# lingering_close does.
LINGER = 5.0
# The event loop asks every socket whether it wants to read or write at least this often.
RESCAN = 0.1
_READ = select.POLLIN | select.POLLPRI
_FRAMING_HEADER = re.compile(rb"^(content-length|transfer-encoding)[ \t]*:", re.I | re.M)
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ ")  # RFC 9110 section 5.6.2: a token, then SP


class Host(Protocol):
    """What waitress's objects, as fleet adapts them, tell the worker and ask it (FleetServer).

    The callables are called for every connection or request, so a Host holds
    the bound methods of the objects that own them rather than methods that
    pass the call on (a Python call each, on every request's path).
    """

    instance: str
    connection_accepted: Callable[[bool], None]
    """A connection was accepted (loop thread); its argument: it had bytes waiting."""
    fresh_read: Callable[[], None]
    """A fresh connection's first bytes were read, or it closed before (loop thread)."""
    request_started: Callable[[int], None]
    """This thread begins serving a request."""
    request_finished: Callable[[int, FleetTask], None]
    """This thread served this task (it may have failed)."""
    request_paused: Callable[[int], None]
    """This thread paused its request's response for the client to read it; it goes on later."""

    def ends_keepalive(self, channel: FleetChannel) -> bool:
        """Whether the response being sent on ``channel`` closes it (a drain, its age)."""


def _host(listener: Any) -> Host:
    host: Host = listener.fleet
    return host


# A request head up to this size is parsed once per worker and its fields and request line kept
# (clients send the same head again and again); a larger one is parsed each time. At most 256
# heads are kept, with what they parse to: under 2 MiB.
KEPT_HEAD_MAX = 4096
_REQUEST_LINE = re.compile(  # waitress 3.0's: 2.1's let other versions and bare targets through
    rb"(?P<method>[!#$%&'*+\-.^_`|~0-9A-Za-z]+) "
    rb"(?P<uri>(?:[^ :?#]+://[^ ?#/]*(?:[0-9]{1,5})?)?[^ ]+)"
    rb"(?: HTTP/(?P<version>[0-9]\.[0-9]))?"
)


def _parse_fields(block: bytes) -> dict[str, str]:
    """A head's header fields, keyed as waitress's parser keys them (get_header_lines, parse_header)."""
    lines: list[bytes] = []
    for line in block.split(b"\r\n"):
        if not line:
            continue
        if b"\r" in line or b"\n" in line:
            raise ParsingError(f'Bare CR or LF found in header line "{str(line, "latin-1")}"')
        if line.startswith((b" ", b"\t")):
            if not lines:
                raise ParsingError(f'Malformed header line "{str(line, "latin-1")}"')
            lines[-1] += line  # NOTE: obs-fold, joined as waitress does
        else:
            lines.append(line)
    headers: dict[str, str] = {}
    for line in lines:
        field = HEADER_FIELD_RE.match(line)
        if not field:
            raise ParsingError("Invalid header")
        name, value = field.group("name", "value")
        if b"_" in name:
            continue  # NOTE: waitress drops it: CONTENT_LENGTH could pass for Content-Length
        value = value.strip(b" \t")
        key = name.upper().replace(b"-", b"_").decode("latin-1")
        if key in headers:
            headers[key] += (b", " + value).decode("latin-1")
        else:
            headers[key] = value.decode("latin-1")
    return headers


def _parse_request_line(line: bytes) -> tuple[str, ...]:
    """Method, target, version, and the target's scheme, host, path, query, fragment (waitress 3.0's)."""
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise ParsingError("Start line is invalid")
    method = match["method"]
    if method != method.upper():
        raise ParsingError(f'Malformed HTTP method "{str(method, "latin-1")}"')
    uri = match["uri"]
    return (method.decode("latin-1"), uri.decode("latin-1"), (match["version"] or b"").decode("latin-1"),
            *split_uri(uri))


_kept_fields = functools.lru_cache(maxsize=256)(_parse_fields)
_kept_request_line = functools.lru_cache(maxsize=256)(_parse_request_line)


class FleetParser(HTTPRequestParser):  # type: ignore[misc]
    """waitress's request parser, stricter about framing and header count, parsing a known head once.

    A request with both Content-Length and Transfer-Encoding is ambiguous
    (RFC 9112 section 6.1): a proxy in front may frame it differently, which is
    how requests are smuggled. waitress lets the chunked framing win and keeps
    the connection; fleet answers 400 and closes it, as it does a method that
    is no token (waitress 2.1 passes control bytes on to the app). Too many
    header fields cost CPU to parse (10,000 took ~35 ms), so they are counted
    before parsing.

    It parses as waitress 3.0 does (tests/test_waitress_contract.py compares
    the two), but a head it has seen before costs a dictionary update: the
    fields and request line of heads up to KEPT_HEAD_MAX are kept. That
    was a fifth of a Hello World request's bytecodes.
    """

    max_headers = 100  # set per server from FLEET_MAX_HEADERS
    # waitress's parser state that parse_header() sets:
    headers: dict[str, str]
    chunked: bool
    connection_close: bool
    expect_continue: bool

    def parse_header(self, header_plus: bytes) -> None:
        fields = header_plus.rstrip().count(b"\n")  # one per field: after the request line
        if fields > self.max_headers:
            self._parse(b"GET / HTTP/1.0\r\n")
            self.error = RequestHeaderFieldsTooLarge(
                f"more than {self.max_headers} header fields (FLEET_MAX_HEADERS)")
            return
        if not _METHOD.match(header_plus):
            raise ParsingError("the request method is not a token")
        framing = _FRAMING_HEADER.findall(header_plus)
        if len(framing) > 1 and len({name.lower() for name in framing}) == 2:
            raise ParsingError("Content-Length and Transfer-Encoding together")
        self._parse(header_plus)

    def _parse(self, header_plus: bytes) -> None:
        """waitress 3.0's HTTPRequestParser.parse_header, the fields and request line parsed once per head."""
        index = header_plus.find(b"\r\n")
        if index < 0:
            raise ParsingError("HTTP message header invalid")
        first_line = header_plus[:index].rstrip()
        if b"\r" in first_line or b"\n" in first_line:
            raise ParsingError("Bare CR or LF found in HTTP message")
        self.first_line = first_line
        if len(header_plus) <= KEPT_HEAD_MAX:
            fields = _kept_fields(header_plus[index + 2:])
            request_line = _kept_request_line(first_line)
        else:
            fields = _parse_fields(header_plus[index + 2:])
            request_line = _parse_request_line(first_line)
        headers = self.headers
        headers.update(fields)  # NOTE: a copy: the request's headers change (TRANSFER_ENCODING, CONNECTION)
        (self.command, self.request_uri, version,
         self.proxy_scheme, self.proxy_netloc, self.path, self.query, self.fragment) = request_line
        self.version = version
        self.url_scheme = self.adj.url_scheme
        connection = headers.get("CONNECTION", "")
        if version == "1.0":
            if connection.lower() != "keep-alive":
                self.connection_close = True
        if version == "1.1":
            # NOTE: the body is read whole, so the app never sees Transfer-Encoding. Only
            # space and tab are stripped: "\x85chunked" is not "chunked" (request smuggling).
            te = headers.pop("TRANSFER_ENCODING", None)
            if te:
                encodings = [encoding.strip(" \t").lower() for encoding in te.split(",") if encoding]
                for encoding in encodings:
                    if encoding not in {"chunked"}:
                        raise TransferEncodingNotImplemented("Transfer-Encoding requested is not supported.")
                if encodings and encodings[-1] == "chunked":
                    self.chunked = True
                    self.body_rcv = ChunkedReceiver(OverflowableBuffer(self.adj.inbuf_overflow))
                elif encodings:
                    raise TransferEncodingNotImplemented("Transfer-Encoding requested is not supported.")
            expect = headers.get("EXPECT")
            self.expect_continue = expect is not None and expect.lower() == "100-continue"
            if connection and connection.lower() == "close":
                self.connection_close = True
        if not self.chunked:
            length = headers.get("CONTENT_LENGTH")
            if length is None:
                self.content_length = 0
                return
            if not ONLY_DIGIT_RE.match(length.encode("latin-1")):
                raise ParsingError("Content-Length is invalid")
            self.content_length = int(length)
            if self.content_length > 0:
                self.body_rcv = FixedStreamReceiver(self.content_length,
                                                    OverflowableBuffer(self.adj.inbuf_overflow))


_NOTED_HEADERS = frozenset(("Content-Length", "Date", "Server", "Connection"))
_NAME = operator.itemgetter(0)


@functools.lru_cache(maxsize=256)
def _header_name(name: str) -> str:
    """A response header's name as waitress sends it, each part capitalised: ``x-id`` is ``X-Id``."""
    return "-".join([part.capitalize() for part in name.split("-")])


@functools.lru_cache(maxsize=4)
def _http_date(second: int) -> str:
    """The Date header for a response begun in this second (of time.time())."""
    date: str = build_http_date(second)
    return date


# The response statuses that have no body (waitress's Task.has_body).
_BODILESS = ("1", "204", "304")


@functools.lru_cache(maxsize=256)
def _environ_key(name: str) -> str:
    """A request header's environ key, from the parser's: ``USER_AGENT`` is ``HTTP_USER_AGENT``."""
    key: str = rename_headers.get(name) or "HTTP_" + name
    return key


def _shared_environ(server: Any) -> dict[str, Any]:
    """What waitress puts in the environ of every request a listening server reads."""
    adj = server.adj
    return {
        "SERVER_PORT": str(server.effective_port),
        "SERVER_NAME": server.server_name,
        "SERVER_SOFTWARE": adj.ident,
        "SCRIPT_NAME": adj.url_prefix,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": ReadOnlyFileBasedBuffer,
        "wsgi.input_terminated": True,
    }


def _check_header(header: tuple[str, str]) -> bool:
    """Whether an app's response header is Content-Length; raise as waitress does if it may not send it."""
    name, value = header
    if not isinstance(name, str):
        raise AssertionError(f"Header name {name!r} is not a string in {(name, value)!r}")
    if not isinstance(value, str):
        raise AssertionError(f"Header value {value!r} is not a string in {(name, value)!r}")
    if "\n" in value or "\r" in value:
        raise ValueError("carriage return/line feed character present in header value")
    if "\n" in name or "\r" in name:
        raise ValueError("carriage return/line feed character present in header name")
    lowered = name.lower()
    if lowered in hop_by_hop:
        raise AssertionError(f'{name} is a "hop-by-hop" header; it cannot be used by a WSGI application '
                             "(see PEP 3333)")
    return lowered == "content-length"


# An app gives the same few headers again and again: each is checked once (a header that
# cannot be hashed, as a list, is checked every time).
_checked_header = functools.lru_cache(maxsize=1024)(_check_header)


class Body:
    """An app's response body of many chunks, that ends early while its task pauses.

    :meth:`FleetTask.send_body` writes it with ``for chunk in body``: when the
    task pauses, the loop ends there and the task goes on from the next
    chunk when resumed (:meth:`FleetTask.resume`). ``close()`` closes the
    app's body only once the response is done.
    """

    __slots__ = ("task", "iterable", "chunks")

    def __init__(self, task: FleetTask, iterable: Any) -> None:
        self.task = task
        self.iterable = iterable
        self.chunks: Iterator[bytes] | None = None

    def __iter__(self) -> Body:
        return self

    def __next__(self) -> bytes:
        if self.task.pausing:
            raise StopIteration
        if self.chunks is None:
            self.chunks = iter(self.iterable)
        return next(self.chunks)

    def close(self) -> None:
        if not self.task.pausing and hasattr(self.iterable, "close"):
            self.iterable.close()


class FleetTask(WSGITask):  # type: ignore[misc]
    """A request: tracked while it runs, marked with the worker id, ends keep-alive if due.

    It runs the app as waitress's WSGITask does (the environ, start_response,
    the body, the head: waitress 3.0's steps, in fewer bytecodes; the contract
    test compares them). A body of many chunks pauses once PAUSE_AT of it
    waits for the client to read (``pausing``, set by the thread serving it):
    the thread goes back to the pool and the channel resumes the task when the
    client has read most of it. The task's fields belong to the one thread
    serving it at a time.
    """

    # waitress's Task attributes that write() and build_response_header() rely on:
    wrote_header: bool
    complete: bool
    chunked_response: bool
    close_on_finish: bool
    response_headers: list[tuple[str, str]]
    content_length: int | None
    content_bytes_written: int
    environ: dict[str, Any] | None
    has_body = True  # waitress's is a property, worked out on each call; this is set by start_response()
    pausing = False  # the body stops at its next chunk; cleared when resumed
    _body: Body | None = None  # the app's body, if it may pause

    def service(self) -> None:
        """Serve the request on this thread (waitress's Task.service, in one frame), or go on with its
        paused response (:meth:`resume`)."""
        host = self.channel.host
        thread = get_ident()
        host.request_started(thread)
        try:
            body = self._body
            if body is None:
                self.start_time = time.time()
                self.execute()
            elif self.channel.connected:
                self.send_body()
            else:
                body.close()
                raise ClientDisconnected
            self.finish()
        except OSError:
            self.close_on_finish = True
            if self.channel.adj.log_socket_errors:
                raise
        finally:
            self._served(host, thread)

    def _served(self, host: Host, thread: int) -> None:
        if self.pausing:
            host.request_paused(thread)
        else:
            host.request_finished(thread, self)

    def get_environment(self) -> dict[str, Any]:
        """The request's WSGI environ, as waitress 3.0's WSGITask.get_environment() makes it.

        What every request on a listening server shares is built once. (waitress
        2.1 also strip()s header values, which removes what Python calls
        whitespace, \\x85 and \\xa0 among it, where RFC 9110 allows only space and
        tab: its parser strips those already.)
        """
        environ = self.environ
        if environ is not None:
            return environ
        request = self.request
        channel = self.channel
        server = channel.server
        try:
            shared = server.fleet_environ
        except AttributeError:
            shared = server.fleet_environ = _shared_environ(server)
        path = request.path
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        url_prefix = shared["SCRIPT_NAME"]
        if url_prefix:
            # NOTE: waitress's: the prefix is "" or starts with one slash and ends without one.
            if path == url_prefix:
                path = ""
            elif path.startswith(url_prefix + "/"):
                path = path[len(url_prefix):]
        address = channel.addr
        headers = request.headers
        environ = {
            **shared,
            "REMOTE_ADDR": address[0],
            "REMOTE_HOST": address[0],
            "REMOTE_PORT": str(address[1]),
            "REQUEST_METHOD": request.command.upper(),
            "SERVER_PROTOCOL": "HTTP/" + self.version,
            "PATH_INFO": path,
            "REQUEST_URI": request.request_uri,
            "QUERY_STRING": request.query,
            "wsgi.url_scheme": request.url_scheme,
            "wsgi.errors": sys.stderr,
            "wsgi.input": request.get_body_stream(),
            "waitress.client_disconnected": channel.check_client_disconnected,
        }
        # NOTE: no header's key is one of the above: each starts with HTTP_ or is CONTENT_*.
        environ.update(zip(map(_environ_key, headers), headers.values(), strict=True))
        self.environ = environ
        return environ

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        """PEP 3333's start_response, as waitress's; a header is checked once per worker, not once per use."""
        if exc_info:
            try:
                if self.wrote_header:
                    raise exc_info[1]
                self.response_headers = []  # NOTE: PEP 3333: the headers given before are dropped
            finally:
                exc_info = None
        elif self.complete:
            raise AssertionError("start_response called a second time without providing exc_info.")
        self.complete = True
        if not isinstance(status, str):
            raise AssertionError(f"status {status} is not a string")
        if "\n" in status or "\r" in status:
            raise ValueError("carriage return/line feed character present in status")
        self.status = status
        self.has_body = not status.startswith(_BODILESS)
        try:
            for header in headers:
                if _checked_header(header):
                    self.content_length = int(header[1])
        except TypeError:  # NOTE: unhashable
            for header in headers:
                if _check_header(header):
                    self.content_length = int(header[1])
        self.response_headers.extend(headers)
        return self.write

    def execute(self) -> None:
        """Call the app and write its response, as waitress 3.0's WSGITask.execute() does.

        A list of one chunk, most answers, is checked for first. A file wrapper
        is handed to the channel, which sends it as the client reads. A body of
        many chunks is written as a :class:`Body`, so that it can pause.
        """
        environ = self.get_environment()
        if self.request.command == "HEAD":
            # NOTE: a file wrapper is sent by the channel, past write(): without it
            # the app's body comes through write(), which drops it for HEAD.
            environ.pop("wsgi.file_wrapper", None)
        body = self.channel.server.application(environ, self.start_response)
        if body.__class__ is list and len(body) <= 1:
            if body:
                chunk = body[0]
                if self.content_length is None:
                    self.content_length = len(chunk)
                if chunk:
                    self.write(chunk)
            self._check_length()
        elif isinstance(body, ReadOnlyFileBasedBuffer) and self._send_file(body):
            return
        elif hasattr(body, "__len__") and len(body) <= 1:
            self._send_short(body)
        else:
            self._body = Body(self, body)
            self.send_body()

    def _send_file(self, body: ReadOnlyFileBasedBuffer) -> bool:
        """Hand a file wrapper to the channel, which sends it and closes it; False if its size is unknown."""
        try:
            length = self.content_length
            size = body.prepare(length)
            if not size:
                return False
            if length != size:
                if length is not None:
                    self.remove_content_length_header()
                self.content_length = size
            self.write(b"")  # NOTE: the head
        except BaseException:
            body.close()
            raise
        self.channel.write_soon(body)
        return True

    def _send_short(self, body: Any) -> None:
        """Write a body of at most one chunk (or a file wrapper of unknown size), then close it."""
        try:
            first = True
            for chunk in body:
                if first:
                    first = False
                    # NOTE: start_response() may be called only now (PEP 3333), so read here.
                    if self.content_length is None and hasattr(body, "__len__") and len(body) == 1:
                        self.content_length = len(chunk)
                if chunk:
                    self.write(chunk)
            self._check_length()
        finally:
            if hasattr(body, "close"):
                body.close()

    def send_body(self) -> None:
        """Write the app's :class:`Body` until it ends or the task pauses; close it once it has ended."""
        body = self._body
        assert body is not None
        try:
            for chunk in body:
                if chunk:
                    self.write(chunk)
            if not self.pausing:
                self._check_length()
        finally:
            body.close()

    def _check_length(self) -> None:
        """Close once sent if the app wrote less than its Content-Length: else the client waits for more."""
        length = self.content_length
        if length is not None and self.content_bytes_written != length and self.request.command != "HEAD":
            self._close_soon()
            self.logger.warning("application returned too few bytes (%s) for specified Content-Length (%s) "
                                "via app_iter", self.content_bytes_written, length)

    def _close_soon(self) -> None:
        """Close after the response, saying so if the head is not out (waitress 3's set_close_on_finish)."""
        headers = self.response_headers
        if not self.wrote_header and all(_header_name(name) != "Connection" for name, _ in headers):
            headers.append(("Connection", "close"))
        self.close_on_finish = True

    def resume(self) -> None:
        """Go on with a paused response from its next chunk, on this thread."""
        self.pausing = False
        self.service()

    def access_fields(self) -> tuple[str, str, str, str, str, int]:
        """Client address, method, path, HTTP version, status code, body bytes sent: an access log line."""
        request = self.request
        return (
            self.channel.addr[0] if self.channel.addr else "-",
            request.command,
            request.path,
            request.version,
            (self.status or "-").split(" ", 1)[0],
            self.content_bytes_written,
        )

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
        if self._body is not None and self.channel.total_outbufs_len > PAUSE_AT:
            self.pausing = True

    def finish(self) -> None:
        if self.pausing:
            return  # NOTE: the body is not done: no last chunk yet
        if self.request.command == "HEAD":
            if not self.wrote_header:
                self.write(b"")
            return  # no last chunk either: a HEAD response has no body at all
        super().finish()

    def build_response_header(self) -> bytes:
        """waitress's response head (Task.build_response_header), with X-Fleet-Worker, and closing if due.

        The same bytes and state as waitress 2.1 and 3.0 give (their sources
        differ, not their results; tests/test_waitress_contract.py compares
        them). A head is worked out once per worker and second for each shape
        of response (:func:`_response_head`): waitress capitalised each header
        name part by part, sorted with a Python key function and formatted
        the date for every response, 14% of a Hello World request's bytecodes.
        """
        channel = self.channel
        host = channel.host
        request_headers = self.request.headers
        if host.ends_keepalive(channel):
            # NOTE: as if the client had asked: waitress then sends
            # "Connection: close" and closes once the response is out.
            request_headers["CONNECTION"] = "close"
        shape = (self.version, self.status, tuple(self.response_headers), self.content_length,
                 request_headers.get("CONNECTION", ""), self.close_on_finish, channel.server.adj.ident,
                 host.instance, int(self.start_time))
        try:
            head, headers, self.close_on_finish, chunked = _kept_head(*shape)
        except TypeError:  # NOTE: a header that cannot be hashed, as a list: nothing kept
            head, headers, self.close_on_finish, chunked = _response_head(*shape)
        if chunked:
            self.chunked_response = True
        self.response_headers = list(headers)
        return head


Header = tuple[str, str]


def _response_head(version: str, status: str, given: tuple[Header, ...], length: int | None, asked: str,
                   closing: bool, ident: str, instance: str,
                   second: int) -> tuple[bytes, tuple[Header, ...], bool, bool]:
    """A response's head as waitress builds it, with X-Fleet-Worker: the bytes, the headers they hold,
    whether the connection closes after it and whether the body is sent chunked.

    ``given``: the app's headers; ``length``: the body's, if known; ``asked``:
    the request's Connection header; ``closing``: whether it closes already;
    ``ident``: the server's name; ``second``: when the response began.
    """
    has_body = not status.startswith(_BODILESS)
    content_length = date = server = connection = None
    headers: list[Header] = []
    for name, value in given:
        name = _header_name(name)
        if name in _NOTED_HEADERS:
            if name == "Content-Length":
                if not has_body:
                    continue
                content_length = value
            elif name == "Date":
                date = value
            elif name == "Server":
                server = value
            else:
                connection = value
        headers.append((name, value))
    headers.append(("X-Fleet-Worker", instance))
    if content_length is None and length is not None and has_body:
        content_length = str(length)
        headers.append(("Content-Length", content_length))
    asked = asked.lower()
    close = closing
    chunked = False
    if version == "1.1":
        if asked == "close":
            close = _closing(headers, connection)
        if not content_length:
            if has_body:
                headers.append(("Transfer-Encoding", "chunked"))
                chunked = True
            if not close:
                close = _closing(headers, connection)
    elif version == "1.0":
        if asked == "keep-alive" and content_length:
            headers.append(("Connection", "Keep-Alive"))
        else:
            close = _closing(headers, connection)
    else:
        raise AssertionError("neither HTTP/1.0 or HTTP/1.1")
    if server:
        headers.append(("Via", ident or "waitress"))
    elif ident:
        headers.append(("Server", ident))
    if not date:
        headers.append(("Date", _http_date(second)))
    # NOTE: a stable sort on the name alone keeps same-named fields in order (RFC 9110 section 5.3).
    lines = "\r\n".join([f"HTTP/{version} {status}", *map("%s: %s".__mod__, sorted(headers, key=_NAME))])
    return f"{lines}\r\n\r\n".encode("latin-1"), tuple(headers), close, chunked


def _closing(headers: list[Header], given: str | None) -> bool:
    """Close once the response is out, saying so unless a Connection header is ``given``."""
    if given is None:
        headers.append(("Connection", "close"))
    return True


# Responses come in a few shapes (a status, headers, a length) that repeat: each
# shape's head is worked out once a second, when the Date changes.
_kept_head = functools.lru_cache(maxsize=256)(_response_head)


class FleetErrorTask(ErrorTask):  # type: ignore[misc]
    """waitress's answer to a request it could not parse (or to a failed app): it never pauses."""

    pausing = False


class FleetChannel(HTTPChannel):  # type: ignore[misc]
    """A connection, with the times its deadlines run from (see fleet.deadlines.Deadlines).

    It counts as "fresh" in the accept gate from accept() until its bytes are
    read, but only if it had bytes waiting when accepted: that is a request
    about to land, and a worker could otherwise take a burst of them in one
    pass that only one of its threads is free to serve. A connection with
    nothing to say is no work, however many there are. fleet.socket's
    DeferAcceptSec= has the kernel hand over a connection once its first
    bytes are in, so the two are told apart at accept().

    Every field and method here is the loop thread's (whoever holds the
    event loop's lock).
    """

    task_class = FleetTask
    error_task_class = FleetErrorTask
    parser_class = FleetParser
    host: Host  # the worker this connection tells of its requests
    # Set holding outbuf_lock, by the thread serving the channel and the loop thread:
    _paused: FleetTask | None = None  # a response paused until the client reads most of it
    # Set holding outbuf_lock by the loop thread, before the add_task() that hands it over;
    # cleared by the service() that add_task() runs, the only thread then on the channel:
    _resuming: FleetTask | None = None  # a paused response handed to the next service()
    writing = False  # set by the thread in write_soon(), read by the loop: it asks the channel each pass
    requests: list[Any]  # waitress's: read, queued and served under requests_lock
    current_outbuf_count: int
    will_close: bool  # waitress's: close at the next handle_write

    def __init__(self, server: Any, sock: socket.socket, addr: Any, adj: Any, map: Any = None) -> None:
        self.accepted_at = time.monotonic()
        self.spoke = False
        self._fresh = _has_unread_bytes(sock)
        self.host = _host(server)
        self.host.connection_accepted(self._fresh)
        self.timed: Any = None  # the partial request the two times below are for
        self.head_started = 0.0
        self.body_started = 0.0
        self.lingers_until = 0.0  # loop thread: after the last response, when the close is due; 0: not yet
        super().__init__(server, sock, addr, adj, map=map)
        # NOTE: the event loop asks this connection whether it reads or writes only when told to
        self.ask_again = functools.partial(map._loop.touch, self._fileno)

    def _settle(self) -> None:
        self.spoke = True
        if self._fresh:
            self._fresh = False
            self.host.fresh_read()

    def received(self, data: bytes) -> Any:
        if self.lingers_until:
            return True  # NOTE: after the last response: read only to be dropped
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
        # NOTE: will_close: waitress's handle_write closes after the last response
        if self.will_close and not self.lingers_until and self.connected and self.has_unread_bytes():
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:
                self.will_close = False
                self.lingers_until = time.monotonic() + LINGER
                return
        self.close_now()

    def write_soon(self, data: Any) -> int:
        """Send ``data`` at once if nothing waits to go before it; else buffer it, as waitress does.

        waitress buffers every write and then flushes the buffer (its
        send_bytes is 1): ~340 bytecodes of buffer keeping for the one send()
        of a small response. With the buffers empty (checked holding
        outbuf_lock, which the loop thread flushes them under), bytes go to the
        socket directly; only what it does not take is buffered.
        """
        if data.__class__ is bytes and data:
            with self.outbuf_lock:
                if self.connected and not self.total_outbufs_len:
                    try:
                        sent: int = self.socket.send(data)
                    except OSError:
                        sent = 0  # NOTE: waitress's own path, below, meets the error again and handles it
                    if sent:
                        self.last_activity = time.time()
                        if sent == len(data):
                            return sent
                        data = data[sent:]
        # NOTE: waitress buffers and then wakes the loop, with no step between to
        # tell it which connection: while ``writing``, the loop asks again each pass.
        self.writing = True
        self.ask_again()
        try:
            written: int = super().write_soon(data)
        finally:
            self.writing = False
            self.ask_again()
        return written

    def handle_write(self) -> None:
        super().handle_write()
        if self._paused is not None and self.total_outbufs_len <= RESUME_AT:
            self._resume()

    def _resume(self) -> None:
        """Hand the paused response to the dispatcher, to go on with (loop thread)."""
        with self.outbuf_lock:
            task, self._paused = self._paused, None
            if task is None:
                return
            self._resuming = task
        with self.requests_lock:
            self.server.add_task(self)

    def service(self) -> None:
        """Serve the first request queued, or go on with a paused response.

        waitress's HTTPChannel.service (the same in 2.1 and 3.0;
        tests/test_waitress_contract.py notices if it changes), with one
        addition: a task that pauses leaves its request first in line, and
        the channel resumes it once the client has read enough.
        """
        # NOTE: no lock to read it: _resume() set it before the add_task() that runs this.
        task = self._resuming
        if task is None:
            request = self.requests[0]
            task = (self.error_task_class if request.error else self.task_class)(self, request)
            run, resuming = task.service, False
        else:
            self._resuming = None
            request = task.request
            run, resuming = task.resume, True
        while True:
            try:
                if self.connected or resuming:  # NOTE: resume() closes the app's body if the client left
                    run()
                else:
                    task.close_on_finish = True
            except ClientDisconnected:
                self.logger.info("Client disconnected while serving %s", task.request.path)
                task.close_on_finish = True
            except Exception:
                task = self._failed(task, request)
            if not task.pausing:
                break
            with self.outbuf_lock:
                if self.connected and self.total_outbufs_len > RESUME_AT:
                    self._paused = task
                    self.ask_again()
                    self.server.pull_trigger()
                    return
            run, resuming = task.resume, True  # NOTE: the client read it already: go on at once
        self._done(task, request)

    def _failed(self, task: Any, request: Any) -> Any:
        """The app raised: answer 500 if no header went out yet, else close. Returns who answered."""
        self.logger.exception("Exception while serving %s", task.request.path)
        if task.wrote_header:
            task.close_on_finish = True
            return task
        if self.adj.expose_tracebacks:
            body = traceback.format_exc()
        else:
            body = "The server encountered an unexpected internal server error"
        failed = self.parser_class(self.adj)
        failed.error = InternalServerError(body)
        # NOTE: what HTTP/1.1 needs of the original request
        failed.version = request.version
        if "CONNECTION" in request.headers:
            failed.headers["CONNECTION"] = request.headers["CONNECTION"]
        task = self.error_task_class(self, failed)
        try:
            task.service()  # NOTE: must not fail
        except ClientDisconnected:
            task.close_on_finish = True
        return task

    def _done(self, task: Any, request: Any) -> None:
        """After a request is answered: close, or go on with the next one (waitress's own steps)."""
        if task.close_on_finish:
            with self.requests_lock:
                self.close_when_flushed = True
                for queued in self.requests:
                    queued.close()
                self.requests = []
        else:
            # NOTE: the next request's output waits for this one's to go below the high watermark.
            if len(self.requests) > 1:
                self._flush_outbufs_below_high_watermark()
            # NOTE: the next request gets an output buffer of its own.
            if self.current_outbuf_count > 0:
                self.current_outbuf_count = self.adj.outbuf_high_watermark
            request.close()
            with self.requests_lock:
                self.requests.pop(0)
                if self.connected and self.requests:
                    self.server.add_task(self)
                elif (self.connected and self.request is not None and self.request.expect_continue
                      and self.request.headers_finished and not self.sent_continue):
                    # NOTE: 100 Continue could not be sent while a response was going out
                    self.send_continue()
        self.ask_again()
        if self.connected:
            self.server.pull_trigger()
        self.last_activity = time.time()

    # -- fleet's view of a connection, in fleet's names ----------------------------------

    def idle(self) -> bool:
        """Nothing in flight: no request arriving, queued, running or being sent."""
        return not (self.request is not None or self.requests or self.total_outbufs_len
                    or self.will_close or self.close_when_flushed)

    def owes_response(self) -> bool:
        """A request is queued, running or being answered: the server, not the client, is behind."""
        return bool(self.requests or self.total_outbufs_len)

    def read_more(self) -> bool:
        """Another whole request of this client's waits behind the one being answered (pipelined).

        With waitress's channel_request_lookahead at 0 the loop reads nothing
        of this connection's while a request is queued, so these came in one
        read (recv_bytes) at most: what a pipelining client sent after them
        stays unread, and a part of a request does not count.
        """
        return len(self.requests) > 1

    def paused(self) -> bool:
        """A response waits for the client to read what was sent of it, no thread on it."""
        return self._paused is not None

    def closing_after_response(self) -> bool:
        """A response is owed, or the connection closes once it is sent."""
        return bool(self.requests or self.total_outbufs_len or self.will_close)

    def arriving(self) -> Any:
        """The request being read, or None between requests."""
        return self.request

    @staticmethod
    def head_complete(request: Any) -> bool:
        """Whether ``request`` (from :meth:`arriving`) has all its header fields."""
        return bool(request.headers_finished)

    @staticmethod
    def body_received(request: Any) -> int:
        """Body bytes of ``request`` (from :meth:`arriving`) read so far."""
        received: int = request.body_bytes_received
        return received

    def last_traffic(self) -> float:
        """When a byte was last read or written (time.time())."""
        last: float = self.last_activity
        return last

    def lingered_out(self, now: float) -> bool:
        """Closed on the worker's side after its last response, and done waiting for the client's end."""
        return 0.0 < self.lingers_until <= now

    def has_unread_bytes(self) -> bool:
        return _has_unread_bytes(self.socket)

    def close_now(self) -> None:
        """Close, whatever is in flight."""
        if not self.spoke:
            self._settle()
        super().handle_close()
        if self._paused is not None:
            self._resume()  # NOTE: to close the app's body, on a thread of the pool

    def time_out(self) -> None:
        """Answer 408 where nothing else is being sent, and close."""
        if not (self.requests or self.total_outbufs_len):
            try:
                self.socket.send(REQUEST_TIMEOUT, socket.MSG_DONTWAIT)
            except OSError:
                pass
        self.close_now()


def _has_unread_bytes(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False


class _SocketMap(dict[int, Any]):
    """waitress's socket map, telling the event loop of every descriptor added or removed."""

    def __init__(self, loop: EventLoop) -> None:
        super().__init__()
        self._loop = loop

    def __setitem__(self, fd: int, obj: Any) -> None:
        super().__setitem__(fd, obj)
        self._loop.touch(fd)

    def __delitem__(self, fd: int) -> None:
        super().__delitem__(fd)
        self._loop.forget(fd)


class EventLoop:
    """waitress's event loop: the map of every socket it polls, polled one pass at a time.

    ``lock`` is the loop's owner: the loop thread holds it for each poll pass
    and each housekeeping pass; the relief thread (fleet/dispatch.py) for as
    long as it stands in for a loop thread that is busy serving a long
    request. Every channel is touched only by the holder.

    waitress's own loop (``wasyncore.poll2``) asks every socket in the map
    whether it wants to read or write before each poll, so each idle
    keep-alive connection costs every pass: with 2,000 of them open, a
    worker served Hello World 40% slower. This one keeps an epoll set and
    asks only the sockets whose answer may have changed: those the last pass
    handled, those :meth:`touch`-ed (a thread served a request or buffered
    output), and the listening sockets (the accept gate answers differently
    any time); every socket at least every ``rescan`` seconds, for what
    changes with none of these (waitress's idle sweep).
    """

    def __init__(self) -> None:
        self.map: dict[int, Any] = _SocketMap(self)
        self.lock = threading.Lock()
        self._not_channels = 0  # listeners, their triggers, the signal pipe: set by seal()
        # The lock holder's:
        self._epoll = select.epoll()
        self._interest: dict[int, int] = {}  # fd -> the events it is registered for
        self._handled: list[int] = []  # what the last pass handled
        self._own: set[int] = set()  # the listening sockets, asked every pass: set by seal()
        self._lazy: set[int] = set()  # registered for reading, which they did not want when asked
        self.rescan = RESCAN  # seconds between two passes that ask every socket
        self._rescan_at = 0.0
        # Any thread appends, the lock holder pops (a deque's ends are thread-safe):
        self._touched: deque[int] = deque()

    def seal(self) -> None:
        """Everything in the map now is the worker's own; what comes later is a connection."""
        self._not_channels = len(self.map)
        # NOTE: the triggers and the signal pipe always read and never write: asked once is enough
        self._own = {fd for fd, obj in self.map.items() if isinstance(obj, BaseWSGIServer)}

    def touch(self, fd: int) -> None:
        """``fd``'s wish to read or write may have changed: ask it before the next poll. Any thread."""
        self._touched.append(fd)

    def forget(self, fd: int) -> None:
        """``fd`` left the map: poll it no more. The lock holder."""
        self._lazy.discard(fd)
        if self._interest.pop(fd, 0):
            with contextlib.suppress(OSError):  # NOTE: closed already: epoll dropped it
                self._epoll.unregister(fd)

    def poll_once(self, timeout: float) -> None:
        """One poll pass: accept, read, write, run waitress's maintenance. Hold ``lock``."""
        socket_map, touched, own = self.map, self._touched, self._own
        interest, lazy = self._interest, self._lazy
        now = time.monotonic()
        if now >= self._rescan_at:
            self._rescan_at = now + self.rescan
            touched.clear()
            asked = set(socket_map)
        else:
            asked = set(self._handled)
            asked.update(own)
            while touched:
                asked.add(touched.popleft())
        for fd in asked:
            obj = socket_map.get(fd)
            if obj is None:
                continue
            if getattr(obj, "writing", False):
                touched.append(fd)  # NOTE: a thread is buffering output: ask again next pass
            wanted = _READ if obj.readable() else 0
            if obj.writable() and not obj.accepting:
                wanted |= select.POLLOUT
            registered = interest.get(fd, 0)
            # NOTE: a connection that stops reading while its request is served stays
            # registered for reading (lazy): two epoll_ctl() a request saved, as its
            # client has nothing to send until the response.
            keep = wanted if fd in own else wanted | (registered & _READ)
            if keep != registered:
                self._register(obj, fd, keep, registered)
            if keep & ~wanted:
                lazy.add(fd)
            else:
                lazy.discard(fd)
        try:
            ready = self._epoll.poll(timeout)
        except InterruptedError:
            ready = []
        self._handled = [fd for fd, _ in ready]
        for fd, events in ready:
            obj = socket_map.get(fd)
            if obj is None:
                continue
            if fd in lazy:
                lazy.discard(fd)
                # NOTE: its request may have ended since it was asked (the client's next
                # one is what arrived); if not, it is polled for reading no more for now
                if not obj.readable():
                    registered = interest.get(fd, 0)
                    rest = registered & ~_READ
                    self._register(obj, fd, rest, registered)
                    if not rest:
                        continue
                    events &= ~_READ
            wasyncore.readwrite(obj, events)

    def _register(self, obj: Any, fd: int, events: int, registered: int) -> None:
        """Poll ``fd`` for ``events`` (0: not at all), registered for ``registered`` so far."""
        epoll = self._epoll
        try:
            if not events:
                del self._interest[fd]
                epoll.unregister(fd)
            elif registered:
                self._interest[fd] = events
                epoll.modify(fd, events)
            else:
                self._interest[fd] = events
                epoll.register(fd, events)
        except OSError as error:
            # NOTE: the descriptor was closed (and maybe reused) behind the map's back
            if error.errno == errno.EBADF:
                self._interest.pop(fd, None)
                wasyncore.readwrite(obj, select.POLLNVAL)  # as poll() reports it: the object closes
            elif error.errno == errno.ENOENT and events:  # epoll dropped it when it closed
                epoll.register(fd, events)
            elif error.errno == errno.EEXIST:
                epoll.modify(fd, events)

    def connections(self) -> int:
        """How many connections are open."""
        return len(self.map) - self._not_channels

    def channels(self) -> Iterator[FleetChannel]:
        return (obj for obj in list(self.map.values()) if isinstance(obj, FleetChannel))

    def close(self) -> None:
        """Close every socket in the map: connections, listeners, triggers."""
        for obj in list(self.map.values()):
            obj.close()
        self._epoll.close()


class ThreadPool(ThreadedTaskDispatcher):  # type: ignore[misc]
    """waitress's thread pool, with the hooks fleet's dispatch strategies override.

    waitress calls :meth:`add_task` (holding the channel's ``requests_lock``)
    for each request read, and :meth:`shutdown` when a listener closes.
    """

    def add_task(self, task: Any) -> None:
        self.take(task)

    def take(self, task: Any) -> None:
        """A request was read: serve it. Here: on the pool."""
        self.to_pool(task)

    def to_pool(self, task: Any) -> None:
        """Queue ``task`` for the pool's threads."""
        ThreadedTaskDispatcher.add_task(self, task)

    def queued(self) -> int:
        """Requests waiting for a pool thread."""
        return len(self.queue)

    def start_threads(self, count: int) -> None:
        self.set_thread_count(count)

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        return self.stop(cancel_pending, timeout)

    def stop(self, cancel_pending: bool, timeout: float) -> bool:
        """Stop the threads; ``cancel_pending``: drop what is queued."""
        return bool(ThreadedTaskDispatcher.shutdown(self, cancel_pending=cancel_pending, timeout=timeout))


Wrapper = Callable[[Callable[[], Any]], Callable[[], Any]]


class Listeners:
    """waitress's listening servers on already-listening sockets, sharing one event loop and one pool.

    waitress will not mix IP and UNIX sockets in one server, so each family
    gets its own. ``_start=False`` keeps waitress from calling listen() again,
    which would replace the Backlog= that fleet.socket set with its own.
    """

    def __init__(self, app: Callable[..., Any], sockets: list[socket.socket], loop: EventLoop,
                 pool: ThreadPool, host: Host, max_headers: int, **adjustments: Any) -> None:
        for family_sockets in _by_kind(sockets):
            waitress.create_server(
                app, map=loop.map, _start=False, _dispatcher=pool,
                sockets=family_sockets, **adjustments,
            )
        self.servers = [obj for obj in loop.map.values() if isinstance(obj, BaseWSGIServer)]
        parser = type("FleetParser", (FleetParser,), {"max_headers": max_headers})
        channel = type("FleetChannel", (FleetChannel,), {"parser_class": parser})
        for server in self.servers:
            server.channel_class = channel
            server.fleet = host
        self._trigger = self.servers[0].trigger

    def adapt(self, readable: Wrapper, accept: Wrapper, wake: Wrapper) -> None:
        """Wrap each server's readable() (the accept gate), handle_accept() and pull_trigger().

        ``wake`` wraps how a finished request wakes the loop (waitress pulls
        the trigger from the thread that served it).
        """
        for server in self.servers:
            server.readable = readable(server.readable)
            server.handle_accept = accept(server.handle_accept)
            server.pull_trigger = wake(server.pull_trigger)

    def filenos(self) -> list[int]:
        """The listening sockets' descriptors."""
        return [server.socket.fileno() for server in self.servers]

    def set_accepting(self, accepting: bool) -> None:
        """Poll the listening sockets or leave new connections in the kernel's queue. Hold the loop's lock."""
        for server in self.servers:
            server.accepting = accepting

    def wake_loop(self) -> None:
        """Wake the event loop from its poll, from any thread."""
        self._trigger.pull_trigger()


def _by_kind(sockets: list[socket.socket]) -> list[list[socket.socket]]:
    unix = [s for s in sockets if s.family == socket.AF_UNIX]
    ip = [s for s in sockets if s.family != socket.AF_UNIX]
    return [group for group in (ip, unix) if group]


class SignalPipe(wasyncore.file_dispatcher):  # type: ignore[misc]
    """Wakes the event loop the moment a signal arrives (``signal.set_wakeup_fd``).

    Without it, poll() is retried after the Python handler runs and the loop
    would notice SIGTERM only at its next timeout, accepting meanwhile.
    """

    def __init__(self, loop: EventLoop) -> None:
        read_end, self._write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        super().__init__(read_end, loop.map)
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
