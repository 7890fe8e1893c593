"""The README's first command, run as written on a fresh Debian 12 and a fresh Debian 13.

The container is such a machine (minbase plus systemd, dbus and python3: no make, no
build tools, no sudo); the checkout is copied in as a clone would put it there. The
command must work both for a user with sudo and for root on a machine without sudo:
Debian 12 runs it as a sudo user, Debian 13 as root with no sudo installed (each
release and each kind of user once, as each run builds the package from scratch).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from harness.build import BUILD_SECONDS, copy_checkout
from harness.container import Container
from harness.fleet import Fleet, instances, set_port, wait_for
from harness.net import free_port

REPO = Path(__file__).resolve().parents[2]
USER = "alice"


def first_command() -> str:
    """The README's first command line, without its comment."""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("    ") and line.strip():
            return line.split("  #", 1)[0].strip()
    raise AssertionError("README.md has no indented command block")


def as_sudo_user(box: Container) -> str:
    """Make ``USER``, who may sudo (without a password: nobody is there to type it)."""
    box.apt_install("sudo")
    box.run("useradd", "--create-home", "--shell", "/bin/bash", USER)
    box.write_file(f"/etc/sudoers.d/{USER}", f"{USER} ALL=(ALL) NOPASSWD: ALL\n", mode=0o440)
    return f"/home/{USER}/fleet"


@pytest.mark.parametrize(
    ("suite", "who"), [("bookworm", "a sudo user"), ("trixie", "root without sudo")], scope="session"
)
def test_the_first_command_serves_on_a_fresh_machine(
    container: Container, tmp_path: Path, suite: str, who: str
) -> None:
    command = first_command()
    assert "make install" in command, f"the README's first command changed: {command!r}"
    assert container.run("sh", "-c", "command -v make", check=False).returncode != 0, "not a fresh machine"
    port = free_port()
    set_port(container, port)  # NOTE: the host's :8000 may be taken; containers share its network.

    if who == "a sudo user":
        source = as_sudo_user(container)
        copy_checkout(container, tmp_path, source=source)
        container.run("chown", "-R", f"{USER}:{USER}", source)
        argv = ["runuser", "--login", USER, "--command", f"cd {source} && {command}"]
    else:
        assert container.run("sh", "-c", "command -v sudo", check=False).returncode != 0, "sudo is installed"
        source = "/root/fleet"
        copy_checkout(container, tmp_path, source=source)
        argv = ["sh", "-c", f"cd {source} && {command}"]
    result = container.run(*argv, check=False, timeout=BUILD_SECONDS,
                           env={"DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
    container.publish_archives()
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
    assert result.returncode == 0, (
        f"{shlex.join(argv)} ({who}, {suite}) failed with exit {result.returncode}:\n{tail}"
    )

    fleet = Fleet(container, port)
    fleet.wait_serving()
    cpus = container.nproc()
    wait_for(fleet.running, lambda r: r == instances(cpus), 30, f"one running worker per CPU ({cpus})")
    assert fleet.status()["socket"]["state"] == "active"
