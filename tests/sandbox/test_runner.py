"""`manage.py sandbox`: refused outside development; starts the app beside a sandbox that survives restarts."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from sandbox import runner
from sandbox.management.commands.sandbox import Command
from sandbox.standin import StandIn
from tests.helpers import free_port

# Every test here runs `manage.py sandbox` / `devserver` with their own SQLite (or none): once, on SQLite.
pytestmark = pytest.mark.own_database

ROOT = Path(__file__).resolve().parents[2]


def event_processed(http, base: str) -> dict:
    """POST an event nobody can verify to the app at `base`, and wait until its worker has finished it (it is
    refused, final); returns /healthz's answer."""
    event = {
        "event": "ONAPPINSTALL",
        "ts": "1",
        "auth[member_id]": "nobody0000",
        "auth[application_token]": "t" * 32,
        "data[VERSION]": "1",
    }
    assert http.post(f"{base}/events/", data=event, timeout=5).json()["result"] == "accepted"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = http.get(f"{base}/healthz", timeout=5).json()
        if health["inbox"]["unfinished"] == 0:
            break
        time.sleep(0.3)
    assert health["inbox"]["unfinished"] == 0, health
    return health


def options(tmp_path, **overrides):
    values = {
        "base_dir": ROOT,
        "client_id": "local.sandbox",
        "client_secret": "sandbox-secret",
        "directory": tmp_path / "sb",
        "app_port": free_port(),
        "portal_port": free_port(),
        "server_port": free_port(),
    }
    values.update(overrides)
    return runner.Options(**values)


def clean_env(**extra):
    """This process's environment without what the test settings put there, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("B24_", "DJANGO_"))
        and k not in ("DATABASE_URL", "DEBUG", "SECRET_KEY", "TOKEN_ENCRYPTION_KEYS", "ALLOWED_HOSTS")
    }
    env.update(extra)
    return env


def test_the_command_refuses_outside_development(settings):
    settings.DEBUG = False
    settings.B24_SANDBOX = False
    with pytest.raises(Exception, match="only with DEBUG=true or B24_SANDBOX=true"):
        Command().handle(app_port=1, portal_port=2, server_port=3, dir=None, reset=False, noreload=True)


@pytest.mark.slow  # a manage.py subprocess
def test_production_settings_do_not_even_have_the_command():
    env = clean_env(
        DEBUG="false",
        SECRET_KEY="x" * 50,
        B24_CLIENT_ID="id",
        B24_CLIENT_SECRET="secret",
        B24_APP_URL="https://widget.example.com",
        TOKEN_ENCRYPTION_KEYS="ZGV2LW9ubHktYjI0d2lkZ2V0LXRva2VuLWtleS0wMDA=",
        DATABASE_URL="sqlite:////nonexistent/never-opened.sqlite3",
    )
    answer = subprocess.run(
        [sys.executable, "manage.py", "sandbox"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert answer.returncode != 0
    assert "Unknown command: 'sandbox'" in answer.stderr


def test_bitrix24_side_keeps_its_portal_and_moves_it_to_the_configured_port(tmp_path):
    first = options(tmp_path)
    folder = runner._prepare_folder(first)
    assert (folder / ".gitignore").read_text().splitlines()[-1] == "*"
    standin, pages, portal = runner.start_bitrix24(first, folder)
    try:
        assert standin.address == f"127.0.0.1:{first.server_port}"
        assert portal.domain == f"127.0.0.1:{first.portal_port}"
        assert standin.web is pages and pages.app_url == f"http://localhost:{first.app_port}"
        env = runner.app_environment(first, standin, pages, folder)
        assert env["DATABASE_URL"] == f"sqlite:///{folder / 'db.sqlite3'}"
        assert (env["B24_OAUTH_URL"], env["B24_APP_URL"]) == (standin.oauth_url, first.app_url)
        assert "B24_JS_URL" not in env  # the frame library is the app's own static file
        assert env["DEBUG"] == env["B24_ALLOW_HTTP_PORTALS"] == "true"
        assert (env["B24_CLIENT_ID"], env["B24_CLIENT_SECRET"]) == ("local.sandbox", "sandbox-secret")
        text = runner.banner(first, standin, pages, portal, folder, ("admin", "pw"))
        assert f"http://127.0.0.1:{first.portal_port}/" in text and "password pw" in text
        member_id = portal.member_id
        portal.install_post()
    finally:
        standin.stop()

    second = options(tmp_path)  # other ports, same folder
    standin, pages, portal = runner.start_bitrix24(second, runner._prepare_folder(second))
    try:
        assert portal.member_id == member_id and portal.installed
        assert portal.domain == f"127.0.0.1:{second.portal_port}"
    finally:
        standin.stop()

    third = options(tmp_path, reset=True)
    standin, pages, portal = runner.start_bitrix24(third, runner._prepare_folder(third))
    try:
        assert portal.member_id != member_id and not portal.installed
    finally:
        standin.stop()


def test_a_taken_port_is_a_clear_error(tmp_path):
    with StandIn("id", "secret") as busy:
        port = int(busy.address.rsplit(":", 1)[1])
        taken = options(tmp_path, server_port=port)
        with pytest.raises(runner.SandboxError, match="--server-port"):
            runner.start_bitrix24(taken, runner._prepare_folder(taken))
        taken = options(tmp_path, portal_port=port)
        with pytest.raises(runner.SandboxError, match="--portal-port"):
            runner.start_bitrix24(taken, runner._prepare_folder(taken))


@pytest.mark.slow  # manage.py sandbox as a subprocess
def test_manage_py_sandbox_runs_the_app_beside_the_sandbox(tmp_path):
    """The README's command, for real: migrate, an admin login, runserver, the URLs; SIGTERM stops it all."""
    ports = {"app": free_port(), "portal": free_port(), "server": free_port()}
    folder = tmp_path / "sandbox"
    command = [
        sys.executable,
        "manage.py",
        "sandbox",
        "--noreload",
        "--dir",
        str(folder),
        "--app-port",
        str(ports["app"]),
        "--portal-port",
        str(ports["portal"]),
        "--server-port",
        str(ports["server"]),
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=clean_env(DEBUG="true"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.startswith("Press Ctrl+C"):
                break
        text = "".join(output)
        assert "Bitrix24 sandbox is running" in text, text
        assert f"http://127.0.0.1:{ports['portal']}/" in text
        assert f"http://localhost:{ports['app']}/admin/  (user admin, password " in text
        with requests.Session() as http:
            http.trust_env = False
            assert http.get(f"http://127.0.0.1:{ports['app']}/healthz", timeout=5).status_code == 200
            assert http.get(f"http://127.0.0.1:{ports['portal']}/", timeout=5).status_code == 200
            assert (
                http.get(f"http://127.0.0.1:{ports['server']}/api/v1/", timeout=5).status_code == 404
            )  # no BX24 stand-in
            # The app is the sandbox's: its install page loads the stand-in BX24 script.
            install = http.get(f"http://127.0.0.1:{ports['app']}/install/", timeout=5)
            assert install.status_code == 200
            # The landing page says how this was started (DEBUG is on in the sandbox's app).
            assert "manage.py sandbox" in http.get(f"http://127.0.0.1:{ports['app']}/", timeout=5).text
            # A worker runs beside the app: an event the app stored is processed (here: refused, final).
            health = event_processed(http, f"http://127.0.0.1:{ports['app']}")
            assert health["checks"]["broker"] == "ok", health
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            rest, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert "Stopping the sandbox" in rest
    assert process.returncode == 0
    with requests.Session() as http, pytest.raises(requests.ConnectionError):
        http.trust_env = False
        http.get(f"http://127.0.0.1:{ports['app']}/healthz", timeout=2)
    assert (folder / "state.json").exists() and (folder / "db.sqlite3").exists()


@pytest.mark.parametrize(
    "taken, flag, what",
    [
        ("app_port", "--app-port", "the app"),
        ("portal_port", "--portal-port", "the sandbox portal"),
        ("server_port", "--server-port", "the sandbox's OAuth server"),
    ],
)
def test_a_taken_port_stops_the_sandbox_before_anything_starts(tmp_path, taken, flag, what):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        chosen = options(tmp_path, **{taken: port})
        with pytest.raises(runner.SandboxError) as refused:
            runner.run(chosen)
    assert str(refused.value).startswith(f"port {port} ({what}) is already in use")
    assert str(refused.value).endswith(f"choose another with {flag}")
    assert not chosen.folder.exists()  # nothing was started or written


@pytest.mark.slow  # a manage.py subprocess
def test_the_command_names_the_taken_port_and_its_flag_in_one_line(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        answer = subprocess.run(
            [
                sys.executable,
                "manage.py",
                "sandbox",
                "--app-port",
                str(port),
                "--portal-port",
                str(free_port()),
                "--server-port",
                str(free_port()),
                "--dir",
                str(tmp_path / "sb"),
            ],
            cwd=ROOT,
            env=clean_env(DEBUG="true"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert answer.returncode != 0
    assert answer.stderr.strip() == (
        f"CommandError: port {port} (the app) is already in use "
        "(Address already in use); choose another with --app-port"
    )
    assert "running" not in answer.stdout


def test_two_roles_on_one_port_are_refused(tmp_path):
    port = free_port()
    with pytest.raises(runner.SandboxError, match=f"port {port} is given to both the app and the sandbox portal"):
        runner.check_ports(options(tmp_path, app_port=port, portal_port=port))


@pytest.mark.slow  # manage.py devserver (and its Celery worker) as subprocesses
def test_manage_py_devserver_runs_the_app_with_a_worker(tmp_path):
    """The README's first command ends in `manage.py devserver`: the app and a worker on the embedded broker;
    an event the app stored is applied (here: refused, final) without anything else started; SIGTERM stops both."""
    port = free_port()
    env = clean_env(
        DEBUG="true", DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", CELERY_BROKER_DIR=str(tmp_path / "celery")
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True, timeout=120)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "devserver", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with requests.Session() as http:
            http.trust_env = False
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if http.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    time.sleep(0.3)
            event_processed(http, base)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    assert process.returncode == 0
    time.sleep(1)
    with requests.Session() as http, pytest.raises(requests.ConnectionError):  # nothing left serving
        http.trust_env = False
        http.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
