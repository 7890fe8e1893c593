"""The benchmark's app for the gunicorn peers: fleet's Falcon Hello World, plus the worker's pid.

The header lets the fault runs tell which worker answered, as ``X-Fleet-Worker``
does for fleet and ``X-Worker-Pid`` for the Node peer; every peer pays for one
extra response header.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from fleet.app import app as hello


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        headers.append(("X-Worker-Pid", str(os.getpid())))
        return start_response(status, headers, exc_info)

    body: Iterable[bytes] = hello(environ, start)
    return body
