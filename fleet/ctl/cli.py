"""fleetctl's command line: the parser, the preconditions and the error printing around each verb.

``main(argv)`` is a function of argv that returns the exit status, so tests
run it in-process; every expected failure is one ``fleetctl: error:`` line
(and maybe a ``hint:``), never a traceback.

    >>> main(["--version"])
    fleetctl 0.1.0
    0
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from fleet import __version__
from fleet.apps import DEFAULT, NAME_RULE, App, AppError, check_name
from fleet.ctl import apply, catalog, drain, logs, preflight, restart, scale, status
from fleet.ctl.errors import EXIT_FAILURE, EXIT_INTERRUPTED, CtlError, UsageError
from fleet.ctl.systemctl import SystemctlError

VERBS = ("scale", "status", "restart", "logs", "drain", "undrain", "apps", "new", "apply")
APPLY_LOCK = Path("/run/lock/fleetctl-apply.lock")

DESCRIPTION = """\
Scale, inspect and restart fleet: Python web workers, one per CPU, on a shared
socket per app, supervised by systemd. The default app is fleet.socket,
fleet.service and fleet-worker@N.service; each app in /etc/fleet/apps/NAME.conf
has fleet-NAME.socket, fleet-NAME.service and fleet-NAME-worker@N.service.
Every command takes an APP name; without one it acts on the default app.
"""
EPILOG = """\
examples:
  fleetctl status                  every app and every worker
  sudo fleetctl scale auto         one worker per usable CPU (default app)
  sudo fleetctl scale shop 2       two workers for app shop
  sudo fleetctl restart shop       restart shop's workers one at a time
  fleetctl logs -f shop 2          follow shop's worker 2
  sudo fleetctl drain              health checks answer 503 (maintenance)
  sudo fleetctl new blog --listen unix:/run/blog/blog.sock --module blog:app
  sudo fleetctl apply              start new apps, resize, stop removed ones

exit status: 0 done, 1 failed (the message says why), 2 bad command line.
Run 'fleetctl COMMAND --help' for each command's options.
"""

HELP = {
    "scale": (
        "set how many workers run",
        """\
Make exactly workers 1..N of the app enabled (they come back after a reboot)
and, when the app is running, start the new ones and stop the surplus
gracefully, highest ids first. For an app in /etc/fleet/apps, the size is
FLEET_WORKERS in its config file, which this rewrites. Reports what it started, stopped and kept;
scaling to the current size changes nothing. If a step fails, everything
this run did is undone.

  N     a positive whole number of workers
  auto  one per CPU this machine lets fleet use (affinity and cgroup quota)
  +K    K more than now;  -K  K fewer (at least 1 must remain)""",
        """\
examples:
  sudo fleetctl scale 4
  sudo fleetctl scale auto
  sudo fleetctl scale +1
  sudo fleetctl scale -2
  sudo fleetctl scale 64 --force    past 4 per CPU needs --force
  sudo fleetctl scale 3 --json      {"started": [3], "stopped": [], "kept": [1, 2], ...}
  sudo fleetctl scale shop 2        app shop""",
    ),
    "status": (
        "show the apps, their sockets and every worker",
        """\
Show an app's socket and service, whether it is drained, what in its config
keeps it from running, and one row per worker (enabled or running): state,
pid, restarts, CPU time, memory, uptime, the CPU it is pinned to, and its
status line. A worker systemd keeps restarting is shown as "failing", with
its last error. With no APP and apps in /etc/fleet/apps: one row per app,
then every app's workers.""",
        """\
examples:
  fleetctl status
  fleetctl status shop
  fleetctl status --json | python3 -m json.tool
  fleetctl status --json | jq '.instances[] | select(.state != "active")'""",
    ),
    "restart": (
        "restart the workers one at a time",
        """\
Restart an app's workers in turn: each drains its requests, stops, starts,
and only once it is ready (READY=1) is the next one restarted, so the others
keep serving. Stops at the first worker that does not come back (exit 1).
With the app not running there is nothing to do (exit 0). 'systemctl reload
fleet' (or fleet-NAME) runs this. --all restarts every app, one after another.""",
        """\
examples:
  sudo fleetctl restart
  sudo fleetctl restart shop
  sudo fleetctl restart --all       every app, as a package upgrade does
  sudo systemctl reload fleet       the same as the first, through systemd""",
    ),
    "logs": (
        "show the workers' journal",
        """\
Show the journal of an app's workers, or of one (INSTANCE: 3 or
fleet-worker@3), with journalctl's own pager; -f follows new lines until Ctrl-C.""",
        """\
examples:
  fleetctl logs
  fleetctl logs -n 50 2
  fleetctl logs -f shop
  fleetctl logs shop 2""",
    ),
    "drain": (
        "make the health checks answer 503",
        """\
Create the app's drain file (FLEET_DRAIN_FILE in its config; by default
/run/fleet/drain, or /run/fleet/apps/NAME/drain). While it exists, every
worker's health path (/healthz) answers 503 so load balancers move traffic
away, while requests are still served. It is gone after a reboot; 'fleetctl
undrain' removes it. Other apps are not drained.""",
        """\
examples:
  sudo fleetctl drain
  sudo fleetctl drain && sleep 30 && sudo apt upgrade""",
    ),
    "undrain": (
        "make the health checks answer 200 again",
        "Remove the drain file that 'fleetctl drain' created.",
        """\
examples:
  sudo fleetctl undrain""",
    ),
    "apps": (
        "list the apps and their config files",
        """\
List the default app and every app configured in /etc/fleet/apps: where it
listens, its workers, its virtualenv and its config file, then any problem
in a config. Reads only the files: it works without systemd.""",
        """\
examples:
  fleetctl apps
  fleetctl apps --json""",
    ),
    "new": (
        "write a new app's config file",
        """\
Write /etc/fleet/apps/NAME.conf, commented, from the flags, after checking it
as the generator will; then 'fleetctl apply' starts the app. NAME is 1-32
lower-case letters, digits and '-', starting with a letter.""",
        """\
examples:
  sudo fleetctl new shop --listen 127.0.0.1:8001 --module mysite.wsgi:application \\
      --path /srv/mysite --venv /srv/mysite/venv --workers 2
  sudo fleetctl new blog --listen unix:/run/blog/blog.sock --module blog:app \\
      --venv /srv/blog/venv --workers 1 --user blog""",
    ),
    "apply": (
        "start new apps, resize them, stop removed ones",
        """\
Reload systemd, which makes each app's units from /etc/fleet/apps/NAME.conf,
then for each app: start it if it is new, start or stop workers to match
FLEET_WORKERS, and stop an app whose file is gone. Each app on its own: one
that fails is reported, the others carry on (exit 1 if any failed). Changed
settings reach running workers with 'fleetctl restart APP'.""",
        """\
examples:
  sudo fleetctl apply""",
    ),
}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are fleetctl's: raised, so ``main`` prints them its way."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"{self.prog} --help shows the usage")


def build_parser() -> Parser:
    """Build the parser: one subcommand per verb, each with examples in its --help."""
    parser = Parser(
        prog="fleetctl",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fleetctl {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=Parser)
    subs: dict[str, Parser] = {}
    for verb in VERBS:
        summary, description, epilog = HELP[verb]
        subs[verb] = verbs.add_parser(
            verb, help=summary, description=description, epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip

    app_help = f"an app in /etc/fleet/apps (default: {DEFAULT}, the package's own)"
    sc = subs["scale"]
    # NOTE: the size is parsed in dispatch (parse_target names a bad value),
    # once it is known which word is the app. argparse takes "-3" as a
    # positional, not an option, because no option here looks like a number.
    sc.add_argument("first", nargs="?", metavar="APP", help=app_help)
    sc.add_argument("second", nargs="?", metavar="N|auto|+K|-K", help="how many workers")
    sc.add_argument("--force", action="store_true", help="allow more than 4 workers per CPU")
    sc.add_argument("--json", action="store_true", help="print the change as JSON")

    for verb in ("status", "restart", "drain", "undrain"):
        subs[verb].add_argument("app", nargs="?", metavar="APP", help=app_help)
    subs["status"].add_argument("--json", action="store_true", help="print JSON (a stable schema)")
    subs["restart"].add_argument("--all", action="store_true", help="every app, one after another")
    subs["apps"].add_argument("--json", action="store_true", help="print JSON")

    lg = subs["logs"]
    lg.add_argument("first", nargs="?", metavar="APP", help=app_help)
    lg.add_argument("second", nargs="?", metavar="INSTANCE",
                    help="one worker's number (default: all workers)")  # fmt: skip
    lg.add_argument("-n", "--lines", type=logs.parse_lines, metavar="N",
                    help="show the last N lines")  # fmt: skip
    lg.add_argument("-f", "--follow", action="store_true", help="keep showing new lines")

    nw = subs["new"]
    nw.add_argument("name", metavar="NAME", help="the app's name")
    nw.add_argument("--listen", required=True, metavar="ADDRESS",
                    help="HOST:PORT, [IPV6]:PORT or unix:/PATH")  # fmt: skip
    nw.add_argument("--module", required=True, metavar="MODULE:CALLABLE", help="the WSGI app")
    nw.add_argument("--venv", default="", metavar="DIR", help="its virtualenv")
    nw.add_argument("--path", default="", metavar="DIR[:DIR]", help="its PYTHONPATH")
    nw.add_argument("--workers", default="auto", metavar="N|auto", help="how many workers (auto)")
    nw.add_argument("--user", default="", metavar="USER", help="a system user to run as")
    nw.add_argument("--force", action="store_true", help="overwrite an existing config")
    return parser


def resolve_app(name: str | None) -> App | None:
    """The app a command names: None for the default one; an error if there is no such app."""
    if name is None or name == DEFAULT:
        return None
    try:
        app = App(check_name(name))
    except AppError:
        raise UsageError(f"no app {name!r}: an app's name is {NAME_RULE}",
                         "fleetctl apps lists the apps") from None
    if not app.config.exists():
        raise UsageError(f"no app {name!r}: {app.config} does not exist",
                         f"fleetctl apps lists the apps; fleetctl new {name} ... creates one")
    return app


def _logs_target(first: str | None, second: str | None) -> tuple[App | None, str | None]:
    """``logs [APP] [INSTANCE]``: a lone word is an instance if it looks like one, else an app."""
    if second is not None:
        return resolve_app(first), logs.parse_instance(second)
    if first is None:
        return None, None
    if first.isdigit() or "worker@" in first:
        stem = first.split("worker@", 1)[0].removesuffix("-")
        app = resolve_app(stem.removeprefix("fleet-")) if stem.startswith("fleet-") else None
        return app, logs.parse_instance(first)
    return resolve_app(first), None


@contextlib.contextmanager
def exclusive(verb: str, lock_file: Path) -> Iterator[None]:
    """Hold an app's fleetctl lock, so two changes (a scale and a restart, say) never interleave.

    NOTE: the holder removes the file when done, so nothing is left behind (a
    purge checks). A waiter may then hold a lock on a removed file: it checks
    that the file it locked is still the one at the path, and tries again if not.
    """
    told = False
    while True:
        try:
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            lock = open(lock_file, "a+")
        except OSError:
            yield  # NOTE: no lock is better than no fleetctl (a read-only /run, say)
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not told:
                lock.seek(0)
                holder = lock.read().strip() or "another fleetctl"
                print(f"fleetctl {verb}: waiting for {holder} to finish...", file=sys.stderr, flush=True)
                told = True
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = os.stat(lock_file).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(lock.fileno()).st_ino:
            break
        lock.close()
    with lock:
        lock.truncate(0)
        lock.write(f"fleetctl {verb} (pid {os.getpid()})\n")
        lock.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock_file.unlink()


def dispatch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Check the verb's preconditions, then run it."""
    verb: str = args.verb
    if verb == "apps":
        return catalog.run_list(args.json)
    if verb == "new":
        preflight.check(verb, argv)
        return catalog.run_new(args.name, args.listen, args.module, args.venv, args.path,
                               args.workers, args.user, args.force)  # fmt: skip
    if verb == "apply":
        preflight.check(verb, argv)
        with exclusive(verb, APPLY_LOCK):
            return apply.run()
    if verb == "scale":
        app_name, size_text = (args.first, args.second) if args.second is not None else (None, args.first)
        if app_name is not None and re.fullmatch(r"[+-]?[0-9]+|auto", app_name.strip().lower()):
            raise UsageError(f"fleetctl scale does not take {size_text!r}",
                             "one size, after the app if any: fleetctl scale [APP] N")
        if size_text is None:
            raise UsageError(f"scale needs a size: {scale.FORMS}", "fleetctl scale --help shows examples")
        app = resolve_app(app_name)
        target = scale.parse_target(size_text)
    elif verb == "logs":
        app, instance = _logs_target(args.first, args.second)
    else:
        app = resolve_app(args.app)
    if verb == "restart" and args.all:
        if app is not None:
            raise UsageError("restart takes an APP or --all, not both", "fleetctl restart --all")
        return _restart_all(argv)
    preflight.check(verb, argv, app)
    if verb == "status":
        return status.run(args.json, app)
    if verb == "logs":
        return logs.run(instance, args.lines, args.follow, app)
    if verb == "drain":
        return drain.drain(app)
    if verb == "undrain":
        return drain.undrain(app)
    with exclusive(verb, (app or App.default()).lock_file):
        if verb == "scale":
            return scale.run(target, args.force, args.json, app)
        return restart.run(app)


def _restart_all(argv: Sequence[str]) -> int:
    """Restart every app's workers, one app after another; carry on past one that fails."""
    from fleet import apps

    failed = []
    for app in apps.every():
        try:
            preflight.check("restart", argv, app)
            print(f"{app.name}:", flush=True)
            with exclusive("restart", app.lock_file):
                restart.run(app)
        except CtlError as exc:
            failed.append(app.name)
            print(f"fleetctl: error: {app.name}: {exc.message}", file=sys.stderr, flush=True)
    if failed:
        raise CtlError(f"restarting {', '.join(failed)} failed (above); the other apps were restarted",
                       "fleetctl status shows every app")
    return 0


def _parse(argv: list[str]) -> argparse.Namespace | int:
    """Parse argv; an int is the exit status of --help or --version, already printed."""
    if argv and not argv[0].startswith("-") and argv[0] not in VERBS:
        raise UsageError(f"unknown command {argv[0]!r}; the commands are {', '.join(VERBS)}",
                         "fleetctl --help")  # fmt: skip
    try:
        args, extra = build_parser().parse_known_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    command = f"fleetctl {args.verb}" if args.verb else "fleetctl"
    if extra and args.verb and extra[0] in argv[: argv.index(args.verb)]:
        raise UsageError(f"fleetctl does not take {extra[0]!r} before the command",
                         f"options go after it: {command} {extra[0]}")  # fmt: skip
    if extra:
        raise UsageError(f"{command} does not take {' '.join(extra)!r}",
                         f"{command} --help lists what it takes")  # fmt: skip
    if args.verb is None:
        raise UsageError(f"fleetctl needs a command: {', '.join(VERBS)}", "fleetctl --help")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run fleetctl with ``argv`` (default: sys.argv[1:]); return the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        parsed = _parse(args)
        if isinstance(parsed, int):
            return parsed
        return dispatch(parsed, args)
    except CtlError as exc:
        _error(exc.message, exc.hint)
        return exc.code
    except SystemctlError as exc:
        _error(f"systemctl failed: {exc.detail}; see what systemd says with: systemctl status 'fleet*'",
               "fleetctl status shows every worker")  # fmt: skip
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("fleetctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # NOTE: `fleetctl status | head`: the reader left; that is not an error.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _error(message: str, hint: str | None) -> None:
    print(f"fleetctl: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
