"""``python3 -m fleet.ctl``: fleetctl without its launcher (tests, a source checkout)."""

from __future__ import annotations

import sys

from fleet.ctl.cli import main

sys.exit(main())
