"""The README's first command, run as written on a fresh Debian 12 with systemd.

The container is such a machine (minbase plus systemd, dbus and python3: no make, no
build tools); the checkout is copied in as a clone would put it there. The command runs
as root without its ``sudo`` (minbase has none, and root is what sudo would give).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .container import Container, free_port
from .fleet import Fleet, instances, set_port, wait_for

REPO = Path(__file__).resolve().parents[2]
SOURCE = "/root/fleet"
BUILD_SECONDS = 900  # NOTE: apt fetches debhelper and lintian, then the build runs the unit tests.


def first_command() -> str:
    """The README's first command line, without its comment."""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("    ") and line.strip():
            return line.split("#", 1)[0].strip()
    raise AssertionError("README.md has no indented command block")


def copy_checkout(box: Container, tmp_path: Path) -> None:
    """Put the checkout's tracked files in ``SOURCE``, as ``git clone`` would."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    tarball = tmp_path / "fleet.tar"
    subprocess.run(["tar", "-C", str(REPO), "--null", "--no-recursion", "-T", "-", "-cf", str(tarball)],
                   input=files, check=True)  # fmt: skip
    box.copy_in(tarball, "/var/tmp/fleet.tar")
    box.run("mkdir", "-p", SOURCE)
    box.run("tar", "-C", SOURCE, "-xf", "/var/tmp/fleet.tar")


def test_the_first_command_serves_on_a_fresh_machine(container: Container, tmp_path: Path) -> None:
    command = first_command()
    assert "make install" in command, f"the README's first command changed: {command!r}"
    assert container.run("sh", "-c", "command -v make", check=False).returncode != 0, "not a fresh machine"
    copy_checkout(container, tmp_path)
    port = free_port()
    set_port(container, port)  # NOTE: the host's :8000 may be taken; containers share its network.

    as_root = re.sub(r"\bsudo\s+", "", command)
    result = container.run("sh", "-c", f"cd {SOURCE} && {as_root}", check=False, timeout=BUILD_SECONDS,
                           env={"DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
    container.publish_archives()
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
    assert result.returncode == 0, f"{as_root!r} failed with exit {result.returncode}:\n{tail}"

    fleet = Fleet(container, port)
    fleet.wait_serving()
    cpus = container.nproc()
    wait_for(fleet.running, lambda r: r == instances(cpus), 30, f"one running worker per CPU ({cpus})")
    assert fleet.status()["socket"]["state"] == "active"
