"""The harness itself: the containers the e2e suite relies on behave as it assumes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from harness.container import CLEAN_PATH, CommandError, Container
from harness.http import get_text
from harness.net import free_port
from harness.procs import process_matches, start_time


def test_boots_systemd_as_pid_1(container: Container) -> None:
    state = container.run("systemctl", "is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded")
    assert container.run("cat", "/proc/1/comm").stdout == "systemd\n"
    assert container.run("systemd-detect-virt").stdout == "systemd-nspawn\n"


def test_commands_get_a_clean_environment(container: Container) -> None:
    env = dict(line.split("=", 1) for line in container.run("env").stdout.splitlines())
    assert env["PATH"] == CLEAN_PATH
    assert not [value for value in env.values() if "pyenv" in value]


def test_apt_installs_a_package_from_the_hosts_mirror(container: Container) -> None:
    container.apt_install("hello")
    assert container.run("hello").stdout == "Hello, world!\n"


def test_a_port_opened_inside_answers_on_the_hosts_loopback(container: Container) -> None:
    port = free_port()
    container.write_file("/srv/probe/index.html", "from inside\n")
    container.run(
        "systemd-run", "--unit=probe", "--",
        "python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", "/srv/probe",
        str(port),
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            status, headers, body = get_text(port)
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, f"nothing listens on 127.0.0.1:{port}"
            time.sleep(0.05)
    assert (status, body) == (200, "from inside\n")
    assert headers["content-type"] == "text/html"


def test_a_failed_command_says_what_it_printed(container: Container) -> None:
    with pytest.raises(CommandError) as caught:
        container.sh("echo to-stdout; echo to-stderr >&2; exit 3")
    message = str(caught.value)
    assert "exited 3" in message
    assert "to-stdout" in message
    assert "to-stderr" in message
    assert caught.value.result.returncode == 3


def test_nproc_counts_the_cpus_the_container_may_use(container: Container) -> None:
    host = len(os.sched_getaffinity(0))
    assert container.nproc() == host


def test_stop_leaves_no_process_behind(base_tree: Path) -> None:
    box = Container.boot(base=base_tree)
    nspawn = (box.nspawn_pid, box.nspawn_started)
    leader_started = start_time(box.leader)
    box.stop()
    box.stop()  # NOTE: idempotent: the fixture and atexit may both call it.
    assert nspawn[1] is not None and leader_started is not None
    assert not process_matches(nspawn[0], nspawn[1])
    assert not process_matches(box.leader, leader_started)
    assert not box.alive()


def test_stop_kills_a_container_that_will_not_shut_down(base_tree: Path) -> None:
    box = Container.boot(base=base_tree)
    # A service whose stop never finishes holds up the shutdown indefinitely.
    box.run(
        "systemd-run", "--unit=stuck", "-p", "TimeoutStopSec=infinity",
        "-p", "ExecStop=/bin/sleep infinity", "--", "/bin/sleep", "infinity",
    )  # fmt: skip
    started = time.monotonic()
    leader_started = start_time(box.leader)
    box.stop(timeout=2)
    assert time.monotonic() - started < 10
    assert leader_started is not None
    assert not box.alive()
    assert not process_matches(box.leader, leader_started)


def test_containers_install_packages_at_the_same_time(base_tree: Path) -> None:
    # apt holds the archive cache's lock for a whole install and never waits for it: a cache
    # shared as a plain bind made one of two concurrent installs fail at once.
    with Container.boot(base=base_tree) as one, Container.boot(base=base_tree) as two:
        failures: list[Exception] = []

        def install(box: Container) -> None:
            try:
                box.apt_install("hello")
            except Exception as failure:  # NOTE: a thread's exception is lost unless kept
                failures.append(failure)

        threads = [threading.Thread(target=install, args=(box,)) for box in (one, two)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures
        assert one.run("hello").stdout == two.run("hello").stdout == "Hello, world!\n"
