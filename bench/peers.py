"""The servers compared: how each is started, which processes are its workers, how it is stopped.

Every Python peer serves the same WSGI callable from ``bench/apps.py`` (``hello``,
``sleep20``, ``django``...; :meth:`Peer.serve` switches it) on 127.0.0.1 with one worker
per usable CPU and, where the server has threads, fleet's default of 4 per worker; Node
serves Hello World only. Every answer names the worker that answered in a header, so
the fault runs can follow the replacement of a killed worker. The PyPI peers (granian,
uWSGI, Django) come from the bench's own venv, ``build/bench-venv`` (:func:`ensure_venv`).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import procs
from harness.container import Bind, Container, newest_deb
from harness.fleet import set_port
from harness.http import get
from harness.net import free_port, listen
from harness.worker import fd3_launch

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = REPO / "bench" / "node"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: it has falcon, waitress, systemd and gunicorn
VENV = REPO / "build" / "bench-venv"
# NOTE: the venv sees Debian's site-packages too (--system-site-packages), so every
# Python peer runs the same interpreter with the same falcon, waitress and gunicorn,
# plus what only PyPI has. Pinned, so a run is repeatable.
REQUIREMENTS = REPO / "bench" / "requirements.txt"
PYTHON = str(VENV / "bin" / "python")


def python() -> str:
    """The venv's interpreter; Debian's own before the venv exists (fleet-bare's experiments)."""
    return PYTHON if Path(PYTHON).exists() else SYSTEM_PYTHON

CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
APP_ROOT = "/opt/fleet-bench"  # where the fleet container sees bench/ and the venv's packages
THREADS = 4  # per worker, where a peer has threads: fleet's default FLEET_THREADS


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0))


def base_env(**extra: str) -> dict[str, str]:
    """A clean environment: Debian's PATH, the repo importable, no systemd or FLEET_ leftovers."""
    env = {
        "PATH": CLEAN_PATH,
        "LANG": "C.UTF-8",
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": str(REPO),
    }
    env.update(extra)
    return env


def ensure_venv() -> None:
    """Create build/bench-venv with granian, pyuwsgi and Django from PyPI, once.

    ``packaging/install-deps --bench`` does the same; this makes ``bench/run.py`` work
    on its own too.
    """
    stamp = VENV / ".requirements"
    wanted = REQUIREMENTS.read_text()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    if not (VENV / "bin" / "python").exists():
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(VENV)], check=True)
    subprocess.run(
        [PYTHON, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(wanted)


def site_packages() -> Path:
    """The bench venv's own site-packages (Django, granian, pyuwsgi)."""
    found = sorted((VENV / "lib").glob("python3*/site-packages"))
    if not found:
        raise PeerError(f"no site-packages in {VENV}: run packaging/install-deps --bench")
    return found[0]


def make_django_db() -> None:
    """(Re)create the Django app's read-only SQLite database before servers open it."""
    argv = [PYTHON, "-m", "bench.djangosite.makedb"]
    subprocess.run(argv, check=True, env=base_env(), cwd=REPO, stdout=subprocess.DEVNULL)


class PeerError(RuntimeError):
    """A peer could not be started or checked; the message says why."""


@dataclass
class Peer:
    """One server under test. Subclasses say how to start it and which pids are its workers."""

    key: str
    label: str
    log_dir: Path
    port: int = 0
    workers_wanted: int = field(default_factory=usable_cpus)
    #: response header naming the worker that answered
    ident_header: str = "x-worker-pid"
    #: True when a replacement answers with its victim's identity (fleet's instance number)
    reuses_ident: bool = False
    #: the bench/apps.py callable served
    app: str = "hello"
    #: the apps this peer can serve (None: every one)
    apps: tuple[str, ...] | None = None
    #: a command each of its processes runs under (valgrind: bench/experiments/instructions.py)
    under: tuple[str, ...] = ()
    #: seconds start() waits for it to serve
    start_timeout: float = 30.0

    def start(self) -> None:
        raise NotImplementedError

    def can_serve(self, app: str) -> bool:
        return self.apps is None or app in self.apps

    def serve(self, app: str) -> None:
        """Serve ``app`` from now on: by default a restart with it."""
        if app == self.app:
            return
        self.stop()
        self.app = app
        self.start()

    def target(self) -> str:
        return f"bench.apps:{self.app}"

    def serves_app(self) -> bool:
        """Does a new connection reach a worker serving ``self.app``?"""
        status, _, body = get(self.port, "/_bench/app", timeout=5.0)
        return status == 200 and body == self.app.encode()

    def pids(self) -> list[int]:
        """Every process of the server (master included): its CPU time is the server's cost."""
        raise NotImplementedError

    def workers(self) -> list[int]:
        """The processes that serve requests (no master): kill -9 picks one, RSS sums them."""
        return self.pids()

    def stop(self) -> None:
        raise NotImplementedError

    def ident(self, pid: int) -> str:
        """The header value a worker answers with."""
        return str(pid)

    def version(self) -> str:
        return ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every worker exists and the port answers with ``self.app``."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                if self.serves_app() and len(self.workers()) >= self.workers_wanted:
                    time.sleep(0.3)  # NOTE: the last worker may still be importing the app.
                    return
                last = f"not serving {self.app}, {len(self.workers())} workers"
            except (OSError, http.client.HTTPException) as exc:
                last = str(exc)
            time.sleep(0.05)
        raise PeerError(
            f"{self.label} did not serve on 127.0.0.1:{self.port} within {timeout:g}s "
            f"({last}); see {self.log_dir}/{self.key}.log"
        )


@dataclass
class LaunchedPeer(Peer):
    """A peer that is one process tree started by the bench."""

    launched: procs.Launched | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return base_env()

    def start(self) -> None:
        self.port = self.port or free_port()
        # NOTE: a session of its own, as a systemd service has: the scheduler's
        # autogroups then share the CPUs between this server, wrk and the machine's other
        # work alike for every peer, fleet's workers under systemd included.
        self.launched = procs.Launched(
            [*self.under, *self.argv()], env=self.env(), log=self.log_dir / f"{self.key}.log", cwd=REPO,
            session=True,
        )
        self.wait_ready(self.start_timeout)

    def pids(self) -> list[int]:
        return self.launched.tree() if self.launched else []

    def workers(self) -> list[int]:
        return self.pids()[1:]

    def stop(self) -> None:
        if self.launched:
            self.launched.stop()
            self.launched = None


@dataclass
class NodeCluster(LaunchedPeer):
    """Node's cluster module + Express: the master forks os.cpus().length workers."""

    apps: tuple[str, ...] | None = ("hello",)

    def serves_app(self) -> bool:
        status, _, body = get(self.port, timeout=5.0)
        return status == 200 and body == b"Hello World!"

    def argv(self) -> list[str]:
        return ["node", str(NODE_DIR / "server.js")]

    def env(self) -> dict[str, str]:
        return base_env(PORT=str(self.port), NODE_ENV="production")

    def start(self) -> None:
        ensure_node_modules()
        super().start()

    def version(self) -> str:
        return f"node {_output(['node', '--version'])}, express {express_version()}"


def ensure_node_modules() -> None:
    """Install Express exactly as package-lock.json pins it (npm ci), once."""
    if (NODE_DIR / "node_modules" / "express").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise PeerError("the Node peer needs npm: apt-get install nodejs npm")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, stdout=subprocess.DEVNULL
    )


def express_version() -> str:
    import json

    with contextlib.suppress(OSError):
        return str(json.loads((NODE_DIR / "node_modules/express/package.json").read_text())["version"])
    return "?"


@dataclass
class Gunicorn(LaunchedPeer):
    """gunicorn with one worker per CPU (sync, or gthread with ``threads``), bench.apps:<app>."""

    worker_class: str = "sync"
    threads: int = THREADS

    def argv(self) -> list[str]:
        argv = [
            python(),
            "-m",
            "gunicorn",
            "--workers",
            str(self.workers_wanted),
            "--worker-class",
            self.worker_class,
            "--bind",
            f"127.0.0.1:{self.port}",
        ]
        if self.worker_class == "gthread":
            argv += ["--threads", str(self.threads)]
        return [*argv, self.target()]

    def version(self) -> str:
        return f"gunicorn {_py('import gunicorn; print(gunicorn.__version__)')}"


@dataclass
class OneWaitress(LaunchedPeer):
    """One waitress process (4 threads, its default), the per-core baseline."""

    threads: int = THREADS
    workers_wanted: int = 1

    def argv(self) -> list[str]:
        # NOTE: waitress warns "Task queue depth" on nearly every request once its
        # threads are busy; silenced here as fleet silences it, or logging is measured.
        code = (
            "import logging, sys; logging.basicConfig();"
            "logging.getLogger('waitress.queue').setLevel(logging.ERROR);"
            "from waitress import serve; from pkgutil import resolve_name;"
            "serve(resolve_name(sys.argv[3]), listen=sys.argv[1], threads=int(sys.argv[2]))"
        )
        return [python(), "-c", code, f"127.0.0.1:{self.port}", str(self.threads), self.target()]

    def workers(self) -> list[int]:
        return self.pids()[:1]


@dataclass
class Granian(LaunchedPeer):
    """granian (Rust, from PyPI): ``--interface wsgi``, one worker per CPU, 4 blocking threads each."""

    threads: int = THREADS

    def argv(self) -> list[str]:
        return [
            str(VENV / "bin" / "granian"),
            "--interface",
            "wsgi",
            "--workers",
            str(self.workers_wanted),
            "--blocking-threads",
            str(self.threads),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-ws",
            self.target(),
        ]

    def env(self) -> dict[str, str]:
        return base_env(PATH=f"{VENV / 'bin'}:{CLEAN_PATH}")

    def version(self) -> str:
        return f"granian {_output([str(VENV / 'bin' / 'granian'), '--version']).split()[-1]}"


@dataclass
class UWSGI(LaunchedPeer):
    """uWSGI (pyuwsgi from PyPI): a master and one process per CPU, 4 threads each, HTTP/1.1."""

    threads: int = THREADS

    def argv(self) -> list[str]:
        return [
            str(VENV / "bin" / "uwsgi"),
            "--http11-socket",
            f"127.0.0.1:{self.port}",
            "--master",
            "--processes",
            str(self.workers_wanted),
            "--threads",
            str(self.threads),
            "--module",
            self.target(),
            "--need-app",
            "--disable-logging",
            "--die-on-term",
        ]

    def env(self) -> dict[str, str]:
        return base_env(PATH=f"{VENV / 'bin'}:{CLEAN_PATH}")

    def version(self) -> str:
        return f"uWSGI {_output([str(VENV / 'bin' / 'uwsgi'), '--version'])} (pyuwsgi)"


@dataclass
class FleetBare(Peer):
    """fleet by hand: N fleet-worker processes sharing one listening socket passed as fd 3.

    The bench plays systemd's part: it holds the socket (Backlog=4096, NoDelay=yes,
    DeferAcceptSec=5 as in fleet.socket), starts each worker with LISTEN_FDS=1 and its own LISTEN_PID, and
    restarts a worker that dies at once (the unit's RestartSec=0).
    """

    ident_header: str = "x-fleet-worker"
    reuses_ident: bool = True
    fleet_env: dict[str, str] = field(default_factory=dict)
    module: str = "fleet.worker"
    restart_sec: float = 0.0
    sock: socket.socket | None = None
    slots: dict[int, procs.Launched] = field(default_factory=dict)
    _watch: threading.Thread | None = None
    _stopping: bool = False

    def start(self) -> None:
        self.port = self.port or free_port()
        self.sock = listen(self.port, 4096, nodelay=True)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)  # DeferAcceptSec=5
        self._stopping = False
        for instance in range(1, self.workers_wanted + 1):
            self.slots[instance] = self._spawn(instance)
        self._watch = threading.Thread(target=self._respawn, name=f"{self.key}-respawn", daemon=True)
        self._watch.start()
        self.wait_ready(self.start_timeout)

    def _spawn(self, instance: int) -> procs.Launched:
        assert self.sock is not None
        launch = fd3_launch([self.sock.fileno()], python(), self.module)
        env = base_env(
            LISTEN_FDS="1", FLEET_INSTANCE=str(instance), FLEET_APP=self.target(), **self.fleet_env
        )
        return procs.Launched(
            [*self.under, *launch.argv],
            env=env,
            log=self.log_dir / f"{self.key}.log",
            pass_fds=launch.pass_fds,
            preexec_fn=launch.preexec_fn,
            cwd=REPO,
            session=True,  # NOTE: as each fleet-worker@N.service is (see LaunchedPeer.start)
        )

    def _respawn(self) -> None:
        while not self._stopping:
            for instance, launched in list(self.slots.items()):
                if not launched.running() and not self._stopping:
                    launched.stop()
                    time.sleep(self.restart_sec)
                    if not self._stopping:
                        self.slots[instance] = self._spawn(instance)
            time.sleep(0.005)

    def pids(self) -> list[int]:
        return [launched.pid for launched in self.slots.values() if launched.running()]

    def ident(self, pid: int) -> str:
        for instance, launched in self.slots.items():
            if launched.pid == pid:
                return str(instance)
        return "?"

    def stop(self) -> None:
        self._stopping = True
        if self._watch:
            self._watch.join(2)
        for launched in self.slots.values():
            launched.stop()
        self.slots.clear()
        if self.sock:
            self.sock.close()
            self.sock = None

    def version(self) -> str:
        return f"fleet {_py('import fleet; print(fleet.__version__)')}"


@dataclass
class FleetSystemd(Peer):
    """fleet as users run it: the .deb installed under a real systemd, in a throwaway container.

    The container shares the host's network, so the socket is on the host's loopback;
    its processes are the host's too, so CPU time and memory are read from the host's
    /proc like every other peer's. A socket drop-in sets the port before the install.
    """

    ident_header: str = "x-fleet-worker"
    reuses_ident: bool = True
    deb: Path | None = None
    fleet_env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    container: Container | None = None

    def start(self) -> None:
        deb = self.deb or newest_deb(REPO / "dist")
        if deb is None or not deb.exists():
            raise PeerError("no dist/fleet_*_all.deb to install: run make deb, or pass --deb PATH")
        self.deb = deb
        self.port = self.port or free_port()
        # NOTE: the bench's apps and the venv's site-packages (Django), read-only, as an
        # app deployed beside the package would be; not the repo root, whose fleet/
        # would shadow the installed package.
        binds = [Bind(REPO / "bench", f"{APP_ROOT}/bench", read_only=True)]
        if VENV.exists():
            binds.append(Bind(site_packages(), f"{APP_ROOT}/site-packages", read_only=True))
        box = Container.boot("fleet-bench", binds=binds, log_path=self.log_dir / f"{self.key}-console.log")
        self.container = box
        set_port(box, self.port)
        box.install_deb(deb)
        box.run("cp", "/etc/default/fleet", "/etc/default/fleet.shipped")
        self.workers_wanted = box.nproc()
        self._configure()

    def _configure(self) -> None:
        """Write /etc/default/fleet as a user would (the shipped file + our lines), restart."""
        box = self._box()
        settings = {
            "FLEET_APP": self.target(),
            "PYTHONPATH": f"{APP_ROOT}:{APP_ROOT}/site-packages",
            **self.fleet_env,
        }
        lines = "".join(f"{k}={v}\n" for k, v in settings.items())
        box.sh(f"cat /etc/default/fleet.shipped - > /etc/default/fleet <<'EOF'\n{lines}EOF")
        box.run("fleetctl", "restart", timeout=180)
        self.wait_ready(timeout=60)

    def serve(self, app: str) -> None:
        """Point FLEET_APP at ``app``, then ``fleetctl restart``: the container stays up."""
        if app == self.app:
            return
        self.app = app
        self._configure()

    def _box(self) -> Container:
        if self.container is None:
            raise PeerError("the fleet container is not running")
        return self.container

    def pids(self) -> list[int]:
        if self.container is None:
            return []
        leader = self._box().leader
        return [pid for pid in procs.descendants(leader) if "/usr/bin/fleet-worker" in procs.cmdline(pid)]

    def ident(self, pid: int) -> str:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return "?"
        for item in environ:
            if item.startswith(b"FLEET_INSTANCE="):
                return item.split(b"=", 1)[1].decode()
        return "?"

    def cold_start(self) -> float:
        """Stop the workers and the socket, start only fleet.socket; time the first request (ms)."""
        box = self._box()
        box.run("systemctl", "stop", "fleet.service", "fleet.socket")
        deadline = time.monotonic() + 30
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        box.run("systemctl", "start", "fleet.socket")
        started = time.monotonic()
        status, _, body = get(self.port, timeout=20)
        took = (time.monotonic() - started) * 1000
        if status != 200:
            raise PeerError(f"the first request after starting fleet.socket got {status} {body[:60]!r}")
        self.wait_ready(timeout=30)
        return took

    def run(self, *argv: str) -> str:
        return str(self._box().run(*argv).stdout)

    def stop(self) -> None:
        if self.container is not None:
            self._box().stop()
            self.container = None

    def version(self) -> str:
        name = self.deb.name if self.deb else "?"
        if self.container is None:
            return name
        systemd = self.run("systemctl", "--version").splitlines()[0]
        return f"{name}; {systemd}"


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout.strip()
    except OSError:
        return "?"


def _py(code: str) -> str:
    return _output([PYTHON, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); {code}"])


def python_versions() -> dict[str, str]:
    """Exact versions of the Python side, as Debian's python3 sees them."""
    code = (
        "import sys, falcon, waitress, importlib.metadata as m;"
        "print(sys.version.split()[0], falcon.__version__, m.version('waitress'))"
    )
    py, falcon, waitress = (_output([PYTHON, "-c", code]).split() + ["?", "?", "?"])[:3]
    return {"python": py, "falcon": falcon, "waitress": waitress}


if __name__ == "__main__":  # pragma: no cover - a manual smoke test: python3 -m bench.peers
    logs = Path("/tmp")
    for peer in (NodeCluster("node", "Node", logs), FleetBare("fleet-bare", "fleet (bare)", logs)):
        try:
            peer.start()
            print(peer.label, peer.port, peer.pids(), get(peer.port, timeout=2.0)[1].get(peer.ident_header))
        finally:
            peer.stop()
    sys.exit(0)
