"""Boot a real systemd in a throwaway Debian 12 or 13 container: e2e tests, ``make try``, the bench.

fleet is a set of systemd units plus a Debian package; the only honest test is a real
systemd as PID 1 installing the real ``.deb``. This module builds a root tree per Debian
release once (``debootstrap``), then boots disposable containers on it with
``systemd-nspawn --volatile=overlay``: every write lands in a tmpfs, so each container
starts clean and nothing survives ``stop()``.

Example::

    with Container.boot(base=ensure_base_tree("trixie")) as c:
        c.apt_install("hello")
        print(c.run("hello").stdout)
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from harness.procs import all_pids, children, cmdline, descendants, process_matches, start_time, status_field

# The Debian releases fleet supports: 12 (oldstable) and 13 (stable).
SUITES = {"bookworm": "Debian 12", "trixie": "Debian 13"}
SUITE = "bookworm"  # NOTE: the default, and the release whose sources the host's apt lists.
VARIANT = "minbase"
INCLUDE = ("systemd", "systemd-sysv", "dbus", "python3", "curl", "ca-certificates")
# NOTE: bump when the tree is prepared differently in a way the inputs below don't show.
RECIPE_REVISION = 2

CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
# NOTE: the host's PATH has pyenv shims first; nothing of the host's environment may leak
# into the container, and host tools (debootstrap, chroot, make) want Debian's python3.
# Proxy variables are the exception: where the host fetches through one, so must apt.
CLEAN_ENV = {
    "PATH": CLEAN_PATH,
    "LANG": "C.UTF-8",
    "HOME": "/root",
    **{name: os.environ[name] for name in PROXY_VARS if name in os.environ},
}

BOOT_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
LOGS_KEPT = 20

HOST_APT = Path("/etc/apt")


class E2EError(RuntimeError):
    """The harness could not do what was asked; the message names the problem and the fix."""


class CommandError(E2EError):
    """A command inside the container failed; carries its full result."""

    def __init__(self, argv: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        self.argv = list(argv)
        self.result = result
        super().__init__(
            f"command in container exited {result.returncode}: {' '.join(self.argv)}\n"
            f"--- stdout ---\n{_tail(result.stdout, 60)}\n--- stderr ---\n{_tail(result.stderr, 60)}"
        )


# --- where things live -----------------------------------------------------------------


def cache_dir() -> Path:
    """Return the cache root: ``$FLEET_E2E_CACHE`` or ``/var/cache/fleet-e2e``."""
    return Path(os.environ.get("FLEET_E2E_CACHE", "/var/cache/fleet-e2e"))


def archives_dir() -> Path:
    """Return the host dir of .debs shared by every container's apt archive cache.

    Sharing it means a package is fetched once per machine, not once per container.
    Containers see it through a private overlay (see ``Container.boot``).
    """
    path = cache_dir() / "apt-archives"
    (path / "partial").mkdir(parents=True, exist_ok=True)
    return path


def skip_reason() -> str | None:
    """Say why the e2e suite cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "booting a container with systemd-nspawn needs root: run this as root (sudo)"
    for tool, package in (
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("nsenter", "util-linux"),
        ("setpriv", "util-linux"),
        ("chroot", "coreutils"),
    ):
        if shutil.which(tool, path=CLEAN_PATH) is None:
            return f"booting a container needs {tool}, which is missing: apt-get install {package}"
    return None


# --- the host's apt configuration ------------------------------------------------------


def host_mirror(suite: str = SUITE) -> str | None:
    """Return the main Debian mirror URI from the host's apt sources, or None.

    NOTE: this machine reaches Debian only through what its own apt config names, so
    debootstrap must use the same URI; None lets debootstrap use its built-in default.
    A release the host does not list is fetched from the mirror of the one it does.
    """
    found = _listed_mirror(suite)
    return found if found is not None or suite == SUITE else _listed_mirror(SUITE)


def _listed_mirror(suite: str) -> str | None:
    for path in sorted((HOST_APT / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = _deb822(stanza)
            suites = fields.get("Suites", "").split()
            if "deb" in fields.get("Types", "").split() and suite in suites:
                uris = fields.get("URIs", "").split()
                if uris:
                    return uris[0]
    legacy = HOST_APT / "sources.list"
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] == "deb":
                rest = [w for w in words[1:] if not w.startswith("[")]
                if len(rest) >= 2 and rest[1] == suite:
                    return rest[0]
    return None


def host_apt_files(suite: str = SUITE) -> dict[str, str]:
    """Return the host's apt files a container of ``suite`` needs: sources and network settings.

    Keys are paths under ``/etc/apt``. Sources are taken whole, with the host's release
    renamed to ``suite`` (``bookworm-updates`` becomes ``trixie-updates``). Of
    ``apt.conf.d``, only files that configure fetching (``Acquire::``: proxy, mirror,
    validity checks) are taken; files with hooks (``Post-Invoke``) call host-only tools
    and are left out. Credentials (``auth.conf.d``) are deliberately never copied.
    """
    files = _host_apt_files()
    if suite == SUITE:
        return files
    return {
        rel: re.sub(rf"\b{SUITE}\b", suite, text) if rel.startswith("sources.list") else text
        for rel, text in files.items()
    }


def _host_apt_files() -> dict[str, str]:
    files: dict[str, str] = {}
    if (HOST_APT / "sources.list").is_file():
        files["sources.list"] = (HOST_APT / "sources.list").read_text()
    for path in sorted((HOST_APT / "sources.list.d").iterdir()):
        if path.suffix in (".sources", ".list") and path.is_file():
            files[f"sources.list.d/{path.name}"] = path.read_text()
    for path in sorted((HOST_APT / "apt.conf.d").iterdir()):
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if "acquire" in text.lower() and "invoke" not in text.lower():
            files[f"apt.conf.d/{path.name}"] = text
    return files


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    return fields


# --- the base tree ---------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the base tree's content; its hash names the cache entry."""

    suite: str
    variant: str
    include: tuple[str, ...]
    mirror: str | None
    apt_files: tuple[tuple[str, str], ...]
    revision: int = RECIPE_REVISION

    @classmethod
    def current(cls, suite: str = SUITE) -> Recipe:
        if suite not in SUITES:
            raise E2EError(f"unknown Debian release {suite!r}; fleet supports {', '.join(SUITES)}")
        return cls(suite, VARIANT, INCLUDE, host_mirror(suite), tuple(sorted(host_apt_files(suite).items())))

    def key(self) -> str:
        blob = json.dumps(
            [self.suite, self.variant, self.include, self.mirror, self.apt_files, self.revision]
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_base_tree(suite: str = SUITE) -> Path:
    """Return the cached root tree of ``suite``, building it first if it is missing.

    Built once per recipe (~45 s), then only read: containers boot it with an overlay.
    The recipe, and so the cache key, includes the release.
    A file lock makes concurrent test runs wait for one build instead of racing, and
    the tree is built in a temp dir renamed into place, so a half-built tree is never used.
    """
    recipe = Recipe.current(suite)
    root = cache_dir()
    tree = root / f"base-{recipe.key()}"
    if (tree / "usr/lib/systemd/systemd").exists():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (tree / "usr/lib/systemd/systemd").exists():
            return tree  # NOTE: another run built it while we waited for the lock.
        for stale in root.glob("base-*.tmp"):
            _remove_tree(stale)  # NOTE: we hold the lock, so any temp tree is a dead build's.
        _build(recipe, tree)
        _prune_trees(keep=tree)
    return tree


def _build(recipe: Recipe, tree: Path) -> None:
    tmp = tree.with_name(tree.name + ".tmp")
    log = tree.with_name(tree.name + ".log")
    started = time.monotonic()
    _say(f"building the {recipe.suite} base tree in {tree} (about 45 s, once) ...")
    argv = [
        "debootstrap",
        f"--variant={recipe.variant}",
        f"--include={','.join(recipe.include)}",
        # NOTE: reusing the shared archive cache cuts a rebuild from ~45 s to ~38 s.
        f"--cache-dir={archives_dir().resolve()}",
        recipe.suite,
        str(tmp),
    ]
    if recipe.mirror:
        argv.append(recipe.mirror)
    try:
        with open(log, "w") as out:
            _host(argv, out, "debootstrap failed")
            _prepare_tree(tmp, recipe)
            _host(["chroot", str(tmp), "apt-get", "update"], out, "apt-get update in the tree failed")
            _seed_archives(tmp)
    except E2EError as error:
        _remove_tree(tmp)
        raise E2EError(f"{error}\n--- {log} ---\n{_tail(log.read_text())}") from None
    except BaseException:
        _remove_tree(tmp)
        raise
    (tmp / "etc/fleet-e2e-recipe.json").write_text(json.dumps(asdict(recipe), indent=1) + "\n")
    tmp.rename(tree)
    _say(f"built the base tree in {time.monotonic() - started:.1f} s")


def _prepare_tree(tree: Path, recipe: Recipe) -> None:
    """Make apt inside the container fetch exactly the way the host's apt does."""
    apt = tree / "etc/apt"
    # NOTE: debootstrap wrote a one-line sources.list; the host's own sources replace it,
    # or apt would warn about every entry being configured twice.
    (apt / "sources.list").unlink(missing_ok=True)
    for rel, text in recipe.apt_files:
        target = apt / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    for keyring in re.findall(r"^Signed-By:\s*(/\S+)", "".join(t for _, t in recipe.apt_files), re.M):
        inside = tree / keyring.lstrip("/")
        if not inside.exists() and Path(keyring).is_file():
            inside.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(keyring, inside)
    # NOTE: without /etc/hostname the container is named after its machine name, not
    # after the host that built the tree.
    (tree / "etc/hostname").unlink(missing_ok=True)
    # NOTE: keep every fetched .deb: the archive dir is a shared cache across containers.
    (apt / "apt.conf.d/99fleet-e2e").write_text(
        'APT::Keep-Downloaded-Packages "true";\nBinary::apt::APT::Keep-Downloaded-Packages "true";\n'
    )


def _running_nspawn_values(option: str) -> set[str]:
    """Return the values of ``--option=`` of every running systemd-nspawn, whoever started it."""
    prefix = f"--{option}="
    values = set()
    for pid in all_pids():
        args = cmdline(pid)
        if any(arg.endswith("systemd-nspawn") for arg in args):
            values |= {a.removeprefix(prefix) for a in args if a.startswith(prefix)}
    return values


def _tree_suite(tree: Path) -> str | None:
    """Return the release a built base tree holds, from the recipe written into it."""
    try:
        suite: str = json.loads((tree / "etc/fleet-e2e-recipe.json").read_text())["suite"]
    except (OSError, ValueError, KeyError):
        return None
    return suite


def _prune_trees(keep: Path) -> None:
    """Delete base trees of older recipes of the same release that no running container uses."""
    in_use = _running_nspawn_values("directory")
    suite = _tree_suite(keep)
    for tree in keep.parent.glob("base-*"):
        if tree.is_dir() and tree != keep and not tree.name.endswith(".tmp") and _tree_suite(tree) == suite:
            if str(tree) not in in_use:
                _say(f"removing the base tree of an older recipe: {tree}")
                _remove_tree(tree)
                tree.with_name(tree.name + ".log").unlink(missing_ok=True)


def _upper_dir(machine: str) -> Path:
    """Return where a container's own downloads go (the upper dir of its archive overlay)."""
    return cache_dir() / "uppers" / machine


def _remove_upper(machine: str) -> None:
    """Delete a stopped container's upper dir, and the work dir nspawn made beside it.

    NOTE: nspawn removes the work dir itself on a clean shutdown, not after SIGKILL.
    """
    upper = _upper_dir(machine)
    for path in (upper, *upper.parent.glob(f".#{machine}*")):
        shutil.rmtree(path, ignore_errors=True)


def _prune_uppers() -> None:
    """Delete the upper dirs of containers that are gone (killed before they could clean up)."""
    running = _running_nspawn_values("machine")
    with contextlib.suppress(FileNotFoundError):
        for upper in (cache_dir() / "uppers").iterdir():
            # NOTE: a minute's grace spares the upper of a container booting right now.
            young = time.time() - upper.stat().st_mtime < 60
            if not upper.name.startswith(".#") and upper.name not in running and not young:
                _remove_upper(upper.name)


def _seed_archives(tree: Path) -> None:
    """Move debootstrap's downloads to the shared archive cache, which hides them anyway.

    NOTE: ``--cache-dir`` already put most there; this catches what it left in the tree.
    """
    shared = archives_dir()
    for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
        if (shared / deb.name).exists():
            deb.unlink()
        else:
            shutil.move(deb, shared / deb.name)


def _box_pid(host_pid: int) -> int | None:
    """The pid a host process has inside its container (its innermost pid namespace); None if none."""
    nspid = status_field(host_pid, "NSpid").split()
    return int(nspid[-1]) if len(nspid) > 1 else None


def _host(argv: Sequence[str], out: IO[str], what: str) -> None:
    try:
        subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=CLEAN_ENV, check=True)
    except subprocess.CalledProcessError as error:
        raise E2EError(f"{what} (exit {error.returncode}): {' '.join(argv)}") from None


def _remove_tree(path: Path) -> None:
    """Delete a (possibly half-built) root tree without descending into mounts in it."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    mounts = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if (line.split()[4] + "/").startswith(prefix)
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], env=CLEAN_ENV, check=False)
    shutil.rmtree(path)


# --- containers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Bind:
    """A host path made visible inside the container."""

    host: Path
    inside: str
    read_only: bool = False

    def option(self) -> str:
        flag = "--bind-ro" if self.read_only else "--bind"
        return f"{flag}={self.host}:{self.inside}"


class Container:
    """A booted, throwaway systemd container; stop it (or leave the ``with``) to discard it.

    ``leader`` is the container's PID 1 as the host sees it; commands enter its
    namespaces with ``nsenter``, which needs neither machined nor a host systemd.
    """

    def __init__(
        self,
        machine: str,
        nspawn_pid: int,
        leader: int,
        log_path: Path,
        proc: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.machine = machine
        self.nspawn_pid = nspawn_pid
        self.leader = leader
        self.log_path = log_path
        self.boot_seconds = 0.0
        self._proc = proc
        self._nspawn_started = start_time(nspawn_pid)
        self._leader_started = start_time(leader) if leader else None
        self._stopped = False

    @classmethod
    def boot(
        cls,
        name_prefix: str = "fleet-e2e",
        *,
        base: Path | None = None,
        binds: Sequence[Bind] = (),
        log_path: Path | None = None,
        detach: bool = False,
        timeout: float = BOOT_TIMEOUT,
    ) -> Container:
        """Boot a fresh container and return once systemd reports running or degraded.

        ``detach=True`` leaves it running after this process exits (``make try``);
        otherwise it is stopped at exit even if the caller forgets or crashes.
        """
        base = base or ensure_base_tree()
        machine = f"{name_prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        if log_path is None:
            logs = cache_dir() / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            _prune_logs(logs)
            log_path = logs / f"{machine}.log"
        _prune_uppers()
        upper = _upper_dir(machine)
        upper.mkdir(parents=True)
        # NOTE: atexit does not run when the test process is killed; a parent-death signal
        # still shuts the container down then. Not for detached ones, which outlive us.
        keeper = [] if detach else ["setpriv", "--pdeathsig=TERM", "--"]
        argv = [
            *keeper,
            "systemd-nspawn",
            f"--directory={base}",
            "--volatile=overlay",
            "--boot",
            # NOTE: there is no systemd on the host to register with or to own a scope.
            "--register=no",
            "--keep-unit",
            f"--machine={machine}",
            # NOTE: read-only gives the boot log on stdout without needing a tty.
            "--console=read-only",
            # NOTE: an overlay, not a bind: apt holds archives/lock for a whole install and
            # does not wait for it, so containers sharing one dir fail each other's installs.
            # Each writes to its own upper dir; apt_install() publishes new .debs back.
            f"--overlay={archives_dir()}:{upper}:/var/cache/apt/archives",
            *(bind.option() for bind in binds),
        ]
        started = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=CLEAN_ENV,
                start_new_session=True,
            )
        container = cls(machine, proc.pid, 0, log_path, proc)
        if not detach:
            atexit.register(container.stop)
        try:
            container.leader = container._find_leader(started + timeout)
            container._leader_started = start_time(container.leader)
            container._wait_running(started + timeout)
        except BaseException:
            container.stop()
            raise
        container.boot_seconds = time.monotonic() - started
        _say(f"booted {machine} in {container.boot_seconds:.2f} s (PID 1 is host pid {container.leader})")
        return container

    @classmethod
    def adopt(
        cls, machine: str, nspawn_pid: int, nspawn_started: int, leader: int, log_path: Path
    ) -> Container:
        """Take over a detached container started by another process (``make try-stop``).

        ``nspawn_started`` is the start time recorded at boot: a reused pid won't match it,
        so a stale record can never make us signal an unrelated process.
        """
        container = cls(machine, nspawn_pid, 0, log_path)
        container._nspawn_started = nspawn_started
        if container.alive():
            container.leader = leader
            container._leader_started = start_time(leader)
        return container

    @property
    def nspawn_started(self) -> int | None:
        """Return the start time of the nspawn process (see ``process_matches``)."""
        return self._nspawn_started

    def __enter__(self) -> Container:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- lifecycle ------------------------------------------------------------------

    def alive(self) -> bool:
        """Tell whether this container's systemd-nspawn process is still running."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._nspawn_started is not None and process_matches(self.nspawn_pid, self._nspawn_started)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut the container down and make sure no process of it is left; idempotent.

        SIGTERM makes nspawn ask the container's systemd to halt; if that takes longer
        than ``timeout`` seconds, PID 1 of the container (and so its whole pid namespace)
        and nspawn's process group are killed. Everything is addressed by PID.
        """
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            self._terminate(timeout)
        finally:
            if not self.alive():
                _remove_upper(self.machine)

    def _terminate(self, timeout: float) -> None:
        if not self.alive():
            self._reap(0)
            return
        os.kill(self.nspawn_pid, signal.SIGTERM)
        if self._reap(timeout):
            return
        _say(f"{self.machine} did not shut down in {timeout:g} s: killing it")
        # NOTE: killing a pid namespace's init kills everything in it; nspawn, its parent,
        # then exits by itself, and its process group goes too.
        if self._leader_running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.nspawn_pid, signal.SIGKILL)
        if not self._reap(5.0):
            raise E2EError(
                f"container {self.machine} survived SIGKILL: check systemd-nspawn pid "
                f"{self.nspawn_pid} and PID 1 (host pid {self.leader}) with ps"
            )

    def _leader_running(self) -> bool:
        started = self._leader_started
        return started is not None and process_matches(self.leader, started)

    def _reap(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=0.05)
            if not self.alive() and not self._leader_running():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _find_leader(self, deadline: float) -> int:
        """Return the host pid of the container's PID 1: nspawn's child that is pid 1 inside.

        NOTE: nspawn briefly has an intermediate child; the right one shows ``NSpid: N 1``.
        """
        while time.monotonic() < deadline:
            self._check_nspawn()
            for child in children(self.nspawn_pid):
                if _box_pid(child) == 1:
                    return child
            time.sleep(0.02)
        raise self._boot_error("its PID 1 did not appear")

    def host_pid(self, box_pid: int) -> int:
        """Return the host pid of the container's process ``box_pid``, to signal or inspect from here."""
        for pid in descendants(self.leader):
            if _box_pid(pid) == box_pid:
                return pid
        raise E2EError(f"no process {box_pid} in container {self.machine}: it has exited")

    def _wait_running(self, deadline: float) -> None:
        """Poll ``systemctl is-system-running`` until the boot has finished.

        NOTE: ``--wait`` alone is not enough: before the bus is up systemctl fails at once.
        """
        state = ""
        while time.monotonic() < deadline:
            self._check_nspawn()
            result = self.run("systemctl", "is-system-running", check=False, timeout=10)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.1)
        raise self._boot_error(f"systemd did not finish booting (last state: {state or 'no bus'})")

    def _check_nspawn(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise self._boot_error(f"systemd-nspawn exited with {self._proc.returncode}")

    def _boot_error(self, what: str) -> E2EError:
        return E2EError(
            f"container {self.machine} failed to boot: {what}; see {self.log_path}\n"
            f"--- last lines of the nspawn log ---\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """Return the end of nspawn's log (the container's console), for failure messages."""
        try:
            return _tail(self.log_path.read_text(errors="replace"), lines)
        except OSError as error:
            return f"(no log: {error})"

    # -- commands -------------------------------------------------------------------

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container, in a clean environment, and return its result.

        Example: ``c.run("systemctl", "is-active", "fleet.socket").stdout == "active\\n"``
        """
        try:
            result = subprocess.run(
                self._enter(argv, env),
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=CLEAN_ENV,
            )
        except subprocess.TimeoutExpired:
            raise E2EError(
                f"command in container {self.machine} did not finish in {timeout:g} s: "
                f"{' '.join(argv)}; pass a longer timeout= if it is meant to take that long"
            ) from None
        if check and result.returncode != 0:
            raise CommandError(argv, result)
        return result

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside the container."""
        return self.run("sh", "-c", script, check=check, timeout=timeout, input=input)

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Create or replace a file inside the container, with its parent directories."""
        self.run(
            "sh",
            "-c",
            'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
            "sh",
            path,
            f"{mode:o}",
            input=text,
        )

    def copy_in(self, host_path: Path, path: str) -> None:
        """Copy a (binary) host file into the container."""
        argv = ("sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", path)
        result = subprocess.run(
            self._enter(argv, None),
            input=host_path.read_bytes(),
            capture_output=True,
            env=CLEAN_ENV,
            timeout=60,
        )
        if result.returncode != 0:
            decoded = subprocess.CompletedProcess(
                argv, result.returncode, result.stdout.decode(), result.stderr.decode()
            )
            raise CommandError(argv, decoded)

    def install_deb(self, host_path: Path, *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Install a host .deb inside with apt, which fetches its dependencies.

        The lists in the base tree date from its build; if the mirror has moved on since,
        apt 404s, so the install is retried once after ``apt-get update``.
        """
        inside = f"/var/tmp/{host_path.name}"
        self.copy_in(host_path, inside)
        return self.apt_install(inside, timeout=timeout)

    def apt_install(
        self, *packages: str, recommends: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``apt-get install -y`` packages (names or /paths to .debs) non-interactively.

        Recommends are installed by default, as on a user's machine.
        """
        no_recommends = () if recommends else ("--no-install-recommends",)
        argv = ("apt-get", "install", "-y", *no_recommends, *packages)
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        try:
            result = self.run(*argv, check=False, timeout=timeout, env=env)
            if result.returncode != 0 and re.search(r"404|Unable to fetch|Unable to locate", result.stderr):
                self.run("apt-get", "update", timeout=timeout, env=env)
                result = self.run(*argv, check=False, timeout=timeout, env=env)
        finally:
            self.publish_archives()
        if result.returncode != 0:
            raise CommandError(argv, result)
        return result

    def publish_archives(self) -> None:
        """Copy .debs this container downloaded into the shared cache, for the next ones.

        Each file appears there whole or not at all (written aside, then renamed).
        """
        shared = archives_dir()
        inside = Path(f"/proc/{self.leader}/root/var/cache/apt/archives")
        for deb in inside.glob("*.deb"):
            target = shared / deb.name
            if target.exists():
                continue
            partial = shared / "partial" / f".{deb.name}.{os.getpid()}"
            with contextlib.suppress(OSError):
                shutil.copyfile(deb, partial)
                os.rename(partial, target)
            partial.unlink(missing_ok=True)

    def nproc(self) -> int:
        """Return how many CPUs processes inside the container may use."""
        return int(self.run("nproc").stdout)

    def _enter(self, argv: Sequence[str], env: dict[str, str] | None) -> list[str]:
        if not self.leader:
            raise E2EError(f"container {self.machine} has no PID 1 yet")
        inner = {**CLEAN_ENV, "TERM": "dumb", **(env or {})}
        return [
            "nsenter", f"--target={self.leader}", "--all",
            "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in inner.items()), *argv,
        ]  # fmt: skip


# --- small helpers ---------------------------------------------------------------------


def newest_deb(dist: Path) -> Path | None:
    """Return the most recently built ``fleet_*_all.deb`` in ``dist``, if any."""
    debs = sorted(dist.glob("fleet_*_all.deb"), key=lambda p: p.stat().st_mtime)
    return debs[-1] if debs else None


def _prune_logs(logs: Path) -> None:
    old = sorted(logs.glob("*.log"), key=lambda p: p.stat().st_mtime)[:-LOGS_KEPT]
    for path in old:
        path.unlink(missing_ok=True)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _say(message: str) -> None:
    print(f"fleet-e2e: {message}", file=sys.stderr, flush=True)
