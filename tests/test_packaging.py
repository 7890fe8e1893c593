"""The Debian package as built: version, contents, conffile, man pages, maintainer scripts, lintian.

These build the real ``.deb`` (packaging/build-deb, about 20 s; reused while it is newer
than every source) and read it with ``dpkg-deb``; what the package does once installed is
tested in a real systemd by ``tests/e2e/test_package.py``.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import re
import shutil
import subprocess
import tarfile
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

import fleet
from fleet.ctl.cli import VERBS
from fleet.settings import SETTINGS, defaults_file

pytestmark = pytest.mark.source_tree

ROOT = Path(__file__).resolve().parent.parent
DEBIAN = ROOT / "packaging" / "debian"
MAN = ROOT / "packaging" / "man"
# NOTE: Debian's tools only; a pyenv python3 first in PATH breaks pybuild (FACTS.md).
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}


def pyproject_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        version: str = tomllib.load(f)["project"]["version"]
    return version


def changelog_version() -> str:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    m = re.match(r"fleet \(([^)]+)\) ", first)
    assert m, f"packaging/debian/changelog does not start with 'fleet (VERSION) ...': {first!r}"
    return m.group(1)


def load_render() -> ModuleType:
    """Import packaging/man/render.py, which is a build script, not part of the fleet package."""
    spec = importlib.util.spec_from_file_location("fleet_man_render", MAN / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def untroff(text: str) -> str:
    text = text.removeprefix("\\&")
    return re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-").replace("\\e", "\\")


def man_settings(page: str) -> list[tuple[str, str, str]]:
    """Read (variable, default, help) back from the ENVIRONMENT section of fleet-worker(8)."""
    lines = page.splitlines()
    found = []
    for i, line in enumerate(lines[:-2]):
        m = re.fullmatch(r"\\fB(FLEET_\w+)\\fR \(default: (?:\\fB(.*)\\fR|empty)\)", lines[i + 1])
        if line == ".TP" and m:
            found.append((m.group(1), untroff(m.group(2) or ""), untroff(lines[i + 2])))
    return found


def man_commands(page: str) -> list[str]:
    """Read the fleetctl commands back from the COMMANDS section of fleetctl(1)."""
    return re.findall(r"^\.TP\n\.B fleetctl (\w+)", page, re.M)


class Deb:
    """A built .deb, read with dpkg-deb: its files, their content and its control files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(path)], capture_output=True, check=True, env=CLEAN_ENV
        ).stdout
        self._tar = tarfile.open(fileobj=io.BytesIO(data))

    def listing(self) -> str:
        return subprocess.run(
            ["dpkg-deb", "--contents", str(self.path)],
            capture_output=True,
            text=True,
            check=True,
            env=CLEAN_ENV,
        ).stdout

    def paths(self) -> set[str]:
        """Every path in the package, as '/usr/bin/fleetctl' (dpkg-deb -c's './' dropped)."""
        return {"/" + line.split()[5].removeprefix("./").rstrip("/") for line in self.listing().splitlines()}

    def read(self, path: str) -> bytes:
        member = self._tar.extractfile("." + path)
        assert member is not None, f"{path} is not a regular file in {self.path.name}"
        return member.read()

    def control(self, name: str) -> str | None:
        """Return a control file (postinst, conffiles, ...), or None if the package has none."""
        result = subprocess.run(
            ["dpkg-deb", "--info", str(self.path), name], capture_output=True, text=True, env=CLEAN_ENV
        )
        return result.stdout if result.returncode == 0 else None


def sources() -> list[Path] | None:
    """Return the files packaging/build-deb copies (tracked or not ignored), or None without git."""
    result = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        env=CLEAN_ENV,
    )
    if result.returncode != 0:
        return None
    paths = (ROOT / name for name in result.stdout.decode().split("\0") if name)
    return [p for p in paths if p.is_file()]


@pytest.fixture(scope="session")
def deb() -> Deb:
    """The package in dist/, rebuilt by packaging/build-deb unless newer than every source.

    NOTE: not `make deb`: its prerequisites are git's tracked files, so before a commit
    it would miss a change to a new file and test a stale package.
    """
    path = ROOT / "dist" / f"fleet_{changelog_version()}_all.deb"
    files = sources()
    if path.is_file() and files is not None:
        built = path.stat().st_mtime
        if all(f.stat().st_mtime < built for f in files):
            return Deb(path)
    if shutil.which("dpkg-buildpackage", path=CLEAN_ENV["PATH"]) is None:
        pytest.fail(
            "building the .deb needs dpkg-buildpackage: run packaging/install-deps as root", pytrace=False
        )
    result = subprocess.run(
        [str(ROOT / "packaging" / "build-deb")], capture_output=True, text=True, env=CLEAN_ENV
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        pytest.fail(f"packaging/build-deb failed with exit {result.returncode}:\n{tail}", pytrace=False)
    assert path.is_file(), f"packaging/build-deb succeeded but {path} is missing"
    return Deb(path)


# --- without building -------------------------------------------------------------------


def test_changelog_version_is_the_python_version() -> None:
    """The .deb, the wheel and ``fleet-worker --version`` must all name the same release."""
    assert changelog_version() == pyproject_version(), (
        "packaging/debian/changelog and pyproject.toml disagree: add a changelog entry for "
        f"{pyproject_version()}"
    )
    assert fleet.__version__ == pyproject_version(), "fleet/__init__.py's __version__ lags pyproject.toml"


def test_man_page_template_renders_every_setting_of_the_table() -> None:
    page = load_render().render((MAN / "fleet-worker.8.in").read_text())
    assert man_settings(page) == [(s.env, s.default, s.help) for s in SETTINGS]


def test_man_page_template_renders_every_fleetctl_command() -> None:
    page = load_render().render((MAN / "fleetctl.1.in").read_text())
    assert man_commands(page) == list(VERBS)


def test_man_page_templates_list_nothing_by_hand() -> None:
    """A hand-written entry would not follow the code: only the placeholders may list them."""
    for name, placeholder in (("fleet-worker.8.in", "@SETTINGS@"), ("fleetctl.1.in", "@COMMANDS@")):
        template = (MAN / name).read_text()
        assert man_settings(template) == [] and man_commands(template) == [], name
        assert placeholder in template.splitlines(), f"{name} lost its {placeholder} line"


# --- the built package --------------------------------------------------------------------


def units_dir() -> str:
    """Where this machine's build puts the units: /usr/lib where debhelper has dh_movetousr.

    NOTE: Debian 12's debhelper (13.11) finds units only under /lib; Debian 13's lintian
    rejects /lib (merged /usr). debian/rules makes the same choice.
    """
    moves = shutil.which("dh_movetousr", path=CLEAN_ENV["PATH"]) is not None
    return "/usr/lib/systemd/system" if moves else "/lib/systemd/system"



def test_ships_the_program_the_units_and_the_docs(deb: Deb) -> None:
    paths = deb.paths()
    expected = {
        "/usr/bin/fleetctl",
        "/usr/bin/fleet-worker",
        "/usr/lib/python3/dist-packages/fleet/worker.py",
        "/usr/lib/python3/dist-packages/fleet/ctl/__init__.py",
        f"{units_dir()}/fleet.socket",
        f"{units_dir()}/fleet.service",
        f"{units_dir()}/fleet-worker@.service",
        "/usr/share/bash-completion/completions/fleetctl",
        "/etc/default/fleet",
        "/usr/share/man/man1/fleetctl.1.gz",
        "/usr/share/man/man8/fleet-worker.8.gz",
        "/usr/share/doc/fleet/copyright",
    }
    assert not expected - paths, f"missing from the package: {sorted(expected - paths)}"
    other = "/lib/systemd/" if units_dir().startswith("/usr/") else "/usr/lib/systemd/"
    stray = sorted(p for p in paths if p.startswith(other))
    assert not stray, f"units belong under {units_dir()} on the release that built this: {stray}"


def test_units_are_shipped_unchanged(deb: Deb) -> None:
    for unit in ("fleet.socket", "fleet.service", "fleet-worker@.service"):
        assert deb.read(f"{units_dir()}/{unit}") == (ROOT / "units" / unit).read_bytes(), unit
    completion = deb.read("/usr/share/bash-completion/completions/fleetctl")
    assert completion == (ROOT / "packaging" / "bash-completion" / "fleetctl").read_bytes()


def test_etc_default_fleet_is_the_rendered_table_and_a_conffile(deb: Deb) -> None:
    shipped = deb.read("/etc/default/fleet").decode()
    # NOTE: `python3 -m fleet.settings` prints the text, adding one final newline.
    assert shipped.rstrip("\n") + "\n" == defaults_file()
    conffiles = deb.control("conffiles")
    assert conffiles is not None and "/etc/default/fleet" in conffiles.split(), (
        "/etc/default/fleet must be a conffile, or upgrades overwrite the user's settings"
    )


def test_man_pages_list_every_setting_and_command(deb: Deb) -> None:
    worker = gzip.decompress(deb.read("/usr/share/man/man8/fleet-worker.8.gz")).decode()
    assert man_settings(worker) == [(s.env, s.default, s.help) for s in SETTINGS]
    ctl = gzip.decompress(deb.read("/usr/share/man/man1/fleetctl.1.gz")).decode()
    assert man_commands(ctl) == list(VERBS)


def test_upgrades_never_stop_or_restart_the_socket_or_the_group(deb: Deb) -> None:
    """What dh_installsystemd generated: start on configure, stop only on remove, no restart.

    Restarting fleet.socket refuses queued connections; restarting fleet.service restarts
    every worker at once. The rolling restart on upgrade is tested in tests/e2e.
    """
    postinst = deb.control("postinst") or ""
    assert "deb-systemd-invoke start 'fleet.service' 'fleet.socket'" in postinst
    assert not re.search(r"restart.*'fleet\.(socket|service)'|_dh_action=", postinst), postinst
    assert "fleetctl scale auto" in postinst and "fleetctl restart" in postinst
    preinst = deb.control("preinst")
    assert preinst is None or "deb-systemd-invoke" not in preinst, f"preinst stops units:\n{preinst}"
    prerm = deb.control("prerm") or ""
    stops = [line for line in prerm.splitlines() if "deb-systemd-invoke stop" in line]
    assert stops, "prerm must stop the fleet on remove"
    blocks = re.findall(r"^if .*\n(?:\t.*\n)*?\tdeb-systemd-invoke stop", prerm, re.M)
    assert len(blocks) == len(stops) and all('"$1" = remove' in b for b in blocks), (
        f'every stop in prerm must be guarded by [ "$1" = remove ]:\n{prerm}'
    )


def test_lintian_is_clean(deb: Deb) -> None:
    if shutil.which("lintian", path=CLEAN_ENV["PATH"]) is None:
        pytest.fail("lintian is not installed: run packaging/install-deps as root", pytrace=False)
    result = subprocess.run(
        ["lintian", "--allow-root", "--pedantic", "--fail-on", "error,warning", str(deb.path)],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
    )
    assert result.returncode == 0, f"lintian found problems:\n{result.stdout}{result.stderr}"
    assert not re.search(r"^[EW]: ", result.stdout, re.M), result.stdout
