"""The benchmark's WSGI apps, one callable per name, served alike by every Python peer.

    bench.apps:hello      fleet's Falcon Hello World (also ``bench.apps:app``)
    bench.apps:sleep2     waits 2 ms (time.sleep), as for a quick database round trip
    bench.apps:sleep20    waits 20 ms
    bench.apps:sleep200   waits 200 ms
    bench.apps:cpu5       about 5 ms of pure-Python CPU work, holding the GIL
    bench.apps:django     a Django view: an ORM query on SQLite rendered by a template
    bench.apps:mix        9 requests in 10 fast, every 10th waits 50 ms (a counter per process)

Every app reads a POSTed body whole and answers its length (the slow-body attack of
bench/hostile.py needs a server to take one). Every answer has an ``X-Worker-Pid``
header, as Node's workers do and fleet's ``X-Fleet-Worker`` does, so the fault runs can
tell which worker answered and every peer pays for one extra header. ``GET /_bench/app``
answers the app's name, so the bench can tell a peer switched apps. Django is imported
only by the ``django`` app, on its first request.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from fleet.app import app as _falcon_hello

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
App = Callable[[Environ, StartResponse], Iterable[bytes]]

#: the apps run.py measures, in the report's order
NAMES = ("hello", "sleep2", "sleep20", "sleep200", "cpu5", "django", "mix")
#: iterations of :func:`spin` taking about 5 ms on a 2020s x86 core with CPython 3.11
CPU5_ITERATIONS = 90_000
MIX_EVERY = 10
MIX_WAIT = 0.050


def _served(name: str, inner: App) -> App:
    """Wrap ``inner``: add X-Worker-Pid, and answer /_bench/app with ``name``."""
    tag = name.encode()

    def wsgi(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/_bench/app":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(tag)))])
            return [tag]
        if environ.get("REQUEST_METHOD") == "POST":
            return _upload(environ, start_response)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            # NOTE: asked per request: at import it would name a forking server's master.
            headers.append(("X-Worker-Pid", str(os.getpid())))
            return start_response(status, headers, exc_info)

        return inner(environ, start)

    return wsgi


def _upload(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Read a POSTed body whole, as a form or upload handler would (the slow-body attack's target)."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    got = len(environ["wsgi.input"].read(length)) if length > 0 else 0
    status, headers, out = _text(f"got {got} bytes\n".encode())
    start_response(status, headers)
    return out


def _text(body: bytes) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    return "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))], [body]


def _waiting(seconds: float) -> App:
    body = f"waited {seconds * 1000:g} ms\n".encode()

    def wsgi(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        time.sleep(seconds)
        status, headers, out = _text(body)
        start_response(status, headers)
        return out

    return wsgi


def spin(n: int = CPU5_ITERATIONS) -> int:
    """Pure-Python arithmetic: CPU time under the GIL, no I/O, nothing to cache."""
    x = 0
    for i in range(n):
        x += i * i % 7
    return x


def _cpu(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    status, headers, out = _text(f"{spin()}\n".encode())
    start_response(status, headers)
    return out


_counter = itertools.count()  # NOTE: next() on it is atomic under the GIL


def _mix(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    # NOTE: decided by a per-process counter, so every peer sees exactly 1 request in
    # MIX_EVERY wait, whatever its workers' share of the connections.
    slow = next(_counter) % MIX_EVERY == MIX_EVERY - 1
    if slow:
        time.sleep(MIX_WAIT)
    status, headers, out = _text(b"slow\n" if slow else b"fast\n")
    start_response(status, headers)
    return out


hello = _served("hello", _falcon_hello)
app = hello  # NOTE: the name the experiments and older commands use
sleep2 = _served("sleep2", _waiting(0.002))
sleep20 = _served("sleep20", _waiting(0.020))
sleep200 = _served("sleep200", _waiting(0.200))
cpu5 = _served("cpu5", _cpu)
mix = _served("mix", _mix)


class _Django:
    """The Django project's WSGI handler, set up on the first request (one lock, once).

    NOTE: a plain module attribute, not a module ``__getattr__``: uWSGI looks the
    callable up in the module's dict. Lazy, so the other apps never import Django;
    the warm-up run pays the set-up in every worker.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handler: App | None = None

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        handler = self._handler
        if handler is None:
            with self._lock:
                if self._handler is None:
                    from bench.djangosite.wsgi import application

                    self._handler = application
                handler = self._handler
        assert handler is not None
        return handler(environ, start_response)


django = _served("django", _Django())
