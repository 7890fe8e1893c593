"""fleetctl's port probe, against real sockets: who listens on a port, found through /proc."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from fleet.ctl.ports import Holder, TakenPort, listen_port, listening_inodes, taken


def test_listen_port_reads_systemds_addresses() -> None:
    assert [listen_port(a) for a in ("[::]:8000", "0.0.0.0:80", "8080", "/run/x.sock", "@abstract")] == [
        8000, 80, 8080, None, None,
    ]  # fmt: skip


def test_a_listening_socket_of_this_process_is_found_with_its_pid() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        inode = os.fstat(sock.fileno()).st_ino
        assert listening_inodes(port) == {inode}
        name = Path("/proc/self/comm").read_text().strip()
        assert taken((f"[::]:{port}", "/run/fleet.sock")) == (TakenPort(port, (Holder(os.getpid(), name),)),)


def test_a_bound_but_not_listening_port_is_not_taken() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        assert taken((str(sock.getsockname()[1]),)) == ()


def test_holder_reads_as_name_and_pid() -> None:
    assert str(Holder(812, "nginx")) == "nginx (pid 812)"
