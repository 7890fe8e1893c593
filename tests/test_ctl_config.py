"""Reading /etc/default/fleet as the workers' EnvironmentFile= does, and the drain verbs on real files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fleet import apps
from fleet.apps import App
from fleet.ctl import config, drain
from fleet.ctl.errors import CtlError

DEFAULT = App.default()


@pytest.fixture(autouse=True)
def _defaults_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's /etc/default/fleet is tmp_path/"fleet"."""
    monkeypatch.setattr(apps, "DEFAULTS_FILE", tmp_path / "fleet")


@pytest.mark.parametrize(("text", "values"), [
    ("FLEET_THREADS=8\n", {"FLEET_THREADS": "8"}),
    ("# FLEET_THREADS=8\n; x=1\n\n", {}),
    ('FLEET_APP="my.app:wsgi"\n', {"FLEET_APP": "my.app:wsgi"}),
    ("FLEET_APP='my.app:wsgi'\n", {"FLEET_APP": "my.app:wsgi"}),
    ("export FLEET_THREADS=2\n", {"FLEET_THREADS": "2"}),
    ("  FLEET_THREADS = 3  \n", {"FLEET_THREADS": "3"}),
    ("FLEET_DRAIN_FILE=/run/x # not a comment\n", {"FLEET_DRAIN_FILE": "/run/x # not a comment"}),
    ("FLEET_THREADS=1\nFLEET_THREADS=2\n", {"FLEET_THREADS": "2"}),
    ("no equals sign\n9BAD=1\n", {}),
])  # fmt: skip
def test_parse_env_file(text: str, values: dict[str, str]) -> None:
    assert config.parse_env_file(text) == values


def test_drain_file_from_the_defaults_file_or_the_settings_table(tmp_path: Path) -> None:
    defaults = tmp_path / "fleet"
    assert config.drain_file(DEFAULT) == "/run/fleet/drain", "no file: the table's default"
    defaults.write_text("#FLEET_DRAIN_FILE=/nope\nFLEET_DRAIN_FILE=\n")
    assert config.drain_file(DEFAULT) == "/run/fleet/drain", "empty means the default, as for the worker"
    defaults.write_text("FLEET_DRAIN_FILE=/srv/lb/out\nFLEET_HEALTH_PATH=/ping\n")
    assert (config.drain_file(DEFAULT), config.health_path(DEFAULT)) == ("/srv/lb/out", "/ping")


def test_drain_and_undrain_are_idempotent_and_say_what_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "run" / "fleet" / "drain"
    defaults = tmp_path / "fleet"
    defaults.write_text(f"FLEET_DRAIN_FILE={target}\n")

    assert drain.drain(DEFAULT) == 0
    assert target.is_file()
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o755, "workers (not root) must see inside"
    assert drain.drain(DEFAULT) == 0
    assert drain.undrain(DEFAULT) == 0
    assert not target.exists()
    assert drain.undrain(DEFAULT) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"drained: created {target}; every worker's /healthz now answers 503, requests are still served",
        f"already drained ({target} exists); nothing changed",
        f"undrained: removed {target}; every worker's /healthz answers 200 again",
        f"not drained ({target} does not exist); nothing changed",
    ]


def test_drain_into_a_path_that_cannot_be_made_is_one_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    defaults = tmp_path / "fleet"
    defaults.write_text(f"FLEET_DRAIN_FILE={blocker}/drain\n")
    with pytest.raises(CtlError) as caught:
        drain.drain(DEFAULT)
    assert caught.value.message.startswith(f"cannot create the drain file {blocker}/drain: ")


def test_drain_file_off_and_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    defaults = tmp_path / "fleet"
    defaults.write_text("FLEET_DRAIN_FILE=off\nFLEET_HEALTH_PATH=OFF\n")
    assert (config.drain_file(DEFAULT), config.health_path(DEFAULT)) == ("", "")
    with pytest.raises(CtlError) as caught:
        drain.drain(DEFAULT)
    assert caught.value.message.startswith(f"draining is off: FLEET_DRAIN_FILE is 'off' in {defaults}; ")
    assert drain.undrain(DEFAULT) == 0
    assert "nothing changed" in capsys.readouterr().out

    defaults.write_text("FLEET_DRAIN_FILE=drain\n")
    with pytest.raises(CtlError) as caught:
        config.drain_file(DEFAULT)
    assert caught.value.message == (
        f"FLEET_DRAIN_FILE in {defaults} must be a path starting with '/', or off, got 'drain'; "
        "fix it there (the workers cannot start with it either)"
    )


def test_drain_with_the_health_path_off_says_nothing_reports_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    defaults = tmp_path / "fleet"
    defaults.write_text(f"FLEET_DRAIN_FILE={tmp_path}/drain\nFLEET_HEALTH_PATH=off\n")
    assert drain.drain(DEFAULT) == 0
    assert "FLEET_HEALTH_PATH is off, so no health check reports it" in capsys.readouterr().out
