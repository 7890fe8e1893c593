"""fleetctl: scale, inspect and restart the fleet's systemd units.

Layout: ``cli`` parses and prints errors; ``preflight`` checks what must hold
first; one module per verb (``scale``, ``status``, ``restart``, ``logs``,
``drain``); ``state`` reads the fleet into plain values; ``jobs`` starts and
restarts workers and waits for them; ``systemd`` is the only module that runs
systemctl or journalctl.
"""
