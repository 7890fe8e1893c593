"""Build fleet's .deb inside a fresh container of a Debian release, as a user there would.

The package built on Debian 12 is not the one Debian 13 should get (units under /lib,
not /usr/lib), so each release's package is built on that release: the checkout is
copied in, ``packaging/install-deps --build`` installs Debian's build tools from that
release, and ``packaging/build-deb`` builds and lints it there.

Example::

    debs = build_debs("trixie", Path("/tmp/out"), newer="0.1.0+test1")
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from harness.container import Container, E2EError, ensure_base_tree

REPO = Path(__file__).resolve().parents[1]
SOURCE = "/root/fleet"
BUILD_SECONDS = 900  # NOTE: apt fetches debhelper and lintian, then the build runs the unit tests.


def copy_checkout(box: Container, tmp_dir: Path, *, untracked: bool = False, source: str = SOURCE) -> None:
    """Put the checkout's tracked files in ``source``, as ``git clone`` would.

    ``untracked`` adds the files git does not ignore, as ``packaging/build-deb`` does,
    so a change builds before it is committed.
    """
    extra = ["--others", "--exclude-standard"] if untracked else []
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", *extra],
                            capture_output=True, check=True).stdout  # fmt: skip
    files = b"".join(f + b"\0" for f in listed.split(b"\0") if f and (REPO / f.decode()).is_file())
    tarball = tmp_dir / "fleet.tar"
    subprocess.run(["tar", "-C", str(REPO), "--null", "--no-recursion", "-T", "-", "-cf", str(tarball)],
                   input=files, check=True)  # fmt: skip
    box.copy_in(tarball, "/var/tmp/fleet.tar")
    box.run("mkdir", "-p", source)
    box.run("tar", "-C", source, "-xf", "/var/tmp/fleet.tar")


def build_debs(suite: str, out: Path, *, newer: str) -> tuple[Path, Path]:
    """Build the package, and the same at version ``newer`` (to upgrade to), on ``suite``.

    Returns both .deb paths under ``out``. Raises E2EError with the build's output.
    """
    out.mkdir(parents=True, exist_ok=True)
    with Container.boot("fleet-build", base=ensure_base_tree(suite)) as box:
        copy_checkout(box, out, untracked=True)
        script = (
            f"cd {SOURCE} && packaging/install-deps --build && packaging/build-deb"
            # NOTE: nocheck: the same sources' tests just ran in the first build.
            f" && DEB_BUILD_OPTIONS=nocheck packaging/build-deb --version {newer} --outdir dist-newer"
        )
        result = box.run("sh", "-c", script, check=False, timeout=BUILD_SECONDS,
                         env={"DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
        box.publish_archives()
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
            raise E2EError(f"building fleet on {suite} failed with exit {result.returncode}:\n{tail}")
        root = Path(f"/proc/{box.leader}/root{SOURCE}")
        built = sorted((root / "dist").glob("fleet_*_all.deb")) + sorted((root / "dist-newer").glob("*.deb"))
        if len(built) != 2:
            raise E2EError(f"building fleet on {suite} left {[p.name for p in built]}, not 2 .debs")
        copies = []
        for deb in built:
            copy = out / deb.name
            copy.write_bytes(deb.read_bytes())
            copies.append(copy)
    return copies[0], copies[1]
