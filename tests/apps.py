"""WSGI apps the tests serve with FLEET_APP=tests.apps:NAME."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

not_callable = 42


def slow(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Sleep ``?sleep=SECONDS`` (default 1) before answering: a request that is in flight."""
    seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("sleep", ["1"])[0])
    time.sleep(seconds)
    body = f"slept {seconds}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


_forever = threading.Event()


def hang(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Block forever on ``/hang``; answer anything else: a worker that gets stuck."""
    if environ.get("PATH_INFO") == "/hang":
        _forever.wait()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
