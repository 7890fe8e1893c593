"""fleetctl's bash completion, driven by a real bash the way readline drives it.

The script is sourced and its function called with ``COMP_WORDS``/``COMP_CWORD`` set, as
bash does on TAB; what it offers must be exactly what fleetctl's parser accepts. That it
is installed where Debian's bash-completion loads it is tested in tests/e2e.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from fleet.ctl.cli import VERBS, build_parser

pytestmark = [
    pytest.mark.source_tree,
    pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash"),
]

SCRIPT = Path(__file__).resolve().parent.parent / "packaging" / "bash-completion" / "fleetctl"


def complete(line: str, script: Path = SCRIPT, prelude: str = "") -> list[str]:
    """Return what TAB offers after ``line`` (a trailing space starts a new word)."""
    words = shlex.split(line) + ([""] if line.endswith(" ") or not line else [])
    program = (
        f"{prelude}\n. {shlex.quote(str(script))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\nCOMP_LINE={shlex.quote(line)}\nCOMP_POINT=${{#COMP_LINE}}\n"
        # NOTE: call whatever function `complete -p` registered, as bash itself would.
        "function=$(complete -p fleetctl | sed -n 's/.*-F \\([^ ]*\\) .*/\\1/p')\n"
        '"$function" fleetctl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", program],
                            capture_output=True, text=True, check=True)  # fmt: skip
    return [w for w in result.stdout.splitlines() if w]


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_first_word_completes_to_every_command() -> None:
    assert complete("fleetctl ") == list(VERBS)
    assert complete("fleetctl s") == ["scale", "status"]
    assert complete("fleetctl --version ") == list(VERBS)


def test_the_first_word_completes_to_the_top_level_options() -> None:
    assert set(complete("fleetctl -")) == options(build_parser())


@pytest.mark.parametrize("verb", VERBS)
def test_each_command_completes_to_exactly_its_options(verb: str) -> None:
    assert set(complete(f"fleetctl {verb} -")) == options(subparsers()[verb])


def test_options_complete_by_prefix() -> None:
    assert complete("fleetctl scale --f") == ["--force"]
    assert complete("fleetctl logs --fo") == ["--follow"]


def test_scale_offers_auto() -> None:
    assert complete("fleetctl scale ") == ["auto"]


def test_an_unknown_command_offers_nothing() -> None:
    assert complete("fleetctl frobnicate ") == []


def test_logs_offers_the_enabled_instances_but_not_after_lines(tmp_path: Path) -> None:
    wants = tmp_path / "fleet.service.wants"
    wants.mkdir()
    for i in ("1", "2", "10"):
        (wants / f"fleet-worker@{i}.service").symlink_to("/dev/null")
    # NOTE: the same script, reading a test directory instead of /etc/systemd/system.
    script = tmp_path / "fleetctl"
    script.write_text(SCRIPT.read_text().replace("/etc/systemd/system/fleet.service.wants", str(wants)))
    assert sorted(complete("fleetctl logs ", script)) == ["1", "10", "2"]
    assert complete("fleetctl logs -f 1", script) == ["1", "10"]
    assert complete("fleetctl logs -n ", script) == []
