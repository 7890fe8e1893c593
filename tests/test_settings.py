"""The settings table: defaults, accepted forms, and the files rendered from it."""

from __future__ import annotations

import pytest

from fleet.settings import SETTINGS, Settings, SettingsError, defaults_file, markdown_table


def test_defaults_are_valid_and_documented():
    s = Settings.from_env({})
    assert (s.app, s.threads, s.graceful_timeout, s.instance) == ("fleet.app:app", 4, 30.0, "0")
    assert s.listen == ("127.0.0.1:8000",)
    assert s.health_path == "/healthz" and s.drain_file == "/run/fleet/drain"


@pytest.mark.parametrize(("env", "value", "attr", "expected"), [
    ("FLEET_GRACEFUL_TIMEOUT", "500ms", "graceful_timeout", 0.5),
    ("FLEET_GRACEFUL_TIMEOUT", "2min", "graceful_timeout", 120.0),
    ("FLEET_TIMEOUT", "0", "timeout", 0.0),
    ("FLEET_MAX_RSS", "512M", "max_rss", 512 * 1024**2),
    ("FLEET_MAX_RSS", "2g", "max_rss", 2 * 1024**3),
    ("FLEET_ACCESS_LOG", "Yes", "access_log", True),
    ("FLEET_LISTEN", "[::1]:80, unix:/run/x.sock 0.0.0.0:8080", "listen",
     ("[::1]:80", "unix:/run/x.sock", "0.0.0.0:8080")),
    ("FLEET_HEALTH_PATH", "off", "health_path", ""),
    ("FLEET_THREADS", "  ", "threads", 4),  # blank means the default, as a stray FLEET_X= line would
    ("FLEET_INLINE_MAX", "", "inline_max", 0.01),
    ("FLEET_INLINE_MAX", "0", "inline_max", 0.0),
    ("FLEET_INLINE_MAX", "1s", "inline_max", 1.0),
])
def test_accepted_forms(env, value, attr, expected):
    assert getattr(Settings.from_env({env: value}), attr) == expected


@pytest.mark.parametrize(("env", "value"), [
    ("FLEET_THREADS", "-1"), ("FLEET_THREADS", "1.5"), ("FLEET_THREADS", "2000"),
    ("FLEET_LISTEN", "host"), ("FLEET_LISTEN", "1.2.3.4:99999"), ("FLEET_LISTEN", "unix:"),
    ("FLEET_KEEPALIVE_MAX_AGE", "-1"), ("FLEET_MAX_REQUESTS", "lots"), ("FLEET_APP", "a.b"),
    ("FLEET_INLINE_MAX", "2s"), ("FLEET_INLINE_MAX", "fast"),
])
def test_rejected_forms_name_the_variable(env, value):
    with pytest.raises(SettingsError, match=f"^{env} must be .*, got {value!r}$"):
        Settings.from_env({env: value})


def test_defaults_file_lists_every_user_setting_commented_out():
    text = defaults_file()
    for s in SETTINGS:
        if s.env in ("FLEET_INSTANCE", "FLEET_LISTEN"):
            assert s.env not in text
        else:
            assert f"#{s.env}={s.default}\n" in text
    assert all(line == "" or line.startswith("#") for line in text.splitlines()), "nothing set by default"


def test_markdown_table_has_a_row_per_setting():
    assert len(markdown_table().splitlines()) == len(SETTINGS) + 2


@pytest.mark.source_tree
def test_readme_settings_table_is_the_generated_one():
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("<!-- settings:begin", 1)[1].split("-->", 1)[1].split("<!-- settings:end -->")[0]
    assert block.strip() == markdown_table(), "regenerate with: python3 -m fleet.settings --markdown"
