"""How an app's workers split their clients: each worker's open connections, in a table they all map.

Every worker of an app writes its count and a heartbeat into its own slot of a
small file in the app's ``StateDirectory=``, the one directory all its
instances share that no instance's stop removes. A worker reads its siblings'
slots to decide whether it holds more than its share: then it ends keep-alive
connections at their age (``FleetServer.ends_keepalive``); otherwise it keeps
them, since moving a client costs it a reconnect and a wait in the kernel's
queue. Each slot also says whether its worker has a thread free: a busy worker
holding no more than any sibling, all busy too, takes waiting clients at once
(``Gate.leads``), so a burst of them is split evenly (bench/analysis.md).
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import time

log = logging.getLogger("fleet.worker")

# Instances 0..SLOTS-1 have a slot; a worker of another name shares nothing.
SLOTS = 256
# A slot: open connections, 1 while no thread is free (else 0), requests served
# so far, and when the connections were written (CLOCK_MONOTONIC, one clock for
# every process on the host; a slot from before a reboot reads as written in
# the future, and does not count). Each field is written on its own, by its owner.
_SLOT = struct.Struct("=qqqd")
_FIELD = struct.Struct("=q")
_BUSY_AT, _DONE_AT = 8, 16
_WRITTEN = struct.Struct("=d")
_WRITTEN_AT = 24
_TABLE = struct.Struct("=" + "qqqd" * SLOTS)
# A slot not written for this long is a stopped or stuck worker's: not a sibling to leave clients to.
STALE = 2.0
# How often the whole table is scanned for the slots in use; between scans only those are read.
RESCAN = 0.5
# NOTE: the layout's version is in the name: a worker of another fleet version
# (during an upgrade) keeps its own table rather than misreading this one.
TABLE = "workers.v1"


class Siblings:
    """This worker's slot, written; its siblings' slots, read.

    Each field of the slot is written alone (one call, under the GIL): the
    connections and heartbeat by any thread, the busy flag by the loop
    thread, the requests served by the loop thread or the one that served
    the last. A read that races a sibling's write may see half of a slot:
    one decision made on a wrong count, which the next one corrects.
    """

    def __init__(self, table: mmap.mmap | None, slot: int) -> None:
        self._table = table
        self._slot = slot
        self._at = slot * _SLOT.size  # where this worker's slot begins in the table
        # Any thread (a whole tuple stored at once): when the table was last
        # scanned, and the siblings' slots found written then.
        self._in_use: tuple[float, tuple[int, ...]] = (float("-inf"), ())
        self._busy = 0  # the loop thread: this worker's busy field as last written

    @classmethod
    def open(cls, directory: str, instance: str) -> Siblings:
        """The table in ``directory`` (systemd's $STATE_DIRECTORY); none without one."""
        if not directory or not instance.isdigit() or int(instance) >= SLOTS:
            return cls(None, 0)
        try:
            fd = os.open(os.path.join(directory, TABLE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                # NOTE: blocks allocated now, so a full disk fails here, not as a
                # SIGBUS at a write to the mapping; siblings doing the same at once agree.
                os.posix_fallocate(fd, 0, _TABLE.size)
                table = mmap.mmap(fd, _TABLE.size)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("not sharing connection counts with sibling workers (%s): each splits "
                        "clients on its own; check that %s is writable by the worker's user", e, directory)
            return cls(None, 0)
        siblings = cls(table, int(instance))
        # NOTE: the slot may still hold the last words of this instance's killed
        # predecessor (busy, its clients): a new worker holds none and has every thread free.
        _SLOT.pack_into(table, siblings._at, 0, 0, 0, time.monotonic())
        return siblings

    def publish(self, connections: int, now: float) -> None:
        """This worker's open connections, and that it is alive. Any thread."""
        table = self._table  # NOTE: read once: leave() may run meanwhile
        if table is not None:
            _FIELD.pack_into(table, self._at, connections)
            _WRITTEN.pack_into(table, self._at + _WRITTEN_AT, now)

    def publish_busy(self, busy: bool, done: int) -> None:
        """Whether this worker has no thread free, and the requests it has served then. Loop thread.

        Written only when it changes.
        """
        table = self._table
        if table is not None and busy != self._busy:
            self._busy = int(busy)
            _FIELD.pack_into(table, self._at + _BUSY_AT, self._busy)
            _FIELD.pack_into(table, self._at + _DONE_AT, done)

    def served_one(self, done: int) -> None:
        """A request ended, the ``done``-th: told at once while busy. By the thread that served it.

        A sibling's gate asks whether this worker gets through its requests
        (``Gate.leads``); with a thread free, the next time the gate closes will do.
        """
        table = self._table
        if table is not None and self._busy:
            _FIELD.pack_into(table, self._at + _DONE_AT, done)

    def lightest(self, now: float) -> int | None:
        """The fewest connections a live sibling holds; None with no table or no live sibling."""
        return min((connections for connections, _, _ in self._live(now)), default=None)

    def all_busy(self, now: float) -> bool:
        """Whether no live sibling has a thread free (True with none)."""
        return all(busy for _, busy, _ in self._live(now))

    def served(self, now: float) -> int:
        """The requests the live siblings have served, added up: a change says one of them got through one."""
        return sum(done for _, _, done in self._live(now))

    def _live(self, now: float) -> list[tuple[int, int, int]]:
        """Each live sibling's connections, busy field and requests served.

        Cheap enough for a busy gate's every pass: it reads only the slots in
        use at the last scan (a new sibling is seen within RESCAN).
        """
        table = self._table
        if table is None:
            return []
        scanned, in_use = self._in_use
        if not 0.0 <= now - scanned < RESCAN:
            written = _TABLE.unpack_from(table)[3::4]
            in_use = tuple(slot for slot in range(SLOTS) if written[slot] and slot != self._slot)
            self._in_use = (now, in_use)
        live = []
        for slot in in_use:
            connections, busy, done, at = _SLOT.unpack_from(table, slot * _SLOT.size)
            if 0.0 <= now - at < STALE:
                live.append((connections, busy, done))
        return live

    def leave(self) -> None:
        """Leave the table (a drain, an exit): siblings stop counting this worker at once, not after STALE.

        The mapping stays open until the process ends: a request thread that
        read ``_table`` just before may still write to it.
        """
        table, self._table = self._table, None
        if table is not None:
            _SLOT.pack_into(table, self._at, 0, 0, 0, 0.0)
