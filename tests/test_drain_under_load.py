"""Draining under keep-alive load, with bare workers on one socket: not one request may fail."""

from __future__ import annotations

import time

import pytest

from harness.wrk import Load


@pytest.mark.parametrize("settings", [
    {},
    {"FLEET_INLINE_MAX": "0"},
    {"FLEET_THREADS": "0"},
    # NOTE: a request in 20 runs long, so the relief thread takes each worker's loop over.
    {"FLEET_APP": "tests.apps:sometimes_slow", "FLEET_INLINE_MAX": "1ms"},
], ids=["inline-first", "thread-pool", "inline-only", "relieved"])
def test_restarting_workers_one_by_one_under_load_loses_nothing(listener, spawn, settings):
    port = listener.getsockname()[1]
    workers = [spawn(listener, FLEET_INSTANCE=str(i), **settings) for i in (1, 2)]
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
                workers[i] = spawn(listener, FLEET_INSTANCE=str(i + 1), **settings)
                workers[i].notify.wait_for("READY", "1")
    result = load.result()
    assert result.failed == 0, f"{result}\n{result.output}"
    assert result.requests > 1000, result
