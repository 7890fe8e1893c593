"""Several apps per host: names, config files, the generator's units, virtualenvs and ``fleetctl new``.

What systemd makes of the generated units, and apps serving side by side, is tested in
a real systemd by tests/e2e/test_apps.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from fleet import apps, generator
from fleet.apps import App, AppConfig, AppError, check_name
from fleet.ctl import catalog
from fleet.ctl.errors import UsageError
from fleet.envfile import parse_env_file, set_value
from fleet.venv import VenvError, activate

# NOTE: the generator's tests read the shipped units/fleet-worker@.service.
pytestmark = pytest.mark.source_tree

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "units" / "fleet-worker@.service"


@pytest.fixture
def apps_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "apps"
    directory.mkdir()
    monkeypatch.setattr(apps, "APPS_DIR", directory)
    return directory


@pytest.mark.parametrize("name", ["shop", "a", "blog-2", "x" * 32])
def test_names_that_can_be_apps(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["default", "auto", "all", "fleet", "worker", "Shop", "2shop", "-x",
                                  "x-", "a_b", "a.b", "x" * 33, "", "shop-worker", "a@b"])
def test_names_that_cannot_be_apps_say_why(name: str) -> None:
    with pytest.raises(AppError, match="cannot name an app"):
        check_name(name)


def test_configured_apps_are_the_conf_files_with_usable_names(apps_dir: Path) -> None:
    for name in ("shop.conf", "blog.conf", "Bad.conf", "notes.txt", "default.conf"):
        (apps_dir / name).write_text("")
    assert [a.name for a in apps.every()] == ["default", "blog", "shop"]
    assert apps.shares_cpus()


def _config(text: str, name: str = "shop") -> AppConfig:
    return AppConfig.parse(App(name), parse_env_file(text))


@pytest.mark.parametrize(("text", "message"), [
    ("FLEET_APP=a:b\n", "sets no FLEET_LISTEN; add where the app listens"),
    ("FLEET_LISTEN=8001\n", "FLEET_LISTEN in /etc/fleet/apps/shop.conf must be HOST:PORT"),
    ("FLEET_LISTEN=:8001\nFLEET_WORKERS=0\n", "FLEET_WORKERS in /etc/fleet/apps/shop.conf must be auto or a"),
    ("FLEET_LISTEN=:8001\nFLEET_WORKERS=many\n", "got 'many'"),
    ("FLEET_LISTEN=:8001\nFLEET_USER=Bad User\n", "FLEET_USER in /etc/fleet/apps/shop.conf must be a user"),
    ("FLEET_LISTEN=:8001\nFLEET_SECRETS=s.env\n", "FLEET_SECRETS in /etc/fleet/apps/shop.conf must be an"),
    ("FLEET_LISTEN=unix:/run/s.sock\nFLEET_SOCKET_MODE=rw\n", "FLEET_SOCKET_MODE in /etc/fleet/apps/shop"),
    ("FLEET_LISTEN=:8001\nFLEET_THREADS=lots\n", "FLEET_THREADS in /etc/fleet/apps/shop.conf must be"),
    ("FLEET_LISTEN=:8001\nFLEET_VENV=venv\n", "FLEET_VENV in /etc/fleet/apps/shop.conf must be an absolute"),
])  # fmt: skip
def test_a_bad_config_is_one_error_naming_the_key_and_the_file(text: str, message: str) -> None:
    with pytest.raises(AppError) as caught:
        _config(text)
    assert message in str(caught.value)


def test_problems_on_this_machine_name_the_fix(tmp_path: Path) -> None:
    secrets = tmp_path / "shop.env"
    config = _config(f"FLEET_LISTEN=unix:/run/s.sock\nFLEET_USER=nosuchuser-xyz\nFLEET_SECRETS={secrets}\n"
                     "FLEET_SOCKET_GROUP=nosuchgroup-xyz\n")
    problems = config.problems()
    assert problems[0].startswith("FLEET_USER: no user 'nosuchuser-xyz' on this machine; create it")
    assert problems[1].startswith("FLEET_SOCKET_GROUP: no group 'nosuchgroup-xyz'")
    assert problems[2] == (f"FLEET_SECRETS file {secrets} does not exist; create it, readable by root "
                           f"only: install -m 600 /dev/null {secrets}")
    secrets.write_text("DB_PASSWORD=x\n")
    secrets.chmod(0o644)
    assert config.problems()[2].endswith(f"is readable by every user (mode 0644); make it private: "
                                         f"chmod 600 {secrets}")
    secrets.chmod(0o640)
    assert len(config.problems()) == 2


def _generate(apps_dir: Path, out: Path) -> list[str]:
    out.mkdir(exist_ok=True)
    return generator.generate(out, apps_dir, TEMPLATE.read_text())


def test_the_generator_makes_each_apps_units_and_links(apps_dir: Path, tmp_path: Path) -> None:
    (apps_dir / "shop.conf").write_text("FLEET_APP=mysite.wsgi:application\nFLEET_LISTEN=127.0.0.1:8001\n"
                                        "FLEET_WORKERS=2\nFLEET_VENV=/srv/mysite/venv\n")
    (apps_dir / "blog.conf").write_text("FLEET_LISTEN=unix:/run/blog/blog.sock\nFLEET_WORKERS=1\n"
                                        "FLEET_USER=blog\nFLEET_SECRETS=/etc/fleet/apps/blog.env\n")
    (apps_dir / "bad.conf").write_text("FLEET_LISTEN=nowhere\n")
    out = tmp_path / "out"
    skipped = _generate(apps_dir, out)
    assert skipped == [f"app bad skipped: FLEET_LISTEN in {apps_dir}/bad.conf must be HOST:PORT, "
                       "[IPV6]:PORT or unix:/PATH, separated by spaces, got 'nowhere'"]
    made = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert made == [
        "fleet-blog-worker@.service", "fleet-blog.service", "fleet-blog.service.wants",
        "fleet-blog.service.wants/fleet-blog-worker@1.service", "fleet-blog.socket",
        "fleet-shop-worker@.service", "fleet-shop.service", "fleet-shop.service.wants",
        "fleet-shop.service.wants/fleet-shop-worker@1.service",
        "fleet-shop.service.wants/fleet-shop-worker@2.service", "fleet-shop.socket",
        "multi-user.target.wants", "multi-user.target.wants/fleet-blog.service",
        "multi-user.target.wants/fleet-shop.service", "sockets.target.wants",
        "sockets.target.wants/fleet-blog.socket", "sockets.target.wants/fleet-shop.socket",
    ]  # fmt: skip
    assert os.readlink(out / "fleet-shop.service.wants/fleet-shop-worker@2.service") == str(
        out / "fleet-shop-worker@.service")
    shop_socket = (out / "fleet-shop.socket").read_text()
    assert "ListenStream=127.0.0.1:8001\n" in shop_socket and "DeferAcceptSec=5\n" in shop_socket
    blog_socket = (out / "fleet-blog.socket").read_text()
    assert "ListenStream=/run/blog/blog.sock\n" in blog_socket and "DeferAcceptSec" not in blog_socket
    assert "SocketGroup=www-data\nSocketMode=0660\n" in blog_socket
    assert "ExecReload=/usr/bin/fleetctl restart shop\n" in (out / "fleet-shop.service").read_text()


def _directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith(("#", "["))]


def test_a_generated_worker_is_the_shipped_template_with_only_its_names_changed(tmp_path: Path) -> None:
    shipped = TEMPLATE.read_text()
    config = _config("FLEET_LISTEN=127.0.0.1:8001\nFLEET_SECRETS=/etc/fleet/apps/shop.env\n")
    made = generator.worker_unit(config, shipped)
    # Every line of the shipped [Unit] and [Service] (the sandbox above all) is kept, but those
    # naming the default app's units, files and user, each of which is replaced.
    named = ("Description=", "PartOf=", "Requires=", "After=", "Sockets=", "EnvironmentFile=",
             "RuntimeDirectory=", "StateDirectory=", "SyslogIdentifier=", "User=", "DynamicUser=")
    kept = [d for d in _directives(shipped.split("[Install]")[0]) if not d.startswith(named)]
    assert [d for d in _directives(made) if d in kept] == kept
    for line in ("PartOf=fleet-shop.service", "Requires=fleet-shop.socket", "After=fleet-shop.socket",
                 "Sockets=fleet-shop.socket", "EnvironmentFile=/etc/fleet/apps/shop.conf",
                 "EnvironmentFile=-/etc/fleet/apps/shop.env",
                 "Environment=FLEET_DRAIN_FILE=/run/fleet/apps/shop/drain",
                 "RuntimeDirectory=fleet-shop/worker-%i", "StateDirectory=fleet-shop",
                 "SyslogIdentifier=fleet-shop-worker@%i", "User=fleet-shop", "DynamicUser=yes"):
        assert line in made.splitlines(), line
    assert "fleet.socket" not in made and "/etc/default/fleet" not in made and "[Install]" not in made
    blog = _config("FLEET_LISTEN=:1\nFLEET_USER=blog\nFLEET_GROUP=web\n", "blog")
    named_user = generator.worker_unit(blog, shipped)
    assert "User=blog\nDynamicUser=no\nGroup=web\n" in named_user


def test_a_template_missing_a_line_the_generator_rewrites_fails_loudly() -> None:
    broken = TEMPLATE.read_text().replace("Sockets=fleet.socket\n", "")
    with pytest.raises(generator.GeneratorError, match="has no Sockets= line to rewrite"):
        generator.worker_unit(_config("FLEET_LISTEN=:1\n"), broken)


def test_systemd_accepts_the_generated_units(apps_dir: Path, tmp_path: Path) -> None:
    analyze = "/usr/bin/systemd-analyze"
    if not os.path.exists(analyze):
        pytest.skip("needs systemd-analyze")
    (apps_dir / "shop.conf").write_text("FLEET_LISTEN=127.0.0.1:8001\nFLEET_WORKERS=1\n")
    out = tmp_path / "out"
    _generate(apps_dir, out)
    # NOTE: verify wants the ExecStart= binaries present, which they are not on a dev box.
    units = [out / "fleet-shop.socket", out / "fleet-shop.service"]
    result = subprocess.run([analyze, "verify", "--man=no", *map(str, units)],
                            capture_output=True, text=True)  # fmt: skip
    lines = [line for line in result.stderr.splitlines()
             if "fleet-shop" in line and "/usr/bin/fleetctl" not in line]  # fmt: skip
    assert lines == [], result.stderr


def test_the_generator_run_as_systemd_runs_it(apps_dir: Path, tmp_path: Path) -> None:
    """Through its installed script, with only the output directories as arguments."""
    (apps_dir / "bad.conf").write_text("FLEET_WORKERS=2\n")
    out = tmp_path / "out"
    out.mkdir()
    code = ("import sys; from pathlib import Path; from fleet import apps, generator\n"
            f"apps.APPS_DIR = Path({str(apps_dir)!r})\n"
            f"generator.TEMPLATE_DIRS = (Path({str(ROOT / 'units')!r}),)\n"
            "sys.argv[0] = 'fleet-apps'\n"
            f"exec(open({str(ROOT / 'units/generator/fleet-apps')!r}).read())")
    result = subprocess.run([sys.executable, "-c", code, str(out), str(out), str(out)],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0
    assert f"fleet-apps generator: app bad skipped: {apps_dir}/bad.conf sets no FLEET_LISTEN" in result.stderr
    assert list(out.iterdir()) == []


def test_set_value_keeps_comments_and_replaces_the_last_assignment() -> None:
    text = "# workers\nFLEET_WORKERS=2\n#FLEET_WORKERS=9\nexport FLEET_WORKERS=3\nPYTHONPATH=/srv\n"
    assert set_value(text, "FLEET_WORKERS", "auto") == (
        "# workers\nFLEET_WORKERS=2\n#FLEET_WORKERS=9\nFLEET_WORKERS=auto\nPYTHONPATH=/srv\n")
    assert set_value("A=1", "B", "2") == "A=1\nB=2\n"


# --- virtualenvs ---------------------------------------------------------------------


def test_a_venv_of_this_python_comes_first_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "venv"
    venv.create(root, with_pip=False)
    packages = root / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    (packages / "fleet_venv_probe.py").write_text("WHERE = 'venv'\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    added = activate(str(root))
    assert sys.path[0] == str(packages) and added[0] == str(packages)
    import fleet_venv_probe  # type: ignore[import-not-found]

    assert fleet_venv_probe.WHERE == "venv"


def test_venv_errors_name_the_problem_and_the_fix(tmp_path: Path) -> None:
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    with pytest.raises(VenvError) as caught:
        activate(str(tmp_path / "nope"))
    assert str(caught.value) == (f"FLEET_VENV {tmp_path}/nope does not exist; make it with the workers' "
                                 f"Python {here}: python3 -m venv {tmp_path}/nope, or fix the path")
    with pytest.raises(VenvError, match="ProtectHome=yes"):
        activate("/home/nobody-xyz/venv")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(VenvError, match="is not a virtualenv \\(it has no pyvenv.cfg\\); make one"):
        activate(str(plain))
    (plain / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.9.2\n")
    with pytest.raises(VenvError) as caught:
        activate(str(plain), running=(3, 11))
    assert str(caught.value) == (
        f"FLEET_VENV {plain} was made with Python 3.9, but the workers run Python 3.11; remake it "
        f"with the workers' Python: python3 -m venv --clear {plain}, then install the app's packages "
        "into it again")


# --- fleetctl new and apps -------------------------------------------------------------


def test_new_writes_a_commented_config_the_generator_accepts(
    apps_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert catalog.run_new("shop", "127.0.0.1:8001", "mysite.wsgi:application", "/srv/mysite/venv",
                           "/srv/mysite", "2", "", False) == 0
    written = (apps_dir / "shop.conf").read_text()
    values = parse_env_file(written)
    assert values == {"FLEET_APP": "mysite.wsgi:application", "FLEET_LISTEN": "127.0.0.1:8001",
                      "FLEET_WORKERS": "2", "FLEET_VENV": "/srv/mysite/venv", "PYTHONPATH": "/srv/mysite"}
    assert "#FLEET_USER=shop" in written and "#FLEET_SECRETS=/etc/fleet/apps/shop.env" in written
    assert capsys.readouterr().out == f"created {apps_dir}/shop.conf\nstart it: sudo fleetctl apply\n"
    assert _generate(apps_dir, tmp_path / "out") == []
    with pytest.raises(Exception, match="exists already; nothing changed"):
        catalog.run_new("shop", "127.0.0.1:8002", "a:b", "", "", "auto", "", False)
    with pytest.raises(Exception, match="app shop already listens on 127.0.0.1:8001"):
        catalog.run_new("blog", "127.0.0.1:8001", "a:b", "", "", "auto", "", False)
    with pytest.raises(UsageError, match="FLEET_APP must be module:callable"):
        catalog.run_new("blog", "127.0.0.1:8002", "nocolon", "", "", "auto", "", False)
    assert sorted(p.name for p in apps_dir.iterdir()) == ["shop.conf"], "nothing half-written"


def test_apps_lists_the_default_app_and_each_config(
    apps_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (apps_dir / "shop.conf").write_text("FLEET_LISTEN=127.0.0.1:8001\nFLEET_WORKERS=2\n")
    (apps_dir / "bad.conf").write_text("FLEET_WORKERS=2\n")
    assert catalog.run_list(as_json=False) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["APP", "LISTEN", "WORKERS", "VENV", "CONFIG"]
    assert out[1].split() == ["default", "fleet.socket", "fleetctl", "scale", "-", "/etc/default/fleet"]
    assert out[3].split() == ["shop", "127.0.0.1:8001", "2", "-", f"{apps_dir}/shop.conf"]
    assert out[4].startswith(f"bad: {apps_dir}/bad.conf sets no FLEET_LISTEN")


def test_apply_finds_the_apps_systemd_has_units_of(monkeypatch: pytest.MonkeyPatch) -> None:
    from fleet.ctl import apply, systemctl

    listed = ("fleet-shop.socket loaded active listening fleet app shop: listening socket\n"
              "fleet-shop.service loaded active exited fleet app shop\n"
              "fleet-shop-worker@1.service loaded active running fleet app shop: worker 1\n"
              "fleet-old.socket not-found active listening fleet-old.socket\n"
              "fleet-worker@1.service loaded active running fleet worker 1\n"
              "fleet-a-worker.service loaded inactive dead something else\n")  # fmt: skip
    monkeypatch.setattr(systemctl, "systemctl", lambda *args: listed)
    assert apply.running_apps() == {"shop", "old"}
