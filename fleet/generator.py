"""fleet's systemd generator: every app's units, made afresh from ``/etc/fleet/apps`` at boot and reload.

systemd runs it as ``/usr/lib/systemd/system-generators/fleet-apps NORMAL EARLY LATE``
before it loads any unit (systemd.generator(7)). For each ``NAME.conf`` it
writes into NORMAL:

- ``fleet-NAME.socket``: the app's listening socket, from ``FLEET_LISTEN``;
- ``fleet-NAME.service``: the app as a whole, which the workers are part of;
- ``fleet-NAME-worker@.service``: the package's own ``fleet-worker@.service``
  with the names, config file and user changed, so every app keeps the same
  sandbox, and the generated template can never drift from the shipped one;
- the links that start them at boot, and ``FLEET_WORKERS`` worker instances.

A config it cannot use is skipped, with one line to the journal; the other
apps are made as usual. Units made here live in /run and vanish with the
config file at the next reload: removing an app is removing its file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fleet import apps as fleet_apps
from fleet.apps import App, AppConfig, AppError

# Where the package installs its worker template (Debian 13, Debian 12).
TEMPLATE_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
TEMPLATE = "fleet-worker@.service"
PROG = "fleet-apps generator"


class GeneratorError(Exception):
    """The shipped worker template lacks a line the generator rewrites: a packaging bug."""


def _header(app: App, unit: str) -> str:
    return (f"# Made by fleet's generator from {app.config}: edit that file, then run\n"
            "# 'sudo fleetctl apply'. For what it cannot say, add a drop-in:\n"
            f"#   sudo systemctl edit {unit}")


def listen_stream(address: str) -> str:
    """A ``FLEET_LISTEN`` address as ``ListenStream=`` takes it.

    >>> listen_stream("unix:/run/blog/blog.sock"), listen_stream("127.0.0.1:8001")
    ('/run/blog/blog.sock', '127.0.0.1:8001')
    """
    return address.removeprefix("unix:")


def socket_unit(config: AppConfig) -> str:
    """The app's socket: as fleet.socket, at its own addresses; a UNIX one with owner and mode."""
    app = config.app
    lines = [
        _header(app, app.socket),
        "",
        "[Unit]",
        f"Description=fleet app {app.name}: listening socket",
        "Documentation=man:fleetctl(1)",
        f"SourcePath={app.config}",
        "",
        "[Socket]",
        *(f"ListenStream={listen_stream(a)}" for a in config.listen),
        "Backlog=4096",
        "ReusePort=no",
        "TriggerLimitIntervalSec=0",
    ]
    if any(not a.startswith("unix:") for a in config.listen):
        lines += ["NoDelay=yes", "DeferAcceptSec=5"]
    if config.unix:
        lines += [f"SocketUser={config.socket_user}", f"SocketGroup={config.socket_group}",
                  f"SocketMode={config.socket_mode}", "RemoveOnStop=yes"]
    return "\n".join(lines) + "\n"


def service_unit(config: AppConfig) -> str:
    """The app as a whole, as fleet.service: it runs nothing, and wants the app's workers."""
    app = config.app
    return "\n".join([
        _header(app, app.service),
        "",
        "[Unit]",
        f"Description=fleet app {app.name}",
        "Documentation=man:fleetctl(1)",
        f"SourcePath={app.config}",
        f"Requires={app.socket}",
        f"After={app.socket}",
        f"PartOf={app.socket}",
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        "ExecStart=/bin/true",
        f"ExecReload=/usr/bin/fleetctl restart {app.name}",
    ]) + "\n"


def worker_unit(config: AppConfig, template: str) -> str:
    """The shipped worker template with this app's names, config file and user.

    Each rewritten key must be in the template, so a change to the template
    that would leave an app's worker pointing at fleet.socket fails here (and
    in the unit tests), not in production.
    """
    app = config.app
    user = [f"User={config.user}", "DynamicUser=no"] if config.user else [f"User=fleet-{app.name}"]
    if config.group:
        user.append(f"Group={config.group}")
    rewrite: dict[str, list[str]] = {
        "Description": [f"Description=fleet app {app.name}: worker %i", f"SourcePath={app.config}"],
        "PartOf": [f"PartOf={app.service}"],
        "Requires": [f"Requires={app.socket}"],
        "After": [f"After={app.socket}"],
        "Sockets": [f"Sockets={app.socket}"],
        "EnvironmentFile": [
            # NOTE: Environment= first: the config file overrides it (systemd.exec(5)).
            f"Environment=FLEET_DRAIN_FILE={app.drain_default}",
            f"EnvironmentFile={app.config}",
            *([f"EnvironmentFile=-{config.secrets}"] if config.secrets else []),
        ],
        "RuntimeDirectory": [f"RuntimeDirectory=fleet-{app.name}/worker-%i"],
        "StateDirectory": [f"StateDirectory=fleet-{app.name}"],
        "SyslogIdentifier": [f"SyslogIdentifier={app.worker}@%i"],
        "User": user,
        "DynamicUser": [] if config.user else ["DynamicUser=yes"],
    }
    out = [_header(app, app.template)]
    seen: set[str] = set()
    section = ""
    for raw in template.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            if section == "[Install]":
                break  # NOTE: a generator's units are wanted by its links, not enabled
            out += ["", line]
            continue
        key = line.partition("=")[0].strip()
        if key in rewrite:
            if key not in seen:
                out += rewrite[key]
            seen.add(key)
            continue
        out.append(line)
    missing = sorted(set(rewrite) - seen)
    if missing:
        raise GeneratorError(f"{TEMPLATE} has no {', '.join(missing)}= line to rewrite")
    return "\n".join(out) + "\n"


def _link(directory: Path, name: str, target: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    link = directory / name
    if not link.is_symlink():
        link.symlink_to(target)


def write_app(out: Path, config: AppConfig, template: str) -> None:
    """Write one app's units and links into the generator directory ``out``."""
    app = config.app
    (out / app.socket).write_text(socket_unit(config))
    (out / app.service).write_text(service_unit(config))
    (out / app.template).write_text(worker_unit(config, template))
    _link(out / "sockets.target.wants", app.socket, out / app.socket)
    _link(out / "multi-user.target.wants", app.service, out / app.service)
    for n in range(1, config.worker_count() + 1):
        _link(out / f"{app.service}.wants", app.unit(str(n)), out / app.template)


def find_template(dirs: Sequence[Path] | None = None) -> str:
    """The package's worker template, where the package installed it."""
    for directory in dirs or TEMPLATE_DIRS:
        try:
            return (directory / TEMPLATE).read_text()
        except OSError:
            continue
    raise GeneratorError(f"{TEMPLATE} is not installed; reinstall fleet")


def generate(out: Path, apps_dir: Path | None = None, template: str | None = None) -> list[str]:
    """Write every usable app's units into ``out``; return one line per app that was skipped."""
    apps_dir = apps_dir or fleet_apps.APPS_DIR
    skipped = []
    apps = fleet_apps.configured(apps_dir)
    if not apps:
        return []
    text = template if template is not None else find_template()
    for app in apps:
        try:
            config = AppConfig.parse(app, _read(apps_dir / f"{app.name}.conf"))
            write_app(out, config, text)
        except (AppError, OSError) as exc:
            skipped.append(f"app {app.name} skipped: {exc}")
    return skipped


def _read(path: Path) -> dict[str, str]:
    from fleet.envfile import read_env_file

    return read_env_file(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run as systemd runs generators: the first argument is the normal-priority directory."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.umask(0o022)
    if not args:
        print(f"usage: {PROG} NORMAL_DIR [EARLY_DIR LATE_DIR]", file=sys.stderr)
        return 2
    try:
        skipped = generate(Path(args[0]))
    except GeneratorError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    for line in skipped:
        print(f"{PROG}: {line}; fix the file, then: sudo fleetctl apply", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
