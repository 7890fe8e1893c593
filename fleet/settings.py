"""The one table of fleet-worker settings, read from ``FLEET_*`` environment variables.

Every setting is declared once in :data:`SETTINGS`; parsing, validation, the
commented ``/etc/default/fleet`` that the package ships and the README's settings
section are all made from it, so they cannot drift apart.

    >>> s = Settings.from_env({"FLEET_THREADS": "8"})
    >>> s.threads, s.app
    (8, 'fleet.app:app')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

DEFAULT_APP = "fleet.app:app"


class SettingsError(ValueError):
    """A setting has a value fleet cannot use; the message names it and the accepted form."""


def _whole(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\s*\d+\s*", text) or not lo <= int(text) <= hi:
            raise ValueError(f"a whole number from {lo} to {hi}")
        return int(text)

    return parse


def _seconds(text: str) -> float:
    """Parse '30', '2.5', '500ms', '1.5s' or '2min' into seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min)?\s*", text)
    if not m:
        raise ValueError("a number of seconds such as 30, 2.5, 500ms or 2min")
    scale = {"ms": 0.001, "s": 1.0, "min": 60.0, None: 1.0}[m.group(2)]
    return float(m.group(1)) * scale


def _seconds_up_to(most: float, example: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _seconds(text)
        if value > most:
            raise ValueError(f"a time up to {most:g}s, such as {example}")
        return value

    return parse


def _bytes(text: str) -> int:
    """Parse '0', '512M', '2G', '300000K' into bytes (powers of 1024, like systemd)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", text.upper())
    if not m:
        raise ValueError("a size such as 512M, 2G or 0 for no limit")
    return int(m.group(1)) * int(1024 ** "_KMG".index(m.group(2) or "_"))


def _boolean(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "yes", "true", "on"):
        return True
    if low in ("0", "no", "false", "off"):
        return False
    raise ValueError("yes or no")


def _app_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", text.strip()):
        raise ValueError("module:callable, for example myproject.wsgi:application")
    return text.strip()


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip().lower() not in allowed:
            raise ValueError(" or ".join(allowed))
        return text.strip().lower()

    return parse


def parse_listen(text: str) -> tuple[str, ...]:
    """Split 'HOST:PORT [HOST:PORT ...]' (IPv6 as [::1]:PORT, or unix:/path) into a tuple."""
    parts = tuple(p for p in re.split(r"[\s,]+", text) if p)
    if not parts:
        raise ValueError("HOST:PORT, [IPV6]:PORT or unix:/PATH, separated by spaces")
    for part in parts:
        if part.startswith("unix:"):
            if len(part) == len("unix:"):
                raise ValueError("unix:/PATH with a path")
            continue
        m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]*):(\d+)", part)
        if not m or not 0 <= int(m.group(2)) <= 65535:
            raise ValueError("HOST:PORT, [IPV6]:PORT or unix:/PATH, separated by spaces")
    return parts


def _path_or_off(text: str) -> str:
    """A path, or 'off' (returned as ''), since an empty value means the default."""
    text = text.strip()
    if text.lower() == "off":
        return ""
    if not text.startswith("/"):
        raise ValueError("a path starting with '/', or off")
    return text


def _optional_path(text: str) -> str:
    """A path, or nothing (the empty default)."""
    text = text.strip()
    if text and not text.startswith("/"):
        raise ValueError("an absolute path starting with '/'")
    return text


@dataclass(frozen=True)
class Setting:
    """One row of the table: environment name, default text, parser and a one-line help."""

    env: str
    default: str
    parse: Callable[[str], Any]
    help: str

    @property
    def attr(self) -> str:
        return self.env.removeprefix("FLEET_").lower()


SETTINGS: tuple[Setting, ...] = (
    Setting("FLEET_APP", DEFAULT_APP, _app_name,
            "The WSGI application to serve, as module:callable (default: fleet's Hello World app)."),
    Setting("FLEET_VENV", "", _optional_path,
            "A virtualenv made with the workers' python3 whose packages the app imports first "
            "(default: none, Debian's packages and PYTHONPATH)."),
    Setting("FLEET_THREADS", "4", _whole(0, 1024),
            "Pool threads per worker: requests that wait (on a database, another service) run "
            "on them concurrently; 0: every request on the worker's event loop with no pool to "
            "fall back on, only for apps that never wait on I/O (a waiting request stalls its "
            "worker's other connections)."),
    Setting("FLEET_INLINE_MAX", "10ms", _seconds_up_to(1.0, "10ms"),
            "With threads, requests that only compute are served on the worker's event loop, "
            "skipping the hand-off to a thread; once one waits on I/O, or computes longer than "
            "this (garbage collections left out), the threads serve for a while (1 s, doubling "
            "to 30 s while requests keep waiting) (0: always the threads)."),
    Setting("FLEET_CONNECTION_LIMIT", "4096", _whole(16, 100_000),
            "Open connections per worker, idle ones included; at the limit the worker closes its "
            "longest-idle connections to make room (the unit's LimitNOFILE= must exceed it)."),
    Setting("FLEET_HEADER_TIMEOUT", "10", _seconds,
            "A request whose head (request line and headers) has not fully arrived this long "
            "after its first byte gets 408 and its connection is closed (slow clients)."),
    Setting("FLEET_SILENT_TIMEOUT", "5", _seconds,
            "Close a new connection that sends nothing for this long (preconnects, scanners)."),
    Setting("FLEET_BODY_TIMEOUT", "20", _seconds,
            "A request body must arrive within this, plus 1 s for every FLEET_BODY_MIN_RATE "
            "bytes received, or gets 408 and its connection is closed."),
    Setting("FLEET_BODY_MIN_RATE", "500", _whole(1, 10**9),
            "Bytes per second a request body must keep up after FLEET_BODY_TIMEOUT."),
    Setting("FLEET_MAX_HEADERS", "100", _whole(1, 10_000),
            "Header fields one request may carry; past it, 431 and the connection is closed."),
    Setting("FLEET_GRACEFUL_TIMEOUT", "30", _seconds,
            "On stop, how long requests in flight may take to finish before they are cut."),
    Setting("FLEET_TIMEOUT", "30", _seconds,
            "A worker whose every pool thread is stuck on one request this long stops its "
            "watchdog pings, so systemd replaces it (0 turns this off)."),
    Setting("FLEET_MAX_REQUESTS", "0", _whole(0, 10**12),
            "Recycle a worker after this many requests (0: never)."),
    Setting("FLEET_MAX_REQUESTS_JITTER", "0", _whole(0, 10**12),
            "Add a random 0..N to FLEET_MAX_REQUESTS so workers do not recycle together."),
    Setting("FLEET_MAX_RSS", "0", _bytes,
            "Recycle a worker whose resident memory passes this size, e.g. 512M (0: never)."),
    Setting("FLEET_KEEPALIVE_MAX_AGE", "3", _seconds,
            "Close a keep-alive connection at its first response past this age (with no request "
            "read behind it) while its worker holds more connections than a sibling, so clients "
            "spread evenly over all workers, new ones included; past 10 times this age in any "
            "case (0: never)."),
    Setting("FLEET_CHANNEL_TIMEOUT", "60", _seconds,
            "Close a keep-alive connection idle for this long, or one whose client reads none "
            "of its response for this long."),
    Setting("FLEET_HEALTH_PATH", "/healthz", _path_or_off,
            "Path answered by fleet itself for load balancers: 200, or 503 while drained "
            "(off: the app answers it)."),
    Setting("FLEET_DRAIN_FILE", "/run/fleet/drain", _path_or_off,
            "While this file exists the health path answers 503 (fleetctl drain creates it)."),
    Setting("FLEET_CPU_AFFINITY", "auto", _choice("auto", "none"),
            "auto: instance i runs on the i-th CPU fleet may use; none: never pin."),
    Setting("FLEET_ACCESS_LOG", "no", _boolean,
            "Log one line per request (off by default: it costs time and fills the journal)."),
    Setting("FLEET_LOG_LEVEL", "info", _choice("debug", "info", "warning", "error"),
            "The least severe log level written."),
    Setting("FLEET_LISTEN", "127.0.0.1:8000", parse_listen,
            "Only when run by hand without systemd's sockets: the addresses to bind."),
    Setting("FLEET_INSTANCE", "0", str,
            "The worker's id, sent as X-Fleet-Worker (the unit sets it to the instance name)."),
)


@dataclass(frozen=True)
class Settings:
    """Validated settings; build with :meth:`from_env`."""

    app: str
    venv: str
    threads: int
    inline_max: float
    connection_limit: int
    header_timeout: float
    silent_timeout: float
    body_timeout: float
    body_min_rate: int
    max_headers: int
    graceful_timeout: float
    timeout: float
    max_requests: int
    max_requests_jitter: int
    max_rss: int
    keepalive_max_age: float
    channel_timeout: float
    health_path: str
    drain_file: str
    cpu_affinity: str
    access_log: bool
    log_level: str
    listen: tuple[str, ...]
    instance: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read every setting from ``environ``; raise SettingsError on the first bad one.

        An empty value means the default, as in systemd's EnvironmentFile= where a
        line ``FLEET_X=`` is easy to leave behind.
        """
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            raw = environ.get(setting.env, "")
            text = raw if raw.strip() else setting.default
            try:
                values[setting.attr] = setting.parse(text)
            except ValueError as exc:
                raise SettingsError(f"{setting.env} must be {exc}, got {raw!r}") from None
        return cls(**values)


assert [f.name for f in fields(Settings)] == [s.attr for s in SETTINGS]


def defaults_file() -> str:
    """Render the commented ``/etc/default/fleet`` that the package ships."""
    lines = [
        "# Settings for every fleet worker (fleet-worker@N.service), read at each start.",
        "# Uncomment and edit a line, then apply it without downtime: fleetctl restart",
        "# An empty or commented value means the default shown.",
        "",
    ]
    for s in SETTINGS:
        if s.env in ("FLEET_INSTANCE", "FLEET_LISTEN"):
            continue  # set by the unit, or meaningless under systemd
        lines += [f"# {s.help}", f"#{s.env}={s.default}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def markdown_table() -> str:
    """Render the settings as the Markdown table in README.md."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{s.env}` | `{s.default}` | {s.help} |" for s in SETTINGS]
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - used by the packaging
    import sys

    sys.stdout.write(markdown_table() + "\n" if sys.argv[1:] == ["--markdown"] else defaults_file())
