"""Several apps on one host, in a real systemd: each from its own virtualenv, none touching another.

Beside the default app (fleet.socket, Hello World), two more are configured the way an
operator would (``fleetctl new``, then ``fleetctl apply``):

- ``shop``: a stock Django project (``django-admin startproject``), Django from PyPI in
  its own venv, on a TCP port with 2 workers; its admin login page is what is fetched;
- ``blog``: a Flask app from a second venv (which also holds a newer falcon than
  Debian's, to prove the venv comes first), on a UNIX socket with 1 worker, as the
  system user ``blog``.

The venvs are made inside the box by its own python3 (``python3 -m venv``), and pip
installs into them from wheels downloaded on the host for the box's Python.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.container import Container
from harness.fleet import FLEETCTL_TIMEOUT, HELLO, Fleet, Traffic, install_fleet, instances, wait_for
from harness.http import get_text
from harness.net import free_port

pytestmark = pytest.mark.releases("bookworm", "trixie")

REPO = Path(__file__).resolve().parents[2]
PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
BLOG_APP = """\
import importlib.metadata

import falcon
import flask

app = flask.Flask(__name__)


@app.get("/")
def index():
    flask_version = importlib.metadata.version("flask")
    return f"blog: flask {flask_version}, falcon {falcon.__version__}"
"""


def _pip() -> list[str]:
    """The pip that downloads the wheels: the host's test venv, else this Python's."""
    venv_pip = REPO / "build" / "pypi-venv" / "bin" / "pip"
    return [str(venv_pip)] if venv_pip.exists() else [sys.executable, "-m", "pip"]


@pytest.fixture(scope="module")
def wheels(suite: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Django, Flask and falcon wheels for the box's Python, downloaded on the host once."""
    out = tmp_path_factory.mktemp(f"wheels-{suite}")
    result = subprocess.run(
        [*_pip(), "download", "--quiet", "--only-binary=:all:", "--python-version", PYTHON[suite],
         "--platform", "manylinux2014_x86_64", "--dest", str(out), "django", "flask", "falcon>=4"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if result.returncode != 0:
        pytest.fail(f"downloading wheels failed:\n{result.stderr[-2000:]}", pytrace=False)
    return out


class Client:
    """GET one app's path on a fresh connection: TCP on the host, or its UNIX socket through the box."""

    def __init__(self, port: int | None = None, unix: str | None = None) -> None:
        self.port, self.unix = port, unix

    def get(self, path: str = "/", timeout: float = 10) -> tuple[int, str]:
        if self.port is not None:
            status, _, body = get_text(self.port, path, timeout=timeout)
            return status, body
        assert self.unix is not None
        conn = http.client.HTTPConnection("localhost", timeout=timeout)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(self.unix)
        conn.sock = sock
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode("utf-8", errors="replace")
        finally:
            conn.close()


def traffic(name: str, client: Client, path: str, good: Callable[[str], bool]) -> Traffic:
    """GETs of one app's page in a loop (see harness.fleet.Traffic), with a longer timeout."""
    return Traffic(timeout=15, fetch=lambda timeout: client.get(path, timeout), good=good, name=name)


class Host:
    """The box with fleet installed and the three apps serving."""

    def __init__(self, fleet: Fleet, shop_port: int) -> None:
        self.fleet, self.box = fleet, fleet.box
        self.shop_port = shop_port
        self.blog_socket = f"/proc/{self.box.leader}/root/run/blog/blog.sock"

    def fleetctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.box.run("fleetctl", *args, check=check, timeout=FLEETCTL_TIMEOUT)

    def loads(self) -> dict[str, Traffic]:
        blog = Client(unix=self.blog_socket)
        return {
            "default": traffic("default", Client(self.fleet.port), "/", lambda body: body == HELLO),
            "shop": traffic("shop", Client(self.shop_port), "/admin/login/", lambda body: "Django" in body),
            "blog": traffic("blog", blog, "/", lambda body: body.startswith("blog:")),
        }

    @contextlib.contextmanager
    def under_load(self, *names: str) -> Iterator[dict[str, Traffic]]:
        """Load on the apps named, each seen answering before the body runs."""
        loads = {name: load for name, load in self.loads().items() if name in names}
        with contextlib.ExitStack() as stack:
            for load in loads.values():
                stack.enter_context(load)
                load.wait_answered(3, timeout=60)
            yield loads

    def pids(self, worker_glob: str) -> dict[str, int]:
        out = self.box.run("systemctl", "show", "--state=active", "--property=Id", "--property=MainPID",
                           worker_glob).stdout  # fmt: skip
        found = {}
        for block in out.strip().split("\n\n"):
            props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if props.get("Id") and props.get("MainPID", "0") != "0":
                found[props["Id"]] = int(props["MainPID"])
        return found


def _make_venv(box: Container, wheels: Path, venv: str, *packages: str) -> None:
    for wheel in wheels.iterdir():
        box.copy_in(wheel, f"/var/tmp/wheels/{wheel.name}")
    box.run("python3", "-m", "venv", venv, timeout=300)
    box.run(f"{venv}/bin/pip", "install", "--quiet", "--no-index", "--find-links", "/var/tmp/wheels",
            *packages, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def host(base_tree: Path, deb: Path, wheels: Path) -> Iterator[Host]:
    box = Container.boot(base=base_tree)
    try:
        fleet = install_fleet(box, deb)
        fleet.wait_serving()
        box.apt_install("python3-venv", recommends=False)
        _make_venv(box, wheels, "/srv/mysite/venv", "django")
        box.run("/srv/mysite/venv/bin/django-admin", "startproject", "mysite", "/srv/mysite")
        _make_venv(box, wheels, "/srv/blog/venv", "flask", "falcon>=4")
        box.write_file("/srv/blog/blog.py", BLOG_APP)
        box.run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "blog")

        shop_port = free_port()
        box.run("fleetctl", "new", "shop", "--listen", f"127.0.0.1:{shop_port}",
                "--module", "mysite.wsgi:application", "--path", "/srv/mysite",
                "--venv", "/srv/mysite/venv", "--workers", "2")  # fmt: skip
        box.run("fleetctl", "new", "blog", "--listen", "unix:/run/blog/blog.sock", "--module", "blog:app",
                "--path", "/srv/blog", "--venv", "/srv/blog/venv", "--workers", "1", "--user", "blog")
        applied = box.run("fleetctl", "apply", timeout=FLEETCTL_TIMEOUT)
        assert "shop: started, 2 workers" in applied.stdout, applied.stdout
        assert "blog: started, 1 worker" in applied.stdout, applied.stdout
        yield Host(fleet, shop_port)
    finally:
        box.stop()


def test_three_apps_serve_side_by_side_each_from_its_own_venv(host: Host) -> None:
    assert Client(host.fleet.port).get() == (200, HELLO)
    status, page = Client(host.shop_port).get("/admin/login/")
    assert status == 200 and "Django administration" in page, page[:300]
    status, body = Client(unix=host.blog_socket).get()
    assert status == 200 and body.startswith("blog: flask 3."), body
    assert ", falcon 4." in body, f"the venv's falcon must come before Debian's 3.1: {body}"

    expected = {"default": sorted(instances(host.box.nproc())), "blog": ["1"], "shop": ["1", "2"]}

    def fleet_status() -> tuple[dict[str, Any], dict[str, list[str]]]:
        data = json.loads(host.fleetctl("status", "--json").stdout)
        running = {a["app"]: sorted(i["instance"] for i in a["instances"] if i["state"] == "active")
                   for a in data["apps"]}  # fmt: skip
        return data, running

    # NOTE: one instance answering says nothing of its sibling, which may still be importing
    # Django on a busy machine: wait for every instance to be active, not for a moment.
    data, _ = wait_for(fleet_status, lambda got: got[1] == expected, 60,
                       "every instance of every app active in fleetctl status --json")
    apps = {a["app"]: a for a in data["apps"]}
    assert list(apps) == ["default", "blog", "shop"]
    assert data["socket"]["unit"] == "fleet.socket", "the top level stays the default app's"
    assert apps["blog"]["socket"]["listen"] == ["/run/blog/blog.sock"]
    assert all(a["problems"] == [] for a in apps.values()), apps
    host.fleetctl("drain", "shop")
    assert Client(host.shop_port).get("/healthz")[0] == 503
    assert Client(host.fleet.port).get("/healthz")[0] == 200, "draining one app drained another"
    host.fleetctl("undrain", "shop")
    assert Client(host.shop_port).get("/healthz")[0] == 200
    table = host.fleetctl("status").stdout
    for unit in ("fleet-worker@1", "fleet-shop-worker@2", "fleet-blog-worker@1"):
        assert unit in table, table

    # NOTE: a process's /proc directory is owned by its user.
    blog_pid = host.pids("fleet-blog-worker@*.service")["fleet-blog-worker@1.service"]
    assert host.box.run("stat", "-c", "%U", f"/proc/{blog_pid}").stdout.strip() == "blog"
    assert host.box.run("stat", "-c", "%U:%G %a", "/run/blog/blog.sock").stdout.strip() == "root:www-data 660"
    shop_pid = host.pids("fleet-shop-worker@*.service")["fleet-shop-worker@1.service"]
    default_pid = host.pids("fleet-worker@*.service")["fleet-worker@1.service"]
    shop_uid, default_uid = (int(host.box.run("stat", "-c", "%u", f"/proc/{pid}").stdout)
                             for pid in (shop_pid, default_pid))  # fmt: skip
    # NOTE: systemd's dynamic users are 61184-65519 (a minbase box cannot name them: no nss-systemd).
    assert 61184 <= shop_uid <= 65519 and shop_uid != default_uid, (
        f"an app without FLEET_USER runs as its own dynamic user: {shop_uid} vs {default_uid}")
    for unit in ("fleet-shop-worker@1.service", "fleet-blog-worker@1.service"):
        security = host.box.run("systemd-analyze", "security", "--no-pager", unit).stdout
        m = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", security)
        assert m and float(m.group(1)) <= 2.0, f"{unit}'s sandbox weakened:\n{security}"


def _others_untouched(loads: dict[str, Traffic], target: str, what: str) -> None:
    for name, load in loads.items():
        if name != target:
            assert load.failures == [], f"{what} of {target} reached {load.report()}"
            assert load.ok > 0, f"{name} answered nothing while {what} ran on {target}"


def test_one_apps_scale_restart_kills_and_broken_import_never_reach_the_others(host: Host) -> None:
    with host.under_load("default", "shop", "blog") as loads:
        host.fleetctl("scale", "shop", "3")
        host.fleetctl("scale", "shop", "2")
        host.fleetctl("restart", "shop")
        _others_untouched(loads, "shop", "scale and restart")
        assert loads["shop"].failures == [], f"a rolling restart loses nothing: {loads['shop'].report()}"
        assert "FLEET_WORKERS=2" in host.box.run("cat", "/etc/fleet/apps/shop.conf").stdout

        before = host.pids("fleet-shop-worker@*.service")
        host.box.sh(f"kill -9 {' '.join(map(str, before.values()))}")
        wait_for(lambda: host.pids("fleet-shop-worker@*.service"),
                 lambda now: len(now) == 2 and not set(now.values()) & set(before.values()),
                 30, "shop's workers replaced after kill -9")  # fmt: skip
        _others_untouched(loads, "shop", "kill -9 of every worker")

    with host.under_load("default", "shop") as loads:
        host.box.sh("sed -i 's/^FLEET_APP=.*/FLEET_APP=blog_gone:app/' /etc/fleet/apps/blog.conf")
        broken = host.fleetctl("restart", "blog", check=False)
        assert broken.returncode == 1
        assert "cannot import WSGI app 'blog_gone:app'" in broken.stderr, broken.stderr
        assert "looked in FLEET_VENV /srv/blog/venv" in broken.stderr, broken.stderr
        # NOTE: between two tries a worker is briefly "activating" with no status yet.
        wait_for(lambda: json.loads(host.fleetctl("status", "blog", "--json").stdout)["instances"][0],
                 lambda row: row["state"] == "failing" and "blog_gone" in row["status"],
                 60, "blog shown failing with its error")  # fmt: skip
        _others_untouched(loads, "blog", "a broken import")

    host.box.sh("sed -i 's/^FLEET_APP=.*/FLEET_APP=blog:app/' /etc/fleet/apps/blog.conf")
    host.fleetctl("restart", "blog")
    assert Client(unix=host.blog_socket).get()[0] == 200


def test_a_package_upgrade_restarts_every_app_and_loses_nothing(host: Host, newer_deb: Path) -> None:
    globs = ("fleet-worker@*.service", "fleet-shop-worker@*.service", "fleet-blog-worker@*.service")
    before = {glob: host.pids(glob) for glob in globs}
    with host.under_load("default", "shop", "blog") as loads:
        host.box.install_deb(newer_deb)
    for load in loads.values():
        assert load.failures == [], f"the upgrade lost requests: {load.report()}"
    for glob in globs:
        after = host.pids(glob)
        assert set(after) == set(before[glob]), glob
        kept = [unit for unit in after if after[unit] == before[glob][unit]]
        assert not kept, f"not restarted by the upgrade: {kept}"


def test_removing_an_apps_file_takes_only_that_app_down(host: Host) -> None:
    host.box.run("mv", "/etc/fleet/apps/blog.conf", "/root/blog.conf")
    try:
        with host.under_load("default", "shop") as loads:
            applied = host.fleetctl("apply")
            assert "blog: its config is gone; stopping... stopped" in applied.stdout, applied.stdout
            _others_untouched(loads, "blog", "removing the app")
        listed = ("systemctl", "list-units", "--all", "--plain", "--no-legend", "fleet-blog*")
        gone = host.box.run(*listed).stdout
        assert gone.strip() == "", gone
        assert not os.path.exists(host.blog_socket)
    finally:
        host.box.run("mv", "/root/blog.conf", "/etc/fleet/apps/blog.conf")
    assert "blog: started, 1 worker" in host.fleetctl("apply").stdout
    assert Client(unix=host.blog_socket).get()[0] == 200


def test_an_app_given_a_taken_port_fails_alone(host: Host) -> None:
    """The default app's port, which no app file names (it is in a drop-in): apply starts it and fails."""
    host.fleetctl("new", "clash", "--listen", f"127.0.0.1:{host.fleet.port}", "--module", "fleet.app:app",
                  "--workers", "1")  # fmt: skip
    try:
        with host.under_load("default", "shop", "blog") as loads:
            applied = host.fleetctl("apply", check=False)
            assert applied.returncode == 1, applied.stdout
            assert "clash: failed" in applied.stdout and "blog: unchanged" in applied.stdout, applied.stdout
            _others_untouched(loads, "clash", "a socket that cannot bind")
        status = host.fleetctl("status", "clash").stdout
        assert f"cannot listen: port {host.fleet.port} is taken by" in status, status
        assert "set FLEET_LISTEN in /etc/fleet/apps/clash.conf to a free address" in status, status
    finally:
        host.box.run("rm", "/etc/fleet/apps/clash.conf")
        host.fleetctl("apply")


def test_purge_leaves_no_app_unit_or_state_and_keeps_the_operators_files(host: Host) -> None:
    """Last: it removes the package. The apps' files are the administrator's, so they stay."""
    box = host.box
    made = box.sh("ls -d /var/lib/private/fleet-shop /run/systemd/generator/fleet-shop.socket").stdout
    assert len(made.split()) == 2, "the app's state and units exist before the purge"
    box.run("apt-get", "purge", "-y", "fleet", env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
    units = box.run("systemctl", "list-units", "--all", "--plain", "--no-legend", "fleet*").stdout
    # NOTE: as in test_package's purge test: a stopped worker whose cgroup this host's legacy
    # cgroups would not let systemd remove stays listed "not-found inactive dead", holding nothing.
    alive = [line for line in units.splitlines() if line.split()[1:4] != ["not-found", "inactive", "dead"]]
    assert alive == [], f"units left after purge:\n{units}"
    left = box.sh("ls -d /run/systemd/generator/fleet* /var/lib/fleet* /var/lib/private/fleet* "
                  "/run/fleet* /run/private/fleet* /etc/systemd/system/fleet* 2>/dev/null",
                  check=False).stdout  # fmt: skip
    assert left.strip() == "", f"purge left:\n{left}"
    assert box.run("ls", "/etc/fleet/apps").stdout.split() == ["blog.conf", "shop.conf"]
