"""The systemctl boundary's pure parts: `systemctl show` parsing, unit names, error wording."""

from __future__ import annotations

from fleet.apps import App
from fleet.ctl import systemctl as systemd
from fleet.ctl.systemctl import SystemctlError, parse_show


def test_parse_show_splits_units_and_keeps_repeated_properties() -> None:
    text = "Id=a.socket\nListen=[::]:80 (Stream)\nListen=/run/a (Stream)\n\nId=b.service\nStatusText=x=y\n\n"
    assert parse_show(text) == [
        {"Id": "a.socket", "Listen": "[::]:80 (Stream)\n/run/a (Stream)"},
        {"Id": "b.service", "StatusText": "x=y"},
    ]
    assert parse_show("") == []


def test_unit_names() -> None:
    default, shop = App.default(), App("shop")
    assert default.unit("3") == "fleet-worker@3.service"
    assert default.short("3") == "fleet-worker@3"
    assert default.instance_of("fleet-worker@12.service") == "12"
    assert default.instance_of("fleet-worker@.service") is None
    assert default.instance_of("fleet.service") is None
    assert default.instance_of("fleet-worker@3.socket") is None
    assert default.instance_of("fleet-shop-worker@3.service") is None
    assert (shop.socket, shop.service, shop.template) == (
        "fleet-shop.socket", "fleet-shop.service", "fleet-shop-worker@.service")
    assert shop.instance_of("fleet-shop-worker@3.service") == "3"
    assert shop.instance_of("fleet-worker@3.service") is None


def test_a_journal_error_line_loses_the_worker_prefix_the_unit_name_repeats() -> None:
    line = "worker 4: cannot import WSGI app 'x:y': No module named 'x'"
    assert systemd.without_worker_prefix(line) == "cannot import WSGI app 'x:y': No module named 'x'"
    assert systemd.without_worker_prefix("worker 0: a: b") == "a: b"
    unprefixed = "Main process exited, code=killed"
    assert systemd.without_worker_prefix(unprefixed) == unprefixed


def test_systemctl_error_keeps_the_complaint_and_names_failed_jobs() -> None:
    stderr = (
        "Job for fleet-worker@4.service failed because the control process exited with error code.\n"
        'See "systemctl status fleet-worker@4.service" and "journalctl -xeu fleet-worker@4.service"'
        " for details.\n"
    )
    exc = SystemctlError(["systemctl", "start", "fleet-worker@4.service"], 1, stderr)
    assert exc.failed_units() == ["fleet-worker@4.service"]
    assert exc.detail == (
        "Job for fleet-worker@4.service failed because the control process exited with error code."
    )
    assert SystemctlError(["systemctl"], 3, "").detail == "exit status 3"
    warning = "Warning: Stopping fleet-worker@9.service, but it can still be activated by:\n  fleet.socket\n"
    assert SystemctlError(["systemctl"], 1, warning + "Failed: x\n").detail == "Failed: x"
