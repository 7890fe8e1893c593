"""Fill generated sections into fleet's man pages, from the code they document.

fleet-worker(8) lists the settings from ``fleet.settings.SETTINGS`` (line
``@SETTINGS@``); fleetctl(1) describes each command from fleetctl's own parser,
the text ``fleetctl COMMAND --help`` prints (line ``@COMMANDS@``). The package
build runs this (debian/rules), so a man page cannot drift from the code;
``tests/test_packaging.py`` checks the result::

    PYTHONPATH=. python3 packaging/man/render.py packaging/man/fleetctl.1.in > fleetctl.1
    man -l fleetctl.1
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path


def troff(text: str) -> str:
    """Escape plain text for troff: backslashes, hyphens (so they stay ASCII) and control lines."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def settings_section() -> str:
    """Render every setting as a tagged paragraph: name, default, then its help line."""
    from fleet.settings import SETTINGS

    lines: list[str] = []
    for s in SETTINGS:
        default = f"\\fB{troff(s.default)}\\fR" if s.default else "empty"
        lines += [".TP", f"\\fB{troff(s.env)}\\fR (default: {default})", troff(s.help)]
    return "\n".join(lines)


def _paragraphs(text: str) -> list[str]:
    """Render argparse description text: prose is refilled by troff, indented blocks kept as is."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        rows = block.splitlines()
        if out:
            out.append(".IP")
        if all(row.startswith(" ") for row in rows):
            out += [".nf", *(troff(row.strip()) for row in rows), ".fi"]
        else:
            out += [troff(row.strip()) for row in rows]
    return out


def commands_section() -> str:
    """Render each fleetctl command: its usage line, its --help description and options."""
    from fleet.ctl.cli import build_parser

    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines: list[str] = []
    for sub in verbs.choices.values():
        usage = sub.format_usage().removeprefix("usage: ").replace(" [-h]", "").strip()
        lines += [".TP", f".B {troff(usage)}", *_paragraphs(sub.description or "")]
        options = [a for a in sub._actions if a.option_strings and "-h" not in a.option_strings]
        if options:
            lines += [".RS"]
            for action in options:
                flags = ", ".join(f"\\fB{troff(o)}\\fR" for o in action.option_strings)
                value = f" \\fI{troff(str(action.metavar))}\\fR" if action.metavar else ""
                lines += [".TP", flags + value, troff(action.help or "")]
            lines += [".RE"]
    return "\n".join(lines)


SECTIONS: dict[str, Callable[[], str]] = {
    "@SETTINGS@": settings_section,
    "@COMMANDS@": commands_section,
}


def render(template: str) -> str:
    """Replace each placeholder line of ``template`` with its generated section."""
    found = [p for p in SECTIONS if f"\n{p}\n" in template]
    if not found:
        raise ValueError(f"the man page template has none of the lines {', '.join(SECTIONS)}")
    for placeholder in found:
        template = template.replace(f"\n{placeholder}\n", f"\n{SECTIONS[placeholder]()}\n")
    return template


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: render.py TEMPLATE  (writes the man page to stdout)", file=sys.stderr)
        return 2
    sys.stdout.write(render(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
