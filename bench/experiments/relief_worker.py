"""Prototype: fleet's worker with the relief thread looking every RELIEF_CHECK_MS (default 2),
backing off to RELIEF_CHECK_MAX_MS (default 16) while it finds nothing to watch.

The relief thread samples the loop thread while it serves; each look takes the GIL.
This measures what those looks cost Hello World (``python3 -m bench.experiments.tune relief``).
"""

from __future__ import annotations

import os
import sys

from fleet import dispatch
from fleet.worker import main

if __name__ == "__main__":
    dispatch.RELIEF_CHECK = float(os.environ.get("RELIEF_CHECK_MS", "2")) / 1000
    dispatch.RELIEF_CHECK_MAX = float(os.environ.get("RELIEF_CHECK_MAX_MS", "16")) / 1000
    sys.exit(main([]))
