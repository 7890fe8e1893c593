"""``fleetctl apps`` lists the apps' config files; ``fleetctl new`` writes one.

Both only read or write files in ``/etc/fleet/apps``: they need no systemd,
so a config can be written in an image build and applied at first boot.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from fleet import apps, settings
from fleet.apps import App, AppConfig, AppError, check_name
from fleet.ctl.errors import CtlError, UsageError
from fleet.ctl.status import table
from fleet.envfile import read_env_file


@dataclass(frozen=True)
class Entry:
    """One app as its config file has it: where it listens, how many workers, or what is wrong."""

    app: App
    listen: str
    workers: str
    venv: str
    error: str

    def to_json(self) -> dict[str, str | None]:
        return {"app": self.app.name, "config": str(self.app.config), "listen": self.listen or None,
                "workers": self.workers, "venv": self.venv or None, "error": self.error or None}


def entries() -> list[Entry]:
    """The default app, then every configured one, from their files."""
    found = [Entry(App.default(), "fleet.socket", "fleetctl scale", "", "")]
    for app in apps.configured():
        try:
            config = AppConfig.read(app)
        except AppError as exc:
            found.append(Entry(app, "", "", "", str(exc)))
            continue
        error = "; ".join(config.problems())
        found.append(Entry(app, " ".join(config.listen), config.workers,
                           config.values.get("FLEET_VENV", ""), error))
    return found


def run_list(as_json: bool) -> int:
    listed = entries()
    if as_json:
        print(json.dumps([e.to_json() for e in listed], indent=2))
        return 0
    rows = [["APP", "LISTEN", "WORKERS", "VENV", "CONFIG"]]
    rows += [[e.app.name, e.listen or "-", e.workers or "-", e.venv or "-", str(e.app.config)]
             for e in listed]
    print("\n".join(table(rows)))
    for e in listed:
        if e.error:
            print(f"{e.app.name}: {e.error}")
    return 0


CONFIG = """\
# fleet app {name}: fleet's generator makes its units from this file
# (fleet-{name}.socket, fleet-{name}.service, fleet-{name}-worker@N.service).
# After editing: sudo fleetctl apply (new, resized or removed apps), or
#                sudo fleetctl restart {name} (changed settings, one worker at a time).
# docs/apps.md (/usr/share/doc/fleet) explains every key.

# The WSGI callable, as module:callable.
FLEET_APP={module}
# Where the app's socket listens: HOST:PORT, [IPV6]:PORT or unix:/PATH.
FLEET_LISTEN={listen}
# How many workers: auto (one per usable CPU) or a whole number.
FLEET_WORKERS={workers}
# A virtualenv made with the workers' python3; its packages come first.
{venv_line}
# Directories the app's modules are imported from, separated by ':'.
{path_line}
# The system user the workers run as (default: a dynamic user, fleet-{name}).
{user_line}
# A root-owned environment file (chmod 600) for secrets: never logged.
#FLEET_SECRETS=/etc/fleet/apps/{name}.env
# A UNIX socket's owner, group and mode (Debian's nginx runs as www-data).
#FLEET_SOCKET_USER=root
#FLEET_SOCKET_GROUP=www-data
#FLEET_SOCKET_MODE=0660

# Any worker setting (fleet-worker --help lists them), for this app only, e.g.:
#FLEET_THREADS=4
"""


def _line(key: str, value: str, example: str) -> str:
    return f"{key}={value}" if value else f"#{key}={example}"


def run_new(name: str, listen: str, module: str, venv: str, path: str, workers: str,
            user: str, force: bool) -> int:
    """Write ``/etc/fleet/apps/NAME.conf`` from the flags, after checking it as the generator will."""
    try:
        app = App(check_name(name))
    except AppError as exc:
        raise UsageError(str(exc), "e.g. fleetctl new shop --listen 127.0.0.1:8001 "
                         "--module shop.wsgi:app") from None
    text = CONFIG.format(
        name=name, module=module, listen=listen, workers=workers,
        venv_line=_line("FLEET_VENV", venv, f"/srv/{name}/venv"),
        path_line=_line("PYTHONPATH", path, f"/srv/{name}"),
        user_line=_line("FLEET_USER", user, name),
    )  # fmt: skip
    from fleet.envfile import parse_env_file

    try:
        config = AppConfig.parse(app, parse_env_file(text))
        settings.SETTINGS[0].parse(module)
    except (AppError, ValueError) as exc:
        raise UsageError(str(exc).replace(f" in {app.config}", ""), "fleetctl new --help") from None
    clash = _same_listen(app, config.listen)
    if clash:
        raise CtlError(f"app {clash} already listens on {listen} ({App(clash).config}); "
                       "two apps cannot share an address", "pick another --listen")
    if app.config.exists() and not force:
        raise CtlError(f"{app.config} exists already; nothing changed",
                       f"edit it, or overwrite it: fleetctl new {name} ... --force")
    try:
        app.config.parent.mkdir(parents=True, exist_ok=True)
        tmp = app.config.with_name(f".{app.config.name}.new")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        tmp.replace(app.config)
    except OSError as exc:
        raise CtlError(f"cannot write {app.config}: {exc.strerror}",
                       "run it as root: sudo fleetctl new ...") from None
    print(f"created {app.config}")
    for problem in config.problems():
        print(f"warning: {problem}")
    print("start it: sudo fleetctl apply")
    return 0


def _same_listen(app: App, listen: tuple[str, ...]) -> str | None:
    """Another app configured with one of these addresses, by name; None if none is."""
    for other in apps.configured():
        if other == app:
            continue
        try:
            theirs = settings.parse_listen(read_env_file(other.config).get("FLEET_LISTEN", "") or "-")
        except (OSError, ValueError):
            continue
        if set(theirs) & set(listen):
            return other.name
    return None
