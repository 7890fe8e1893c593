"""fleet's development harness: what the tests, the bench and ``make try`` drive fleet with.

One module per thing it wraps: ``container`` (throwaway systemd containers), ``build``
(the .deb built in one), ``fleet`` (the package installed in one, and its probes),
``try_fleet`` (``make try``), ``http`` (a GET), ``net`` (loopback ports, /proc/net),
``procs`` (processes started and read by PID), ``worker`` (fleet-worker started as
systemd starts it), ``wrk`` (load and its report), ``attacks`` (hostile clients).
Not shipped: the package is ``fleet/`` alone.
"""
