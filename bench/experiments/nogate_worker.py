"""Prototype: fleet's worker without the accept gate (accept whenever waitress would).

The working tree's Gate (fleet/gate.py) wraps each listener's ``readable()`` so
a worker accepts only while a thread is free. This module undoes that, to compare both
under kill -9 (``python3 -m bench.experiments.faults``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from fleet import gate
from fleet.worker import main


def _no_gate(self: gate.Gate, readable: Callable[[], bool]) -> Callable[[], bool]:
    return readable


def install() -> None:
    gate.Gate.readable = _no_gate  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    sys.exit(main([]))
