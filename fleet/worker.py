"""fleet-worker: serve one WSGI app on the sockets systemd passes, and stop without losing a request.

One process of the fleet, started by ``fleet-worker@N.service``. Its life:

1. read the ``FLEET_*`` settings and import the app; on failure, say why in one
   line, wait out a growing back-off (so a crash loop stays cheap), exit non-zero;
2. take the inherited listening sockets (or bind ``FLEET_LISTEN`` when run by
   hand), pin itself to its CPU, tell systemd ``READY=1``;
3. serve, pinging the watchdog while its threads are not all stuck;
4. on SIGTERM (or once recycling is due) stop accepting at once, let requests
   in flight finish, close keep-alive connections between requests, exit 0.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleet.server import FleetServer
    from fleet.settings import Settings
    from fleet.systemd import Watchdog

log = logging.getLogger("fleet.worker")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_APP_LOAD = 4  # as gunicorn's APP_LOAD_ERROR: the app cannot be imported
EXIT_SOFTWARE = 70  # EX_SOFTWARE: an unexpected error
EXIT_HUNG = 75  # EX_TEMPFAIL: every thread stuck and no watchdog to report to
EXIT_CONFIG = 78  # EX_CONFIG: a FLEET_* setting or the inherited sockets are unusable

TICK = 0.25  # seconds between housekeeping passes: watchdog, hang and drain checks

USAGE = """\
usage: fleet-worker

Serve a WSGI app on the listening sockets systemd passes (LISTEN_FDS), as one
instance of fleet-worker@.service. Run by hand, it binds FLEET_LISTEN instead.
It is configured only by FLEET_* environment variables (/etc/default/fleet):

{table}

Stops gracefully on SIGTERM: no new connections, requests in flight finish.
"""


class AppLoadError(Exception):
    """FLEET_APP names something that cannot be served; the message says what to set."""


def load_app(name: str, venv: str = "") -> Any:
    """Import ``module:callable`` and check it is callable (like gunicorn's APP_MODULE)."""
    import pkgutil

    try:
        app = pkgutil.resolve_name(name)
    except ModuleNotFoundError as exc:
        where = f" (looked in FLEET_VENV {venv}, PYTHONPATH and Debian's packages)" if venv else ""
        fix = f", or install it into the venv: {venv}/bin/pip install ..." if venv else ""
        raise AppLoadError(
            f"cannot import WSGI app {name!r}: {exc}{where}; "
            f"set FLEET_APP to an importable module:callable (check PYTHONPATH){fix}"
        ) from None
    except AttributeError:
        module, _, attr = name.partition(":")
        raise AppLoadError(
            f"cannot import WSGI app {name!r}: module {module!r} has no attribute {attr!r}; "
            "set FLEET_APP to module:callable naming your WSGI app"
        ) from None
    except Exception as exc:
        log.error("importing %s failed:", name, exc_info=True)
        raise AppLoadError(
            f"cannot import WSGI app {name!r}: importing it raised {type(exc).__name__}: {exc}"
        ) from None
    if not callable(app):
        raise AppLoadError(
            f"WSGI app {name!r} is a {type(app).__name__}, not a callable; "
            "set FLEET_APP to the WSGI callable itself, e.g. myproject.wsgi:application"
        )
    return app


class StartHistory:
    """Counts a worker's starts in a row that never became ready, so each further one waits longer.

    The unit restarts at once (RestartSec=0: systemd's timer would round 100 ms
    up to as much as 350 ms) and has no start limit, since a worker that hit it
    would fail the shared socket too. So the worker paces itself, but only
    what cannot boot: an app or setting that fails to load, a death before
    READY=1. Three quick tries are free, then it waits 2, 4, 8, 16, then 30 s.
    A worker that became ready is replaced at once however often it dies (an
    OOM-kill loop, a crashing request): pacing it would take a working fleet
    dark. A failure it can name waits before exiting, so the next start reads
    the configuration afresh; a death it could not report (a segfault while
    importing) is paced at the next start instead. The files live in
    RuntimeDirectory=, which survives automatic restarts
    (RuntimeDirectoryPreserve=restart) and is wiped by a stop, so
    ``fleetctl restart`` starts afresh.
    """

    FREE_TRIES = 3
    MAX_DELAY = 30.0

    def __init__(self, directory: str | None) -> None:
        self.dir = Path(directory) if directory else None

    def _read(self, name: str) -> str:
        try:
            return (self.dir / name).read_text() if self.dir else ""
        except OSError:
            return ""

    def _write(self, name: str, text: str) -> None:
        if self.dir:
            try:
                (self.dir / name).write_text(text)
            except OSError:
                pass

    def count(self) -> int:
        """Starts in a row, this one included, that have not yet proven good."""
        text = self._read("starts")
        return int(text) if text.isdigit() else 0

    def _delay(self) -> float:
        starts = self.count()
        if not self.dir or starts <= self.FREE_TRIES:
            return 0.0
        return min(self.MAX_DELAY, 2.0 ** (starts - self.FREE_TRIES))

    def begin(self) -> float:
        """Record a start; return how long to wait first (0 if the last failure already waited)."""
        self._write("starts", str(self.count() + 1))
        if self.dir and (self.dir / "paced").exists():
            (self.dir / "paced").unlink()
            return 0.0
        return self._delay()

    def failed(self, message: str) -> float:
        """Record why this start failed; return how long to wait before exiting."""
        self._write("last-error", message)
        self._write("paced", "")
        return self._delay()

    def last_error(self) -> str:
        return self._read("last-error") or "exited before it was ready"

    def settle(self) -> None:
        """This start became ready: the next one starts at once."""
        if self.dir:
            for name in ("starts", "last-error", "paced"):
                (self.dir / name).unlink(missing_ok=True)


def _systemd() -> Any:
    """fleet.systemd, or None when python3-systemd itself is what fails to import."""
    try:
        from fleet import systemd
    except ImportError:
        return None
    return systemd


def _wait(delay: float, status: str) -> None:
    """Sleep ``delay`` seconds with ``status`` shown in systemctl, keeping the watchdog fed."""
    systemd = _systemd()
    if systemd is None:
        time.sleep(delay)
        return
    systemd.notify(STATUS=status)
    watchdog = systemd.Watchdog()
    deadline = time.monotonic() + delay
    while (left := deadline - time.monotonic()) > 0:
        watchdog.tick(healthy=True)
        time.sleep(min(left, 1.0))


def _pace(history: StartHistory) -> None:
    """Wait before booting if the starts before this one died without a word."""
    delay = history.begin()
    if delay:
        message = history.last_error()
        log.warning("%d starts in a row did not last (last: %s); waiting %.0fs before this one",
                    history.count() - 1, message, delay)
        _wait(delay, f"failed: {message} (retrying in {delay:.0f}s)")


def _boot_failed(message: str, code: int) -> int:
    """Report a failure to start (log, systemd status), wait out the back-off, return the exit code."""
    log.error("%s", message)
    delay = StartHistory(os.environ.get("RUNTIME_DIRECTORY")).failed(message)
    if delay:
        log.info("retrying in %.0fs", delay)
    _wait(delay, f"failed: {message}" + (f" (retrying in {delay:.0f}s)" if delay else ""))
    return code


class Worker:
    """The serving loop: housekeeping between waitress poll passes."""

    def __init__(self, server: FleetServer, settings: Settings, watchdog: Watchdog) -> None:
        self.server = server
        self.settings = settings
        self.watchdog = watchdog
        self.stop_reason: str | None = None
        self.hung = False
        self.deadline = 0.0
        self.drain_started = 0.0
        self.history = StartHistory(os.environ.get("RUNTIME_DIRECTORY"))
        self.next_check = 0.0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # NOTE: only record; the loop acts (a handler may run mid-I/O).
        self.stop_reason = signal.Signals(signum).name

    def run(self) -> int:
        from fleet import systemd

        server, settings = self.server, self.settings
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        if settings.max_requests:
            server.recycle_after(settings.max_requests + random.randint(0, settings.max_requests_jitter))
        server.start_accepting()
        threads = f"{settings.threads} threads" if settings.threads else "requests served inline"
        status = f"serving {' '.join(server.addresses)} with {threads}"
        systemd.notify(READY=1, STATUS=status)
        log.info("ready: %s (pid %d, app %s)", status, os.getpid(), settings.app)
        self.history.settle()
        server.start_relief(self._relief_pass)

        while True:
            server.poll(TICK)
            with server.holding_loop():
                if self.housekeeping():
                    break
        return self.finish()

    def housekeeping(self) -> bool:
        """The pass between polls: act on signals, drain, health; True once it is time to exit.

        Run by whichever thread holds the event loop (``server.holding_loop()``).
        """
        server, settings = self.server, self.settings
        now = time.monotonic()
        draining = server.is_draining()
        if not draining:
            if self.stop_reason:
                self.begin_drain(f"{self.stop_reason} received")
                draining = True
            elif server.recycle_due():
                self.begin_drain(f"recycling after {server.requests_served()} requests (FLEET_MAX_REQUESTS)")
                draining = True
        if now < self.next_check and not draining:
            return False
        self.next_check = now + TICK
        server.resume_inline(now)
        server.sweep(now)
        self.check_health(now)
        if server.is_draining():
            if server.close_idle() == 0:
                log.info("stopped: drained in %.2fs", time.monotonic() - self.drain_started)
                return True
            if now >= self.deadline:
                cut = server.close_all()
                log.warning(
                    "stopped: FLEET_GRACEFUL_TIMEOUT (%gs) passed; closed %d connections "
                    "with requests in flight", settings.graceful_timeout, cut,
                )
                return True
        return False

    def _relief_pass(self) -> None:
        """Housekeeping while the relief thread holds the loop: the loop thread is in a request."""
        if self.housekeeping():
            # NOTE: the loop thread may stay in its request for good (the drain
            # deadline passed), so the thread that decided exits the process.
            os._exit(self.finish())

    def finish(self) -> int:
        self.server.shutdown()
        self.history.settle()  # a clean exit (stop, recycling) is no crash
        return EXIT_OK

    def begin_drain(self, reason: str) -> None:
        from fleet import systemd

        self.server.begin_drain()
        self.drain_started = time.monotonic()
        self.deadline = self.drain_started + self.settings.graceful_timeout
        log.info("draining: %s; no new connections, finishing requests in flight", reason)
        systemd.notify(
            STOPPING=1,
            STATUS=f"draining: {reason}",
            # NOTE: FLEET_GRACEFUL_TIMEOUT may exceed the unit's TimeoutStopSec=.
            EXTEND_TIMEOUT_USEC=int((self.settings.graceful_timeout + 5) * 1e6),
        )

    def check_health(self, now: float) -> None:
        """Detect a hung worker and a worker over its memory limit; ping the watchdog if neither."""
        server, settings = self.server, self.settings
        # NOTE: inline (FLEET_THREADS=0) a stuck request blocks this loop itself,
        # so the watchdog pings stop with no check needed. With threads, a stuck
        # request on the loop thread is stood in for (FleetServer.start_relief):
        # the worker is hung once every pool thread is stuck too.
        if settings.timeout and settings.threads:
            stuck = server.stuck_threads(settings.timeout, now)
            hung = stuck >= settings.threads
            if hung and not self.hung:
                self._report_hang(stuck)
            elif self.hung and not hung:
                log.warning("recovered: threads are free again")
                if not server.is_draining():
                    server.start_accepting()
            self.hung = hung
        if settings.max_rss and not server.is_draining():
            rss = resident_bytes()
            if rss > settings.max_rss:
                self.begin_drain(
                    f"recycling at {rss >> 20} MiB resident, over FLEET_MAX_RSS {settings.max_rss >> 20} MiB"
                )
        self.watchdog.tick(healthy=not self.hung, now=now)

    def _report_hang(self, stuck: int) -> None:
        from fleet import systemd

        message = (
            f"hung: all {stuck} threads stuck on requests for over {self.settings.timeout:g}s "
            "(FLEET_TIMEOUT)"
        )
        # Leave new connections to the siblings while stuck.
        self.server.stop_accepting()
        systemd.notify(STATUS=message)
        if self.watchdog.trigger():
            log.error("%s; stopping watchdog pings and asking systemd to replace this worker", message)
            return
        log.error("%s; no systemd to report to, so exiting", message)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(EXIT_HUNG)


def _pin(instance: str) -> None:
    """Run on the instance's own CPU; a sandbox or cpuset that forbids it only costs locality."""
    from fleet import cpus

    cpu = cpus.cpu_for_instance(instance, cpus.affinity())
    if cpu is None:
        return
    try:
        os.sched_setaffinity(0, {cpu})
        log.debug("pinned to CPU %d", cpu)
    except OSError as exc:
        log.warning("cannot pin to CPU %d (%s); running unpinned (FLEET_CPU_AFFINITY=none silences this)",
                    cpu, exc.strerror)


def resident_bytes() -> int:
    """This process's resident memory, from /proc/self/statm."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    """Run one worker; returns the exit status."""
    try:
        return _main(argv)
    except Exception as exc:
        # NOTE: whatever escapes is a bug or an environment fleet did not foresee;
        # it still goes through the back-off, or systemd restarts it 10 times a second.
        log.critical("unexpected error, exiting:", exc_info=True)
        return _boot_failed(f"unexpected {type(exc).__name__}: {exc}; please report it", EXIT_SOFTWARE)


def _main(argv: list[str] | None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        from fleet.settings import markdown_table

        print(USAGE.format(table=markdown_table()))
        return EXIT_OK
    if args == ["--version"]:
        from fleet import __version__

        print(f"fleet-worker {__version__}")
        return EXIT_OK

    from fleet import log as logs

    instance = os.environ.get("FLEET_INSTANCE") or "0"
    logs.setup("info", instance)
    if args:
        log.error("fleet-worker takes no arguments, got %r; configure it with FLEET_* variables "
                  "(fleet-worker --help lists them)", " ".join(args))
        return EXIT_USAGE
    # NOTE: a stuck or crashing worker prints every thread's stack to the
    # journal, on SIGABRT from the watchdog too.
    faulthandler.enable()
    _pace(StartHistory(os.environ.get("RUNTIME_DIRECTORY")))
    try:
        from fleet import systemd
        from fleet.health import HealthCheck
        from fleet.server import FleetServer, bind
        from fleet.settings import Settings, SettingsError
    except ImportError as exc:
        return _boot_failed(f"fleet cannot start: {exc}; reinstall fleet and its dependencies "
                            "(falcon, waitress, python3-systemd)", EXIT_CONFIG)
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        return _boot_failed(f"{exc} (set in /etc/default/fleet or the unit's Environment=)", EXIT_CONFIG)
    logs.setup(settings.log_level, settings.instance)

    secrets = os.environ.get("FLEET_SECRETS", "").strip()
    if secrets:
        from fleet.apps import secrets_problem

        problem = secrets_problem(secrets)
        if problem:
            return _boot_failed(problem, EXIT_CONFIG)
    if settings.venv:
        from fleet.venv import VenvError, activate

        try:
            activate(settings.venv)
        except VenvError as exc:
            return _boot_failed(str(exc), EXIT_CONFIG)
    try:
        app = load_app(settings.app, settings.venv)
    except AppLoadError as exc:
        return _boot_failed(str(exc), EXIT_APP_LOAD)
    if settings.health_path:
        app = HealthCheck(app, settings.health_path, settings.drain_file, settings.instance)

    try:
        sockets = systemd.inherited_sockets()
    except systemd.InheritedSocketError as exc:
        return _boot_failed(str(exc), EXIT_CONFIG)
    if not sockets:
        try:
            sockets = bind(settings.listen, backlog=1024)
        except OSError as exc:
            return _boot_failed(
                f"cannot listen on {' '.join(settings.listen)}: {exc.strerror}; "
                "set FLEET_LISTEN to a free address, or start fleet through systemd "
                "(systemctl start fleet.socket)", EXIT_CONFIG)
        log.warning("no sockets from systemd: listening on %s myself (FLEET_LISTEN)",
                    " ".join(settings.listen))

    if settings.cpu_affinity == "auto":
        from fleet import apps

        if apps.shares_cpus():
            # NOTE: several apps share the CPUs: a pinned worker could not move
            # to a CPU another app leaves idle, so the scheduler places them all.
            log.debug("other apps share the CPUs (%s): not pinning", apps.APPS_DIR)
        else:
            _pin(settings.instance)

    try:
        # NOTE: systemd's StateDirectory= (the app's, shared by its workers); the first, if several.
        server = FleetServer(app, sockets, settings, os.environ.get("STATE_DIRECTORY", "").split(":")[0])
    except (OSError, ValueError) as exc:
        return _boot_failed(f"cannot serve {len(sockets)} inherited sockets: {exc}; "
                            "check ListenStream= in fleet.socket", EXIT_CONFIG)
    return Worker(server, settings, systemd.Watchdog()).run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
