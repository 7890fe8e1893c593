"""One HTTP GET on loopback, the way every test, probe and bench check asks a server.

A fresh connection per call unless one is passed in (to test keep-alive). Headers come
back with lower-cased names; a repeated header keeps its last value.
"""

from __future__ import annotations

import http.client

from harness.net import HOST


def get(
    port: int, path: str = "/", timeout: float = 10.0, conn: http.client.HTTPConnection | None = None
) -> tuple[int, dict[str, str], bytes]:
    """GET ``http://127.0.0.1:port/path``; return status, headers and body."""
    c = conn or http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        c.request("GET", path)
        response = c.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        if conn is None:
            c.close()


def get_text(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, dict[str, str], str]:
    """:func:`get`, the body decoded as UTF-8 (what the e2e tests compare and parse)."""
    status, headers, body = get(port, path, timeout)
    return status, headers, body.decode("utf-8", errors="replace")
