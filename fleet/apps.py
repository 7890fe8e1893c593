"""The apps one host runs: the default app, and one more per ``/etc/fleet/apps/NAME.conf``.

The default app is the one the package installs: ``fleet.socket``,
``fleet.service``, ``fleet-worker@N.service``, configured by
``/etc/default/fleet``. Every other app is one config file, from which the
generator (:mod:`fleet.generator`) makes ``fleet-NAME.socket``,
``fleet-NAME.service`` and ``fleet-NAME-worker@N.service`` at each boot and
``systemctl daemon-reload``. :class:`App` is the one place those names are
made; :class:`AppConfig` is the one reading of a config file, shared by the
generator, fleetctl and the worker, so all three agree on what it says.

    >>> App("shop").socket, App("shop").unit("2"), App.default().unit("2")
    ('fleet-shop.socket', 'fleet-shop-worker@2.service', 'fleet-worker@2.service')
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fleet import cpus
from fleet.envfile import read_env_file
from fleet.settings import SETTINGS, parse_listen

APPS_DIR = Path("/etc/fleet/apps")
DEFAULTS_FILE = Path("/etc/default/fleet")
DEFAULT = "default"
# NOTE: lower case, starting with a letter, so an app is never mistaken for a
# worker number, a size (+2, -1) or a unit name on fleetctl's command line.
NAME_RE = re.compile(r"[a-z](?:[a-z0-9-]{0,30}[a-z0-9])?")
RESERVED = frozenset({DEFAULT, "auto", "all", "fleet", "worker"})
NAME_RULE = "1-32 lower-case letters, digits and '-', starting with a letter"


class AppError(Exception):
    """An app name or config that cannot be used; the message names the problem and the fix."""


def check_name(name: str) -> str:
    """Return ``name`` if it can name an app; raise AppError saying why not."""
    if name in RESERVED:
        raise AppError(f"{name!r} cannot name an app (reserved: {', '.join(sorted(RESERVED))})")
    if not NAME_RE.fullmatch(name) or name.endswith("-worker"):
        raise AppError(f"{name!r} cannot name an app: use {NAME_RULE}, not ending in '-worker'")
    return name


@dataclass(frozen=True)
class App:
    """One app's names: its units, its config file, its drain file and its fleetctl lock."""

    name: str

    @classmethod
    def default(cls) -> App:
        return cls(DEFAULT)

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT

    @property
    def _stem(self) -> str:
        return "fleet" if self.is_default else f"fleet-{self.name}"

    @property
    def socket(self) -> str:
        return f"{self._stem}.socket"

    @property
    def service(self) -> str:
        return f"{self._stem}.service"

    @property
    def worker(self) -> str:
        """The workers' unit prefix: ``fleet-worker``, ``fleet-shop-worker``."""
        return "fleet-worker" if self.is_default else f"fleet-{self.name}-worker"

    @property
    def template(self) -> str:
        return f"{self.worker}@.service"

    @property
    def instances(self) -> str:
        """A glob for every worker unit, which systemctl and journalctl both understand."""
        return f"{self.worker}@*.service"

    @property
    def units(self) -> tuple[str, str, str]:
        return (self.socket, self.service, self.template)

    @property
    def config(self) -> Path:
        return DEFAULTS_FILE if self.is_default else APPS_DIR / f"{self.name}.conf"

    @property
    def drain_default(self) -> str:
        """Where ``fleetctl drain`` puts the drain file unless FLEET_DRAIN_FILE says otherwise."""
        return "/run/fleet/drain" if self.is_default else f"/run/fleet/apps/{self.name}/drain"

    @property
    def lock_file(self) -> Path:
        return Path("/run/lock") / ("fleetctl.lock" if self.is_default else f"fleetctl-{self.name}.lock")

    def unit(self, instance: str) -> str:
        """``"3"`` -> ``"fleet-shop-worker@3.service"``."""
        return f"{self.worker}@{instance}.service"

    def short(self, instance: str) -> str:
        """``"3"`` -> ``"fleet-shop-worker@3"``: how fleetctl names a worker to people."""
        return f"{self.worker}@{instance}"

    def instance_of(self, unit: str) -> str | None:
        """``"fleet-shop-worker@3.service"`` -> ``"3"``; None for any other unit."""
        prefix = f"{self.worker}@"
        if unit.startswith(prefix) and unit.endswith(".service"):
            instance = unit[len(prefix) : -len(".service")]
            return instance if instance and not set(instance) & set("@./") else None
        return None


def configured(directory: Path | None = None) -> list[App]:
    """The apps with a config file (``NAME.conf``), by name; names that cannot be apps are skipped."""
    found = []
    try:
        paths = sorted((directory or APPS_DIR).glob("*.conf"))
    except OSError:
        return []
    for path in paths:
        try:
            found.append(App(check_name(path.stem)))
        except AppError:
            continue
    return found


def every(directory: Path | None = None) -> list[App]:
    """The default app, then every configured one."""
    return [App.default(), *configured(directory)]


def shares_cpus(directory: Path | None = None) -> bool:
    """Whether apps besides the default one are configured, so the CPUs are shared."""
    return bool(configured(directory))


# The keys an app's config file has beyond the worker's FLEET_* settings; the
# generator reads them, the worker ignores them. docs/apps.md explains each.
APP_KEYS: dict[str, tuple[str, str]] = {
    "FLEET_LISTEN": ("", "where the app's socket listens: HOST:PORT, [IPV6]:PORT or unix:/PATH"),
    "FLEET_WORKERS": ("auto", "how many workers: auto (one per usable CPU) or a whole number"),
    "FLEET_USER": ("", "the system user the workers run as (default: a dynamic user, fleet-NAME)"),
    "FLEET_GROUP": ("", "their group (default: the user's own group)"),
    "FLEET_SECRETS": ("", "an environment file for secrets (0600 or 0640, root-owned)"),
    "FLEET_SOCKET_USER": ("root", "a UNIX socket's owner"),
    "FLEET_SOCKET_GROUP": ("www-data", "a UNIX socket's group (www-data: Debian's nginx)"),
    "FLEET_SOCKET_MODE": ("0660", "a UNIX socket's mode"),
}
WORKER_CAP = 256
_MODE_RE = re.compile(r"0?[0-7]{3}")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]*[$]?")


@dataclass(frozen=True)
class AppConfig:
    """What an app's config file asks for, checked: the parts that make its units."""

    app: App
    values: Mapping[str, str]
    listen: tuple[str, ...]
    workers: str  # "auto" or a whole number, as written
    user: str
    group: str
    secrets: str
    socket_user: str
    socket_group: str
    socket_mode: str

    @classmethod
    def read(cls, app: App) -> AppConfig:
        """Read and check ``app``'s config file; raise AppError naming the first problem."""
        try:
            values = read_env_file(app.config)
        except FileNotFoundError:
            raise AppError(f"app {app.name!r} has no config file {app.config}; "
                           f"create it: fleetctl new {app.name} --listen ... --module ...") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise AppError(f"cannot read {app.config}: {exc}") from None
        return cls.parse(app, values)

    @classmethod
    def parse(cls, app: App, values: Mapping[str, str]) -> AppConfig:
        """Check ``values`` (a parsed config file) for ``app``; raise AppError on the first problem."""
        where = app.config

        def get(key: str) -> str:
            return values.get(key, "").strip() or APP_KEYS[key][0]

        listen_text = get("FLEET_LISTEN")
        if not listen_text:
            raise AppError(f"{where} sets no FLEET_LISTEN; add where the app listens, "
                           "e.g. FLEET_LISTEN=127.0.0.1:8001 or FLEET_LISTEN=unix:/run/NAME/NAME.sock")
        try:
            listen = parse_listen(listen_text)
        except ValueError as exc:
            raise AppError(f"FLEET_LISTEN in {where} must be {exc}, got {listen_text!r}") from None
        workers = get("FLEET_WORKERS").lower()
        if workers != "auto" and not (workers.isdigit() and 1 <= int(workers) <= WORKER_CAP):
            raise AppError(f"FLEET_WORKERS in {where} must be auto or a whole number from 1 to "
                           f"{WORKER_CAP}, got {values.get('FLEET_WORKERS')!r}")
        for key in ("FLEET_USER", "FLEET_GROUP", "FLEET_SOCKET_USER", "FLEET_SOCKET_GROUP"):
            if get(key) and not _USER_RE.fullmatch(get(key)):
                raise AppError(f"{key} in {where} must be a user or group name, got {get(key)!r}")
        secrets = get("FLEET_SECRETS")
        if secrets and not secrets.startswith("/"):
            raise AppError(f"FLEET_SECRETS in {where} must be an absolute path, got {secrets!r}")
        mode = get("FLEET_SOCKET_MODE")
        if not _MODE_RE.fullmatch(mode):
            raise AppError(f"FLEET_SOCKET_MODE in {where} must be an octal mode such as 0660, got {mode!r}")
        for s in SETTINGS:
            if s.env in values and values[s.env].strip() and s.env != "FLEET_LISTEN":
                try:
                    s.parse(values[s.env])
                except ValueError as exc:
                    raise AppError(f"{s.env} in {where} must be {exc}, got {values[s.env]!r}") from None
        return cls(app, dict(values), listen, workers, get("FLEET_USER"), get("FLEET_GROUP"),
                   secrets, get("FLEET_SOCKET_USER"), get("FLEET_SOCKET_GROUP"), mode.rjust(4, "0"))

    def worker_count(self) -> int:
        """How many workers: the number written, or one per usable CPU for ``auto``."""
        return cpus.usable_count() if self.workers == "auto" else int(self.workers)

    def problems(self) -> list[str]:
        """What on this machine keeps the app from running, each with its fix; [] if nothing.

        Checked here rather than in the generator, which runs before users
        from the network are known: fleetctl shows these beside the app.
        """
        found = []
        checks = [("FLEET_USER", self.user, pwd.getpwnam), ("FLEET_GROUP", self.group, grp.getgrnam)]
        if self.unix:
            checks += [("FLEET_SOCKET_USER", self.socket_user, pwd.getpwnam),
                       ("FLEET_SOCKET_GROUP", self.socket_group, grp.getgrnam)]
        for key, name, lookup in checks:
            if not name:
                continue
            try:
                lookup(name)
            except KeyError:
                kind = "user" if "USER" in key else "group"
                found.append(f"{key}: no {kind} {name!r} on this machine; create it "
                             f"(adduser --system {name}) or change {key} in {self.app.config}")
        if self.secrets:
            problem = secrets_problem(self.secrets)
            if problem:
                found.append(problem)
        return found

    @property
    def unix(self) -> bool:
        return any(a.startswith("unix:") for a in self.listen)


def secrets_problem(path: str) -> str | None:
    """Why the secrets file at ``path`` must not be used (missing, or readable by every user), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (f"FLEET_SECRETS file {path} does not exist; create it, readable by root only: "
                f"install -m 600 /dev/null {path}")
    except OSError as exc:
        return f"cannot check FLEET_SECRETS file {path}: {exc.strerror}"
    if st.st_mode & stat.S_IROTH or st.st_mode & stat.S_IWOTH:
        return (f"FLEET_SECRETS file {path} is readable by every user (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); make it private: chmod 600 {path}")
    return None
