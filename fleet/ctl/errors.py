"""The two ways a fleetctl command fails, each carrying its own exit code.

A verb raises; ``cli.main`` prints ``fleetctl: error: <message>`` and the
optional ``hint:`` line and returns the code, so no expected failure ever
shows a traceback.
"""

from __future__ import annotations

from fleet.apps import App

EXIT_OK = 0
EXIT_FAILURE = 1  # something went wrong while doing it, or the machine isn't ready for it
EXIT_USAGE = 2  # the command line asks for something fleetctl won't do
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class CtlError(Exception):
    """A runtime failure: one sentence naming the problem, then the fix."""

    code = EXIT_FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(CtlError):
    """The command line is wrong: fix it and run again."""

    code = EXIT_USAGE


def command(app: App, verb: str, *rest: str) -> str:
    """The fleetctl command line for ``verb`` on ``app``, for hints: the default app needs no name.

    >>> command(App("shop"), "logs", "2"), command(App.default(), "restart")
    ('fleetctl logs shop 2', 'fleetctl restart')
    """
    return " ".join(["fleetctl", verb, *([] if app.is_default else [app.name]), *rest])
