"""Prototype: the worker with another GIL switch interval (``sys.setswitchinterval``).

strace counts ~24 futex calls a request in a threaded worker: the GIL and the
task queue's condition changing hands. A longer interval lets the thread
holding the GIL run on until it blocks, instead of being asked to drop it
after 5 ms (CPython's default). ``SWITCH_INTERVAL`` (seconds) sets it here.
"""

from __future__ import annotations

import os
import sys

from fleet.worker import main

if __name__ == "__main__":
    sys.setswitchinterval(float(os.environ["SWITCH_INTERVAL"]))
    sys.exit(main([]))
