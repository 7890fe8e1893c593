"""fleetctl's command line: every usage error, --help, --version and the preconditions, for real.

Usage errors are a table (argv -> exit status, a piece of stderr) run through
``main()`` in-process, and a few as a real ``python3 -m fleet.ctl.cli``. The
preconditions are not faked: "systemd is not running" is checked on a machine
where it really is not (this dev box, a build chroot), "needs root" by running
fleetctl as nobody (uid 65534) with setpriv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fleet
from fleet.ctl import cli
from fleet.ctl.cli import VERBS, build_parser, main

# The directory that holds the imported fleet package (a checkout, or pybuild's build dir).
IMPORT_ROOT = str(Path(fleet.__file__).resolve().parent.parent)
BOOTED = Path("/run/systemd/system").is_dir()
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def pid1() -> str:
    return Path("/proc/1/comm").read_text().strip()


# argv -> (exit status, a piece of stderr). Every one is wrong on any machine, so
# each is found before any precondition (this machine may have no systemd at all).
USAGE_ERRORS: list[tuple[list[str], str]] = [
    ([], "fleetctl needs a command: scale, status, restart, logs, drain, undrain, apps, new, apply"),
    (["frob"], "unknown command 'frob'; the commands are scale, status"),
    (["Status"], "unknown command 'Status'"),
    (["-x"], "fleetctl does not take '-x'"),
    (["--json", "status"], "fleetctl does not take '--json' before the command"),
    (["scale"], "scale needs a size: a positive whole number, 'auto', +K or -K"),
    (["scale", "x"], "scale needs a positive whole number, 'auto', +K or -K, got 'x'"),
    (["scale", "0"], "got '0'"),
    (["scale", "00"], "got '00'"),
    (["scale", "1.5"], "got '1.5'"),
    (["scale", "-1.5"], "got '-1.5'"),
    (["scale", "+"], "got '+'"),
    (["scale", "+-1"], "got '+-1'"),
    (["scale", "3x"], "got '3x'"),
    (["scale", "auto3"], "got 'auto3'"),
    (["scale", ""], "got ''"),
    (["scale", "3", "4"], "fleetctl scale does not take '4'"),
    (["scale", "-x"], "fleetctl scale does not take '-x'"),
    (["scale", "3", "--forse"], "fleetctl scale does not take '--forse'"),
    (["status", "--bogus"], "fleetctl status does not take '--bogus'"),
    (["status", "1"], "no app '1': an app's name is 1-32 lower-case letters"),
    (["status", "1", "2"], "fleetctl status does not take '2'"),
    (["restart", "now"], "no app 'now': /etc/fleet/apps/now.conf does not exist"),
    (["restart", "shop", "--all"], "no app 'shop'"),
    (["scale", "Shop", "2"], "no app 'Shop'"),
    (["new", "shop"], "the following arguments are required: --listen, --module"),
    (["new", "9x", "--listen", "127.0.0.1:8001", "--module", "a:b"], "'9x' cannot name an app"),
    (["new", "auto", "--listen", "127.0.0.1:8001", "--module", "a:b"], "'auto' cannot name an app"),
    (["new", "shop", "--listen", "8001", "--module", "a:b"], "FLEET_LISTEN must be HOST:PORT"),
    (["new", "shop", "--listen", ":8001", "--module", "a", "--workers", "0"], "FLEET_WORKERS must be auto"),
    (["restart", "--json"], "fleetctl restart does not take '--json'"),
    (["logs", "abc"], "no app 'abc'"),
    (["logs", "default", "x"], "logs takes a worker's number such as 3 (or fleet-worker@3), got 'x'"),
    (["logs", "0"], "got '0'"),
    (["logs", "fleet-worker@x"], "got 'fleet-worker@x'"),
    (["logs", "-n", "x"], "-n needs a whole number of lines, got 'x'"),
    (["logs", "-n", "-5"], "-n needs a whole number of lines, got '-5'"),
    (["logs", "-n"], "argument -n/--lines: expected one argument"),
    (["logs", "1", "2"], "no app '1'"),
    (["logs", "1", "2", "3"], "fleetctl logs does not take '3'"),
    (["drain", "now"], "no app 'now'"),
    (["drain", "default", "now"], "fleetctl drain does not take 'now'"),
    (["undrain", "--force"], "fleetctl undrain does not take '--force'"),
]


def _id(value: object) -> str | None:
    return " ".join(value) if isinstance(value, list) else None


@pytest.mark.parametrize(("argv", "expected"), USAGE_ERRORS, ids=_id)
def test_usage_error_exits_2_with_one_error_line(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("fleetctl: error: "), err
    assert expected in lines[0]
    assert all(line.startswith("hint: ") for line in lines[1:]), err
    assert "Traceback" not in err


@pytest.mark.parametrize(("size", "hint"), [
    ("0", "a fleet has at least 1 worker; to stop them all: sudo systemctl stop fleet"),
    ("x", "fleetctl scale auto runs one worker per usable CPU"),
])  # fmt: skip
def test_scale_usage_error_hints_at_the_fix(size: str, hint: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scale", size]) == 2
    assert f"hint: {hint}" in capsys.readouterr().err


@pytest.mark.parametrize("verb", VERBS)
def test_every_command_has_help_with_examples(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([verb, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fleetctl {verb}")
    assert "examples:" in out and f"fleetctl {verb}" in out.split("examples:", 1)[1]


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert f"\n    {verb} " in out or f"\n    {verb}\n" in out, verb
    assert "exit status: 0 done, 1 failed" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"fleetctl {fleet.__version__}\n"


def test_parser_is_built_separately_and_reads_every_verb() -> None:
    parser = build_parser()
    assert parser.parse_args(["scale", "-2"]).first == "-2"
    assert parser.parse_args(["scale", "shop", "-2"]).second == "-2"
    assert parser.parse_args(["scale", "+3", "--force"]).force is True
    args = parser.parse_args(["logs", "-f", "-n", "5", "fleet-worker@2"])
    assert (args.first, args.lines, args.follow) == ("fleet-worker@2", 5, True)
    assert parser.parse_args(["restart", "--all"]).all is True
    assert parser.parse_args(["status", "--json"]).json is True


def run_fleetctl(
    *argv: str, user: list[str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``python3 -m fleet.ctl.cli ARGV`` as a real process (optionally through setpriv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = IMPORT_ROOT
    return subprocess.run(
        [*(user or []), sys.executable, "-m", "fleet.ctl.cli", *argv],
        capture_output=True, text=True, env=env, timeout=timeout, cwd="/",
    )  # fmt: skip


@pytest.mark.parametrize(("argv", "code", "expected"), [
    (["frob"], 2, "fleetctl: error: unknown command 'frob'"),
    (["scale", "1.5"], 2, "error: scale needs a positive whole number, 'auto', +K or -K, got '1.5'"),
    (["logs", "-n", "x"], 2, "fleetctl: error: -n needs a whole number of lines, got 'x'"),
    (["--version"], 0, ""),
])  # fmt: skip
def test_as_a_real_process(argv: list[str], code: int, expected: str) -> None:
    result = run_fleetctl(*argv)
    assert result.returncode == code, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_python_dash_m_fleet_ctl_runs_it_too() -> None:
    env = {**os.environ, "PYTHONPATH": IMPORT_ROOT}
    argv = [sys.executable, "-m", "fleet.ctl", "--version"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert (result.returncode, result.stdout) == (0, f"fleetctl {fleet.__version__}\n")


# --- preconditions, for real ----------------------------------------------------------

no_systemd = pytest.mark.skipif(BOOTED, reason="systemd is PID 1 here; tests/e2e covers that case")


@no_systemd
@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["logs", "-n", "5"]])
def test_without_systemd_read_only_commands_say_so(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"fleetctl: error: systemd is not running on this machine (PID 1 is {pid1()}); "
        "fleet needs it to supervise workers",
        "hint: on a dev box, `make try` boots a throwaway container with systemd and fleet installed",
    ]


@no_systemd
@pytest.mark.skipif(os.geteuid() != 0, reason="as a user, changing commands stop at 'needs root' first")
@pytest.mark.parametrize("argv", [["scale", "3"], ["scale", "auto"], ["restart"], ["drain"], ["undrain"]])
def test_without_systemd_changing_commands_say_so_too(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    assert "systemd is not running on this machine" in capsys.readouterr().err


def _nobody_can_run_fleetctl() -> str | None:
    """Why fleetctl cannot be run as uid 65534 here, or None when it can."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return "running as another user needs root and setpriv (util-linux)"
    probe = run_fleetctl("--version", user=NOBODY)
    if probe.returncode != 0:
        return f"uid 65534 cannot run fleetctl from {IMPORT_ROOT}: {probe.stderr.strip()[-200:]}"
    return None


@pytest.fixture(scope="module")
def as_nobody() -> list[str]:
    reason = _nobody_can_run_fleetctl()
    if reason:
        pytest.skip(reason)
    return NOBODY


@pytest.mark.parametrize("argv", [
    ["scale", "3"], ["scale", "-1"], ["scale", "auto", "--force"], ["restart"], ["drain"], ["undrain"],
])  # fmt: skip
def test_changing_commands_need_root(argv: list[str], as_nobody: list[str]) -> None:
    result = run_fleetctl(*argv, user=as_nobody)
    assert result.returncode == 1
    # NOTE: root is checked before systemd (fleet/ctl/preflight.py), so this is
    # the message whether or not systemd runs here.
    command = " ".join(argv)
    assert result.stderr == f"fleetctl: error: fleetctl {argv[0]} needs root; run: sudo fleetctl {command}\n"


def test_usage_errors_come_before_root(as_nobody: list[str]) -> None:
    result = run_fleetctl("scale", "x", user=as_nobody)
    assert result.returncode == 2
    assert "got 'x'" in result.stderr and "needs root" not in result.stderr


@no_systemd
@pytest.mark.parametrize("argv", [["status"], ["logs"]])
def test_read_only_commands_do_not_need_root(argv: list[str], as_nobody: list[str]) -> None:
    result = run_fleetctl(*argv, user=as_nobody)
    assert result.returncode == 1
    assert "needs root" not in result.stderr
    assert result.stderr.startswith("fleetctl: error: systemd is not running on this machine")


# --- the lock that keeps two changes from interleaving ---------------------------------


def test_a_second_change_waits_for_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    lock = tmp_path / "fleetctl.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time\n"
         "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
         "f.write('fleetctl scale (pid 1)'); f.flush(); print('held', flush=True); time.sleep(1)\n",
         str(lock)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    started = time.monotonic()
    with cli.exclusive("restart", lock):
        waited = time.monotonic() - started
    holder.wait()
    assert waited > 0.8, "entered while the other fleetctl held the lock"
    assert "fleetctl restart: waiting for fleetctl scale (pid 1) to finish..." in capsys.readouterr().err
    assert not lock.exists(), "the lock file is removed when done (a purge leaves nothing)"


def test_the_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    """Three fleetctls at once each hold the lock alone, though each removes the file after."""
    log = tmp_path / "log"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from fleet.ctl import cli\n"
        "for _ in range(5):\n"
        "    with cli.exclusive('scale', Path(sys.argv[1])):\n"
        "        with open(sys.argv[2], 'a') as f: f.write('in\\n')\n"
        "        time.sleep(0.02)\n"
        "        with open(sys.argv[2], 'a') as f: f.write('out\\n')\n"
    )
    env = {**os.environ, "PYTHONPATH": IMPORT_ROOT}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "lock"), str(log)], env=env,
                              stderr=subprocess.DEVNULL) for _ in range(3)]  # fmt: skip
    assert [p.wait(30) for p in procs] == [0, 0, 0]
    assert log.read_text() == "in\nout\n" * 15, "two held the lock at once"
    assert not (tmp_path / "lock").exists()


@pytest.mark.source_tree
def test_readme_shows_the_current_help() -> None:
    """README.md quotes `fleetctl --help`; regenerate it with COLUMNS=80 when the parser changes."""
    root = Path(__file__).resolve().parent.parent
    help_text = subprocess.run(
        [sys.executable, "-m", "fleet.ctl", "--help"], capture_output=True, text=True, check=True,
        env={**os.environ, "COLUMNS": "80", "PYTHONPATH": str(root)},
    ).stdout
    readme = (root / "README.md").read_text()
    quoted = readme.split("<!-- fleetctl-help:begin", 1)[1].split("```\n", 1)[1].split("\n```", 1)[0]
    assert quoted == help_text.rstrip()
