"""Logging to stderr in the form the journal keeps well.

Under systemd, stderr is the journal (``JOURNAL_STREAM`` says so): each line
starts with a ``<N>`` syslog priority, which journald turns into the entry's
level, so ``journalctl -p warning`` works and no timestamp is printed twice.
By hand, lines carry a time and a level name instead.
"""

from __future__ import annotations

import logging
import os
import sys


def stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """Prefix every line (tracebacks too) with the record's syslog priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def setup(level: str, instance: str) -> None:
    """Send fleet's and waitress's logs to stderr, one line per event, tagged with the instance."""
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter(f"worker {instance}: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s worker {instance}: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # NOTE: once its threads are busy, waitress warns "Task queue depth" on
    # nearly every request (about 8 MB in an 8 s load run). Queueing is normal
    # under load, and the journal is no place for it.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
