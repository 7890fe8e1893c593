"""Prototype: fleet's worker with another gate patience, chosen by GATE_VARIANT.

    off           no patience: a busy worker never takes a waiting connection
    fixed:MS      MS milliseconds from when the gate closed, whatever the worker holds
                  (fleet's gate until 2026-12-02, with MS=5)
    per:MS        the same, MS milliseconds for each connection the worker holds
    const:MS:PER  the tree's gate with GATE_PATIENCE=MS and GATE_PATIENCE_PER_CONNECTION=PER
                  milliseconds

A monkeypatch of Gate.patience_over (fleet/gate.py), to A/B gates against the tree's
in the same rounds (``python3 -m bench.experiments.gate_ab``).
"""

from __future__ import annotations

import os
import sys
import time

from fleet import gate
from fleet.worker import main


def _patience(self: gate.Gate) -> float:
    kind, _, ms = os.environ.get("GATE_VARIANT", "fixed:5").partition(":")
    if kind == "off":
        return float("inf")
    if kind == "per":
        return float(ms) / 1000 * max(1, self.loop.connections())
    return float(ms) / 1000


def _patience_over(self: gate.Gate) -> bool:
    now = time.monotonic()
    if not self.closed_since:
        self._close(now)
        return False
    return now - self.closed_since >= _patience(self) and self._requests_done() != self.done_when_closed


def install() -> None:
    kind, _, values = os.environ.get("GATE_VARIANT", "fixed:5").partition(":")
    if kind == "const":
        base, _, per = values.partition(":")
        gate.GATE_PATIENCE, gate.GATE_PATIENCE_PER_CONNECTION = float(base) / 1000, float(per) / 1000
        return
    gate.Gate.patience_over = _patience_over  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    sys.exit(main([]))
