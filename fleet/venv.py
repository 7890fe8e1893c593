"""``FLEET_VENV``: an app's own virtualenv, whose packages come first for that app.

The worker runs Debian's python3, which has fleet and its dependencies
(waitress, python3-systemd) in dist-packages. The venv's site-packages is put
in front of ``sys.path`` just before the app is imported, after fleet's own
imports: the app gets its pinned Django or Flask from the venv, and fleet keeps
the waitress it was tested with. A venv must be made by the same Python
version (its compiled packages are built for it); anything else is one error
naming the problem and the fix.
"""

from __future__ import annotations

import re
import site
import sys
from pathlib import Path


class VenvError(Exception):
    """FLEET_VENV cannot be used; the message names the problem and the fix."""


def venv_version(root: Path) -> tuple[int, int] | None:
    """The Python version a venv was made with, from its ``pyvenv.cfg``; None if it does not say."""
    text = (root / "pyvenv.cfg").read_text(errors="replace")
    m = re.search(r"^\s*(?:version|version_info)\s*=\s*(\d+)\.(\d+)", text, re.M)
    return (int(m.group(1)), int(m.group(2))) if m else None


def activate(path: str, running: tuple[int, int] = sys.version_info[:2]) -> list[str]:
    """Put the venv at ``path`` first on ``sys.path``; return the entries added.

    Raises VenvError when there is no venv there, or one of another Python.
    """
    root = Path(path)
    here = f"{running[0]}.{running[1]}"
    make = f"python3 -m venv {path}"
    if not root.is_dir():
        hidden = " (the workers cannot see /home, /root or /run/user: ProtectHome=yes)" \
            if path.startswith(("/home", "/root", "/run/user")) else ""
        raise VenvError(f"FLEET_VENV {path} does not exist{hidden}; make it with the workers' "
                        f"Python {here}: {make}, or fix the path")
    try:
        made_with = venv_version(root)
    except OSError:
        raise VenvError(f"FLEET_VENV {path} is not a virtualenv (it has no pyvenv.cfg); "
                        f"make one: {make}") from None
    if made_with is not None and made_with != running:
        raise VenvError(
            f"FLEET_VENV {path} was made with Python {made_with[0]}.{made_with[1]}, but the "
            f"workers run Python {here}; remake it with the workers' Python: "
            f"python3 -m venv --clear {path}, then install the app's packages into it again")
    packages = root / "lib" / f"python{here}" / "site-packages"
    if not packages.is_dir():
        raise VenvError(f"FLEET_VENV {path} has no {packages.relative_to(root)}; remake it: "
                        f"python3 -m venv --clear {path}")
    before = list(sys.path)
    site.addsitedir(str(packages))  # NOTE: runs its .pth files, as the venv's own python would
    added = [entry for entry in sys.path if entry not in before]
    sys.path[:] = added + before
    return added
