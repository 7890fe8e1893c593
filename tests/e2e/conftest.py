"""Fixtures of the end-to-end suite: a cached base tree, throwaway containers, the .deb.

Every test here boots systemd as PID 1 in a disposable container (see ``harness/container.py``);
``fleet`` is that container with the package installed and serving (see ``harness/fleet.py``).
Without root or the tools the suite is skipped with the reason, except in CI (``CI=true``),
where a suite that silently skips would prove nothing, so it fails instead.

Each test runs on Debian 12 (bookworm); a test marked ``@pytest.mark.releases("bookworm",
"trixie")`` runs on each release named, with that release's own build of the package.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.build import build_debs
from harness.container import (
    CLEAN_PATH,
    SUITE,
    SUITES,
    Container,
    E2EError,
    ensure_base_tree,
    newest_deb,
    skip_reason,
)
from harness.fleet import Fleet, install_fleet

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # NOTE: also registered in pyproject.toml; repeated here for runs that only have tests/.
    config.addinivalue_line("markers", "e2e: boots a real systemd in a throwaway container")
    config.addinivalue_line("markers", "source_tree: needs the source checkout, not just tests/")
    config.addinivalue_line("markers", "releases(*suites): run on each of these Debian releases")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Give every test its Debian release: bookworm, or each one its ``releases`` mark names.

    NOTE: session-scoped, so pytest runs one release's tests together and builds each
    release's tree and package once. A test that parametrizes ``suite`` itself is left alone.
    """
    releases = metafunc.definition.get_closest_marker("releases")
    if "suite" not in metafunc.fixturenames:
        if releases is None:
            return
        # NOTE: a module fixture overriding ``fleet`` (test_operations.py) hides the
        # conftest one's needs from pytest's closure; the mark says the test needs a release.
        metafunc.fixturenames.append("suite")
    for given in metafunc.definition.iter_markers("parametrize"):
        names = given.args[0]
        if "suite" in (names.replace(" ", "").split(",") if isinstance(names, str) else names):
            return
    suites = releases.args if releases else (SUITE,)
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise pytest.UsageError(f"releases({', '.join(unknown)}): fleet supports {', '.join(SUITES)}")
    metafunc.parametrize("suite", suites, scope="session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e, before ``-m`` selects on the marks."""
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.source_tree)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Attach the container's journal and console to a failed test's report."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    funcargs = getattr(item, "funcargs", {})
    box = funcargs.get("container")
    if report.when != "call" or not report.failed or not isinstance(box, Container):
        return
    if box.alive():
        journal = box.run("journalctl", "--no-pager", "-n", "80", check=False, timeout=20)
        report.sections.append(("container journal (last 80 lines)", journal.stdout))
    report.sections.append((f"nspawn console ({box.log_path})", box.log_tail(40)))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session", autouse=True)
def _e2e_can_run() -> None:
    """Skip (or, in CI, fail) the whole suite when this machine cannot boot containers."""
    if not (REPO / "units").is_dir() or not (REPO / "pyproject.toml").is_file():
        # NOTE: the package build runs tests/ without the checkout (and as root): skip even
        # in CI, or building the .deb would boot containers and build the .deb again.
        pytest.skip("e2e tests need the source checkout, not just tests/")
    reason = skip_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI must run the e2e suite, but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def suite() -> str:
    """The Debian release of a test left unparametrized: the host's (bookworm).

    NOTE: pytest_generate_tests parametrizes ``suite`` for every test whose fixtures it
    sees need it; a module fixture overriding ``fleet`` hides that need, so this is its value.
    """
    return SUITE


@pytest.fixture(scope="session")
def base_tree(suite: str) -> Path:
    """The cached root tree of the test's Debian release, that containers boot from (built once, ~50 s)."""
    try:
        return ensure_base_tree(suite)
    except E2EError as error:
        pytest.fail(str(error), pytrace=False)


def boot_for_test(base_tree: Path) -> Iterator[Container]:
    """Boot a container on ``base_tree`` for a fixture to yield; stop it whatever the outcome."""
    try:
        box = Container.boot(base=base_tree)
    except E2EError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture
def container(base_tree: Path) -> Iterator[Container]:
    """A freshly booted throwaway container, discarded after the test whatever its outcome."""
    yield from boot_for_test(base_tree)


@pytest.fixture(scope="session")
def release_debs(suite: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The package, and the same at a higher version, built in a container of a release other than
    the host's (about 95 s, once per session)."""
    out = tmp_path_factory.mktemp(f"debs-{suite}")
    with open(REPO / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    try:
        return build_debs(suite, out, newer=f"{version}+test1")
    except E2EError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def deb(suite: str, request: pytest.FixtureRequest) -> Path:
    """The fleet package under test, built on the test's release.

    On the host's release (Debian 12): ``$FLEET_E2E_DEB``, or what ``make deb`` builds here.
    On another: built in a container of that release (``release_debs``).
    """
    if suite != SUITE:
        built: tuple[Path, Path] = request.getfixturevalue("release_debs")
        return built[0]
    given = os.environ.get("FLEET_E2E_DEB")
    if given:
        path = Path(given).resolve()
        if not path.is_file():
            pytest.fail(
                f"FLEET_E2E_DEB={given} is not a file: point it at a built .deb, "
                "or unset it to build one with 'make deb'",
                pytrace=False,
            )
        return path
    # NOTE: a clean PATH, or pybuild picks pyenv's python3 before Debian's (see FACTS.md).
    result = subprocess.run(
        ["make", "-C", str(REPO), "deb"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": CLEAN_PATH},
    )
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        pytest.fail(f"'make deb' failed with exit {result.returncode}:\n{output}", pytrace=False)
    built = newest_deb(REPO / "dist")
    if built is None:
        pytest.fail("'make deb' succeeded but left no dist/fleet_*_all.deb", pytrace=False)
    return built


@pytest.fixture
def fleet(container: Container, deb: Path) -> Fleet:
    """The package installed on a free port and serving GET /, one worker per CPU (its postinst)."""
    installed = install_fleet(container, deb)
    installed.wait_serving()
    return installed


@pytest.fixture(scope="session")
def newer_deb(
    suite: str, deb: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Path:
    """The same package with a higher version, to upgrade to (built once per session and release)."""
    if suite != SUITE:
        built: tuple[Path, Path] = request.getfixturevalue("release_debs")
        return built[1]
    version = deb.name.split("_")[1] + "+test1"
    outdir = tmp_path_factory.mktemp("newer-deb")
    result = subprocess.run(
        [str(REPO / "packaging/build-deb"), "--version", version, "--outdir", str(outdir)],
        capture_output=True,
        text=True,
        # NOTE: nocheck: the same sources' tests already ran when `deb` was built.
        env={"PATH": CLEAN_PATH, "LC_ALL": "C.UTF-8", "HOME": "/root", "DEB_BUILD_OPTIONS": "nocheck"},
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        pytest.fail(f"building fleet {version} failed with exit {result.returncode}:\n{tail}", pytrace=False)
    return outdir / f"fleet_{version}_all.deb"
