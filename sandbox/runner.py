"""`manage.py sandbox`: the app on SQLite beside a local Bitrix24 sandbox, for trying it without a portal.

The stand-in (OAuth server, one portal's REST and its Contact Center page) runs in this process on
fixed ports; the app runs as `manage.py runserver` in a child process whose environment points it at
the stand-in (B24_OAUTH_URL, B24_APP_URL, B24_ALLOW_HTTP_PORTALS, DEBUG); the app's pages load the official
frame library from their own static files, and the portal page speaks its protocol. A Celery worker
(with beat: the inbox sweeper and the periodic passes) runs beside the app on the embedded broker in
`<dir>/broker`: the events the portal delivers are stored by the app and applied by the worker. The portal and
its tokens are kept in `<dir>/state.json` and the app's database in `<dir>/db.sqlite3`, so a restarted
sandbox is the same portal with the same member_id, and the app's stored tokens stay valid.

Standard library only (no Django import): the management command is a thin wrapper around `run`.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .pages import SandboxPages
from .standin import StandIn

__all__ = ["Options", "SandboxError", "run", "check_ports", "start_bitrix24", "app_environment", "worker_command"]

ADMIN_USERNAME = "admin"
_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 5.0
# Creates (or resets the password of) the sandbox's own superuser, unless the person made their own.
_ENSURE_ADMIN = """
import os
from django.contrib.auth import get_user_model
User = get_user_model()
name, password = os.environ["SANDBOX_ADMIN_USERNAME"], os.environ["SANDBOX_ADMIN_PASSWORD"]
others = User.objects.filter(is_superuser=True).exclude(username=name)
if others.exists() and not User.objects.filter(username=name).exists():
    print("other:" + ",".join(others.values_list("username", flat=True)[:3]))
else:
    user = User.objects.filter(username=name).first() or User(username=name, email=name + "@sandbox.test")
    user.is_staff = user.is_superuser = user.is_active = True
    user.set_password(password)
    user.save()
    print("ours")
"""


class SandboxError(Exception):
    """The sandbox cannot start (a port is taken, the app failed to start, ...)."""


@dataclass
class Options:
    base_dir: Path  # where manage.py is
    client_id: str
    client_secret: str
    directory: Path | None = None  # state, database, admin password; default <base_dir>/.sandbox
    app_port: int = 8000
    portal_port: int = 8124
    server_port: int = 8125
    app_host: str = "localhost"  # another origin than the portal's 127.0.0.1, as in real life
    reload: bool = True
    reset: bool = False
    python: str = field(default_factory=lambda: sys.executable)

    @property
    def folder(self) -> Path:
        return Path(self.directory or Path(self.base_dir) / ".sandbox").resolve()

    @property
    def app_url(self) -> str:
        return f"http://{self.app_host}:{self.app_port}"


def _prepare_folder(options: Options) -> Path:
    folder = options.folder
    folder.mkdir(parents=True, exist_ok=True)
    ignore = folder / ".gitignore"
    if not ignore.exists():
        # Tokens and a database live here: never commit them (same trick as .pytest_cache).
        ignore.write_text("# created by manage.py sandbox\n*\n")
    if options.reset:
        for name in ("state.json", "db.sqlite3"):
            (folder / name).unlink(missing_ok=True)
    return folder


def check_ports(options: Options) -> None:
    """Every port the sandbox needs is free (and they differ), before anything starts; else one clear line."""
    wanted = [
        (options.app_port, "--app-port", "the app"),
        (options.portal_port, "--portal-port", "the sandbox portal"),
        (options.server_port, "--server-port", "the sandbox's OAuth server"),
    ]
    seen: dict[int, str] = {}
    for port, flag, what in wanted:
        if port in seen:
            raise SandboxError(f"port {port} is given to both {seen[port]} and {what}; choose another with {flag}")
        seen[port] = what
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As the servers themselves bind (SO_REUSEADDR): a port in TIME_WAIT is free, a listening one is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                raise SandboxError(
                    f"port {port} ({what}) is already in use ({exc.strerror}); choose another with {flag}"
                ) from None


def start_bitrix24(options: Options, folder: Path) -> tuple[StandIn, SandboxPages, object]:
    """The stand-in on its fixed ports with the sandbox portal (restored from state.json if saved)."""
    standin = StandIn(options.client_id, options.client_secret, port=options.server_port)
    try:
        standin.start()
    except OSError as exc:
        raise SandboxError(
            f"port {options.server_port} (the sandbox's OAuth server) is not free ({exc}); "
            "choose another with --server-port"
        ) from None
    state_file = folder / "state.json"
    try:
        state = StandIn.read_state_file(state_file)
        portals = []
        if state and state.get("portals"):
            first = state["portals"][0]["member_id"]
            portals = standin.restore_state(state, ports={first: options.portal_port})
        portal = portals[0] if portals else standin.add_portal(port=options.portal_port)
    except OSError as exc:
        standin.stop()
        raise SandboxError(
            f"port {options.portal_port} (the sandbox portal) is not free ({exc}); choose another with --portal-port"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        standin.stop()
        raise SandboxError(f"{state_file} is not a sandbox state ({exc}); start over with --reset") from None
    standin.state_file = state_file
    standin.save_state()
    pages = SandboxPages(standin, app_url=options.app_url).attach()
    return standin, pages, portal


def app_environment(options: Options, standin: StandIn, pages: SandboxPages, folder: Path) -> dict:
    """The app's environment: development settings pointed at the sandbox."""
    env = dict(os.environ)
    assert standin.oauth_url is not None  # set when start_bitrix24 started the stand-in
    env.update(
        {
            "DEBUG": "true",
            "B24_SANDBOX": "true",
            "DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}",
            "B24_CLIENT_ID": options.client_id,
            "B24_CLIENT_SECRET": options.client_secret,
            "B24_APP_URL": options.app_url,
            "B24_OAUTH_URL": standin.oauth_url,
            "B24_ALLOW_HTTP_PORTALS": "true",
            # The customer page's webhook receiver is the sandbox itself (http, loopback); refused without DEBUG.
            "OPENLINES_ALLOW_PRIVATE_WEBHOOKS": "true",
            "ALLOWED_HOSTS": "localhost,127.0.0.1,[::1]",
            "SECURE_SSL_REDIRECT": "false",
            "PYTHONUNBUFFERED": "1",
            # The embedded broker in the sandbox's folder, whatever the shell says: no server needed.
            "CELERY_BROKER_URL": "filesystem://",
            "CELERY_BROKER_DIR": str(folder / "broker"),
        }
    )
    return env


def worker_command(options: Options, folder: Path) -> list[str]:
    """The Celery worker beside the app: one process (solo pool), beat embedded (one worker only)."""
    return [
        options.python,
        "-m",
        "celery",
        "-A",
        "b24widget",
        "worker",
        "--pool",
        "solo",
        "--beat",
        "--schedule",
        str(folder / "broker" / "beat-schedule"),
        "--loglevel",
        "INFO",
        "--without-mingle",
        "--without-gossip",
    ]


def _manage(options: Options, env: dict, *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    command = [options.python, str(Path(options.base_dir) / "manage.py"), *args]
    return subprocess.run(command, env=env, cwd=options.base_dir, text=True, capture_output=capture, check=False)


def _ensure_admin(options: Options, env: dict, folder: Path) -> tuple[str, str | None]:
    """(username, password) of the sandbox's admin login; password None when the person has their own."""
    secret = folder / "admin-password"
    if secret.exists():
        password = secret.read_text().strip()
    else:
        password = secrets.token_urlsafe(12)
        descriptor = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(password + "\n")
    answer = _manage(
        options,
        {**env, "SANDBOX_ADMIN_USERNAME": ADMIN_USERNAME, "SANDBOX_ADMIN_PASSWORD": password},
        "shell",
        "-c",
        _ENSURE_ADMIN,
        capture=True,
    )
    if answer.returncode != 0:
        raise SandboxError(f"could not prepare the admin login:\n{answer.stderr[-2000:]}")
    last = (answer.stdout.strip().splitlines() or [""])[-1]
    if last.startswith("other:"):
        return last[len("other:") :], None
    return ADMIN_USERNAME, password


def _wait_until_ready(process: subprocess.Popen | None, url: str) -> None:
    """Until `url` answers at all (any HTTP status); `process` (if given) must not stop meanwhile."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SandboxError(
                f"the app stopped while starting (exit code {process.returncode}); its output above says why"
            )
        try:
            with opener.open(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: that is all we wait for
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise SandboxError(f"the app did not answer at {url} within {_READY_TIMEOUT:.0f} s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    # SIGTERM, not SIGINT: a process started from a non-interactive shell may inherit SIGINT ignored.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)  # runserver and its autoreloader child
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=_STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            continue


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def banner(
    options: Options, standin: StandIn, pages: SandboxPages, portal, folder: Path, admin: tuple[str, str | None]
) -> str:
    user, password = admin
    login = f"user {user}, password {password}" if password else f"log in as {user}"
    rows = [
        ("Contact Center (the portal)", SandboxPages.portal_url(portal)),
        ("The app", f"{options.app_url}/  (DEBUG, SQLite {folder / 'db.sqlite3'})"),
        ("Django admin", f"{options.app_url}/admin/  ({login}; Inbox items: the events and their state)"),
        ("Celery worker", f"beside the app, with beat; embedded broker in {folder / 'broker'}"),
        ("OAuth server stand-in", standin.oauth_url),
        ("Portal state", f"{folder / 'state.json'}  (member_id {portal.member_id}; --reset starts over)"),
    ]
    width = max(len(name) for name, _ in rows) + 2
    with standin.lock:
        installed = portal.installed and portal.install_finished and not portal._removed
    step = "click the app's square" if installed else "click 'Install the app'"
    lines = ["", f"Bitrix24 sandbox is running. Open the Contact Center and {step}."]
    lines += [f"  {name + ':':<{width}} {value}" for name, value in rows]
    lines += ["Press Ctrl+C to stop.", ""]
    return "\n".join(lines)


def run(options: Options, out=sys.stdout) -> None:
    """Start everything, print the URLs, and serve until Ctrl+C (or SIGTERM)."""
    check_ports(options)
    folder = _prepare_folder(options)
    standin, pages, portal = start_bitrix24(options, folder)
    process = worker = None
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        env = app_environment(options, standin, pages, folder)
        migrated = _manage(options, env, "migrate", "--noinput", capture=True)
        if migrated.returncode != 0:
            raise SandboxError(f"migrate failed:\n{migrated.stdout[-2000:]}{migrated.stderr[-2000:]}")
        admin = _ensure_admin(options, env, folder)
        command = [
            options.python,
            str(Path(options.base_dir) / "manage.py"),
            "runserver",
            f"127.0.0.1:{options.app_port}",
        ]
        if not options.reload:
            command.append("--noreload")
        # Its own process group: the autoreloader's child is stopped with it.
        process = subprocess.Popen(command, env=env, cwd=options.base_dir, start_new_session=True)
        worker = subprocess.Popen(
            worker_command(options, folder), env=env, cwd=options.base_dir, start_new_session=True
        )
        # The banner only once everything answers: the app, the portal's page, the OAuth server.
        assert standin.oauth_url is not None  # set when start_bitrix24 started the stand-in
        for url in (f"http://127.0.0.1:{options.app_port}/healthz", SandboxPages.portal_url(portal), standin.oauth_url):
            _wait_until_ready(process, url)
        out.write(banner(options, standin, pages, portal, folder, admin) + "\n")
        out.flush()
        while process.poll() is None and worker.poll() is None:
            time.sleep(0.5)
        if worker.poll() is not None:
            raise SandboxError(f"the Celery worker stopped (exit code {worker.returncode})")
        raise SandboxError(f"the app stopped (exit code {process.returncode})")
    except KeyboardInterrupt:
        out.write("\nStopping the sandbox.\n")
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        for child in (worker, process):
            if child is not None:
                _stop(child)  # the worker first: SIGTERM is its warm shutdown (the task in flight finishes)
        standin.save_state()
        standin.stop()
