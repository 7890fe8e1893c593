"""fleetctl: scale, inspect and restart the fleet's systemd units."""
