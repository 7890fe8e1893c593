"""Another tree's worker (FLEET_TREE, e.g. a worktree at 0.1.0), started as the bench starts fleet's.

FleetBare runs ``python3 -m MODULE`` in this repository, which puts this tree's
fleet first on sys.path; this module puts FLEET_TREE's there instead, so two
trees are measured in the same rounds (``python3 -m bench.experiments.tune gate``).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.environ["FLEET_TREE"])
    for name in [m for m in sys.modules if m == "fleet" or m.startswith("fleet.")]:
        del sys.modules[name]
    from fleet.worker import main

    sys.exit(main([]))
