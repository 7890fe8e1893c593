"""Run fleet in a throwaway container to poke at by hand: the engine of ``make try``.

``start`` boots a Debian 12 container with a real systemd, installs dist/fleet_*_all.deb
in it and leaves it running in the background; ``stop`` throws it away (``make try-stop``).
The container shares the host's network, so fleet answers on the host's 127.0.0.1: on port
8000 when that is free, else on a free port. Its state lives in dist/try.json.

Usage: /usr/bin/python3 -m harness.try_fleet {start [--deb PATH] | stop | status | shell}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.container import CLEAN_ENV, CommandError, Container, E2EError, newest_deb, skip_reason
from harness.fleet import set_port
from harness.http import get_text
from harness.net import HOST, free_port, port_is_free

REPO = Path(__file__).resolve().parents[1]
DIST = REPO / "dist"
STATE = DIST / "try.json"
PREFERRED_PORT = 8000
ANSWER_TIMEOUT = 15.0


@dataclass(frozen=True)
class TryState:
    """What ``stop`` needs to find the container again, and what the instructions show."""

    machine: str
    nspawn_pid: int
    nspawn_started: int
    leader: int
    port: int
    log: str
    deb: str

    @classmethod
    def load(cls) -> TryState | None:
        try:
            return cls(**json.loads(STATE.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as error:
            raise E2EError(f"{STATE} is unreadable ({error}): delete it") from None

    def save(self) -> None:
        STATE.write_text(json.dumps(asdict(self), indent=1) + "\n")

    def container(self) -> Container:
        return Container.adopt(
            self.machine, self.nspawn_pid, self.nspawn_started, self.leader, Path(self.log)
        )


def start(deb: Path | None) -> int:
    """Boot a container with fleet installed, unless one is running already."""
    state = TryState.load()
    if state is not None:
        if state.container().alive():
            print(f"a try container is already running ({state.machine}).")
            print(instructions(state))
            return 0
        STATE.unlink()  # NOTE: it died (host reboot, killed by hand): start afresh.
    deb = deb or newest_deb(DIST)
    if deb is None or not deb.is_file():
        return error(f"no {deb or 'dist/fleet_*_all.deb'} to install", "run make deb (make try does)")
    reason = skip_reason()
    if reason is not None:
        problem, _, hint = reason.partition(": ")
        return error(problem, hint)

    port = PREFERRED_PORT if port_is_free(PREFERRED_PORT) else free_port()
    DIST.mkdir(exist_ok=True)
    log = DIST / "try.log"
    container = Container.boot("fleet-try", log_path=log, detach=True)
    try:
        started = container.nspawn_started
        assert started is not None
        state = TryState(
            container.machine, container.nspawn_pid, started, container.leader, port,
            str(log), str(deb),
        )  # fmt: skip
        state.save()
        # NOTE: the container shares the host's network: listen on loopback only, on a
        # port the host does not use, before the package's postinst starts the socket.
        set_port(container, port, HOST)
        began = time.monotonic()
        container.install_deb(deb)
        print(f"installed {deb.name} in {time.monotonic() - began:.1f} s")
    except BaseException as failure:
        container.stop()
        STATE.unlink(missing_ok=True)
        if isinstance(failure, CommandError):
            return error(f"installing {deb.name} failed\n{failure}", f"see {log} for the boot")
        raise
    print(answer(container, port))
    print(instructions(state))
    return 0


def answer(container: Container, port: int) -> str:
    """Wait briefly for fleet's first answer and say what it was, or show fleetctl status."""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while True:
        try:
            status, _, body = get_text(port)
            first = body.strip().splitlines()[0] if body.strip() else ""
            return f"fleet answers on http://127.0.0.1:{port}/: {status} {first[:80]}"
        except OSError as failure:
            if time.monotonic() > deadline:
                report = container.run("fleetctl", "status", check=False, timeout=30)
                return (
                    f"warning: nothing answers on http://127.0.0.1:{port}/ after "
                    f"{ANSWER_TIMEOUT:.0f} s ({failure}); fleetctl status says:\n"
                    f"{report.stdout}{report.stderr}"
                )
            time.sleep(0.1)


def instructions(state: TryState) -> str:
    pid = state.leader
    return "\n".join(
        [
            "",
            f"fleet runs in the throwaway container {state.machine} (PID 1 is host pid {pid}):",
            f"  curl http://127.0.0.1:{state.port}/",
            f"  nsenter -t {pid} -a fleetctl status",
            f"  nsenter -t {pid} -a journalctl -u 'fleet*' -f",
            f"  nsenter -t {pid} -a bash -l           # a root shell inside ('exit' leaves it up)",
            "  make try-stop                         # throw it away; nothing persists",
            f"the container's console log: {state.log}",
        ]
    )


def stop() -> int:
    """Shut the try container down by its recorded PID and forget it."""
    state = TryState.load()
    if state is None:
        print("no try container is running.")
        return 0
    container = state.container()
    if container.alive():
        container.stop()
        print(f"stopped {state.machine} (it served http://127.0.0.1:{state.port}/).")
    else:
        print(f"{state.machine} was not running any more; forgot it.")
    STATE.unlink(missing_ok=True)
    return 0


def status() -> int:
    state = TryState.load()
    if state is None or not state.container().alive():
        print("no try container is running: start one with make try.")
        return 3
    print(f"a try container is running ({state.machine}).")
    print(instructions(state))
    return 0


def shell() -> int:
    """Replace this process with a root login shell inside, with a clean environment."""
    state = TryState.load()
    if state is None or not state.container().alive():
        return error("no try container is running", "start one with make try")
    argv = ["nsenter", f"--target={state.leader}", "--all", "/usr/bin/env", "-i"]
    argv += [f"{k}={v}" for k, v in CLEAN_ENV.items()]
    argv += [f"TERM={os.environ.get('TERM', 'dumb')}", "/bin/bash", "-l"]
    os.execvpe("nsenter", argv, CLEAN_ENV)


def error(problem: str, hint: str) -> int:
    print(f"try_fleet: error: {problem}\nhint: {hint}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="try_fleet", description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    begin = verbs.add_parser("start", help="boot a container with fleet installed")
    begin.add_argument("--deb", type=Path, help="the .deb to install (default: newest in dist/)")
    verbs.add_parser("stop", help="throw the container away")
    verbs.add_parser("status", help="say whether one runs, and how to reach it")
    verbs.add_parser("shell", help="a root shell inside the container")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.verb == "start":
            return start(args.deb)
        if args.verb == "stop":
            return stop()
        if args.verb == "status":
            return status()
        return shell()
    except E2EError as failure:
        # NOTE: the harness's messages already name the problem and the fix.
        print(f"try_fleet: error: {failure}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
