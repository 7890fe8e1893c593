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
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from fleet import __version__
from fleet.ctl import drain, logs, preflight, restart, scale, status
from fleet.ctl.errors import EXIT_FAILURE, EXIT_INTERRUPTED, CtlError, UsageError
from fleet.ctl.systemd import SystemctlError

VERBS = ("scale", "status", "restart", "logs", "drain", "undrain")
LOCK_FILE = Path("/run/lock/fleetctl.lock")

DESCRIPTION = """\
Scale, inspect and restart fleet: one Python web worker per CPU on one shared
socket, supervised by systemd (fleet.socket, fleet.service, fleet-worker@N.service).
"""
EPILOG = """\
examples:
  fleetctl status                  the socket and every worker
  sudo fleetctl scale auto         one worker per usable CPU
  sudo fleetctl restart            restart the workers one at a time
  fleetctl logs -f 2               follow worker 2's journal
  sudo fleetctl drain              health checks answer 503 (maintenance)

exit status: 0 done, 1 failed (the message says why), 2 bad command line.
Run 'fleetctl COMMAND --help' for each command's options.
"""

HELP = {
    "scale": (
        "set how many workers run",
        """\
Make exactly fleet-worker@1..N enabled (they come back after a reboot) and,
when the fleet is running, start the new ones and stop the surplus
gracefully, highest ids first. Reports what it started, stopped and kept;
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
  sudo fleetctl scale 3 --json      {"started": [3], "stopped": [], "kept": [1, 2], ...}""",
    ),
    "status": (
        "show the socket and every worker",
        """\
Show fleet.socket, fleet.service, whether the fleet is drained, and one row
per worker (enabled or running): state, pid, restarts, CPU time, memory,
uptime, the CPU it is pinned to, and its status line. A worker systemd keeps
restarting is shown as "failing", with its last error.""",
        """\
examples:
  fleetctl status
  fleetctl status --json | python3 -m json.tool
  fleetctl status --json | jq '.instances[] | select(.state != "active")'""",
    ),
    "restart": (
        "restart the workers one at a time",
        """\
Restart every worker in turn: each drains its requests, stops, starts, and
only once it is ready (READY=1) is the next one restarted, so the others keep
serving. Stops at the first worker that does not come back (exit 1). With the
fleet not running there is nothing to do (exit 0). 'systemctl reload fleet'
runs this.""",
        """\
examples:
  sudo fleetctl restart
  sudo systemctl reload fleet       the same, through systemd""",
    ),
    "logs": (
        "show the workers' journal",
        """\
Show the journal of every worker, or of one (INSTANCE: 3 or fleet-worker@3),
with journalctl's own pager; -f follows new lines until Ctrl-C.""",
        """\
examples:
  fleetctl logs
  fleetctl logs -n 50 2
  fleetctl logs -f""",
    ),
    "drain": (
        "make the health checks answer 503",
        """\
Create the drain file (FLEET_DRAIN_FILE in /etc/default/fleet, by default
/run/fleet/drain). While it exists, every worker's health path (/healthz)
answers 503 so load balancers move traffic away, while requests are still
served. It is gone after a reboot; 'fleetctl undrain' removes it.""",
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

    sc = subs["scale"]
    # NOTE: parse_target raises fleetctl's own UsageError (argparse lets it
    # through), naming the value. argparse takes "-3" as this value, not an
    # option, because no option of this parser looks like a number.
    sc.add_argument("size", nargs="?", type=scale.parse_target, metavar="N|auto|+K|-K",
                    help="how many workers")  # fmt: skip
    sc.add_argument("--force", action="store_true", help="allow more than 4 workers per CPU")
    sc.add_argument("--json", action="store_true", help="print the change as JSON")

    subs["status"].add_argument("--json", action="store_true", help="print JSON (a stable schema)")

    lg = subs["logs"]
    lg.add_argument("instance", nargs="?", type=logs.parse_instance, metavar="INSTANCE",
                    help="one worker's number (default: all workers)")  # fmt: skip
    lg.add_argument("-n", "--lines", type=logs.parse_lines, metavar="N",
                    help="show the last N lines")  # fmt: skip
    lg.add_argument("-f", "--follow", action="store_true", help="keep showing new lines")
    return parser


@contextlib.contextmanager
def exclusive(verb: str) -> Iterator[None]:
    """Hold fleetctl's lock, so two changes (a scale and a restart, say) never interleave.

    NOTE: the holder removes the file when done, so nothing is left behind (a
    purge checks). A waiter may then hold a lock on a removed file: it checks
    that the file it locked is still the one at the path, and tries again if not.
    """
    told = False
    while True:
        try:
            LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
            lock = open(LOCK_FILE, "a+")
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
            current = os.stat(LOCK_FILE).st_ino
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
                LOCK_FILE.unlink()


def dispatch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Check the verb's preconditions, then run it."""
    verb: str = args.verb
    if verb == "scale" and args.size is None:
        raise UsageError(f"scale needs a size: {scale.FORMS}", "fleetctl scale --help shows examples")
    preflight.check(verb, argv)
    if verb == "status":
        return status.run(args.json)
    if verb == "logs":
        return logs.run(args.instance, args.lines, args.follow)
    if verb == "drain":
        return drain.drain()
    if verb == "undrain":
        return drain.undrain()
    with exclusive(verb):
        if verb == "scale":
            return scale.run(args.size, args.force, args.json)
        return restart.run()


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
        _error(f"systemctl failed: {exc.detail}; see what systemd says with: systemctl status fleet",
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
