"""systemd's ``EnvironmentFile=`` format, read the way systemd reads it (the simple cases).

fleet's settings live in such files (``/etc/default/fleet``, each app's
``/etc/fleet/apps/NAME.conf``); the workers get them from systemd, and
fleetctl and the generator read the same files here, so all agree.

    >>> parse_env_file('FLEET_DRAIN_FILE="/run/x"\\n#FLEET_THREADS=8\\n')
    {'FLEET_DRAIN_FILE': '/run/x'}
"""

from __future__ import annotations

import re
from pathlib import Path


def parse_env_file(text: str) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines as systemd's ``EnvironmentFile=`` does, for the simple cases.

    Comment lines (``#``, ``;``), blank lines, an ``export`` prefix and quotes
    around the whole value are handled; line continuations are not (fleet's own
    files have none). As in systemd, a ``#`` after a value is part of the value.
    """
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.isidentifier():
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def read_env_file(path: Path) -> dict[str, str]:
    """Parse the file at ``path``; raises OSError (FileNotFoundError) as reading it does."""
    return parse_env_file(path.read_text())


def set_value(text: str, key: str, value: str) -> str:
    """``text`` with ``key`` set to ``value``: its last assignment replaced, else a line appended.

    Comments and every other line stay as they were, so an operator's notes survive.

    >>> set_value("# n\\nFLEET_WORKERS=2\\n", "FLEET_WORKERS", "3")
    '# n\\nFLEET_WORKERS=3\\n'
    """
    lines = text.splitlines()
    pattern = re.compile(rf"\s*(export\s+)?{re.escape(key)}\s*=")
    for n in range(len(lines) - 1, -1, -1):
        if pattern.match(lines[n]):
            lines[n] = f"{key}={value}"
            return "\n".join(lines) + "\n"
    return "\n".join([*lines, f"{key}={value}"]) + "\n"
