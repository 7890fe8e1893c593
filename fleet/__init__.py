"""fleet: one Python web worker per core on a shared systemd socket."""

__version__ = "0.1.0"
