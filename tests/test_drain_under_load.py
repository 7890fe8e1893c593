"""Draining under keep-alive load, with bare workers on one socket: not one request may fail."""

from __future__ import annotations

import time

import pytest

from tests.load import Load


@pytest.mark.parametrize("threads", ["4", "0"], ids=["thread-pool", "inline"])
def test_restarting_workers_one_by_one_under_load_loses_nothing(listener, spawn, threads):
    port = listener.getsockname()[1]
    workers = [spawn(listener, FLEET_INSTANCE=str(i), FLEET_THREADS=threads) for i in (1, 2)]
    for w in workers:
        w.notify.wait_for("READY", "1")
    with Load(port, seconds=6, connections=20) as load:
        for _round in range(2):
            for i in range(2):
                time.sleep(1.2)
                old = workers[i]
                old.terminate()
                # As systemd does: the replacement starts once the old one has gone.
                assert old.wait(10) == 0, old.stderr()
                workers[i] = spawn(listener, FLEET_INSTANCE=str(i + 1), FLEET_THREADS=threads)
                workers[i].notify.wait_for("READY", "1")
    result = load.result()
    assert result.failed == 0, f"{result}\n{result.output}"
    assert result.requests > 1000, result
