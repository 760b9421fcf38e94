"""A soak of the production topology with faults (issue 23): nothing Bitrix24 or a customer sends is lost.

Run: .venv/bin/python bench/soak.py [--minutes 3] [--every 30] [--outage 20] [--settle 300] [--rate 0.5]
     [--faults limit,db-stop ...] [--trace]

Topology: gunicorn (2 workers), 2 `celery worker` processes, `celery beat`, and a RabbitMQ node, a PostgreSQL
and a redis-server of the run's own (rabbitmq-server as soak<pid>@localhost, initdb/pg_ctl under
/usr/lib/postgresql/*/bin and redis-server, all in a temp folder on free ports; database b24bench_soak_<pid>), so
that they can be stopped without touching the machine's shared servers. The RabbitMQ node has its own Erlang
cookie (HOME in the temp folder), no plugins and is stopped with `rabbitmqctl -n soak<pid>@localhost stop`; what
it costs (RSS, CPU idle and over the run) is printed. The stand-in (this process) serves 4 portals, each
installed through the app, with an Open Lines channel connected to a local webhook receiver (this process).
B24_APP_URL is gunicorn's address, so the portals' events (online, ONOFFLINEEVENT) go to it; beat runs the
offline pull and reconciliation every 10 s.

Traffic, per portal (a thread each): customers write --rate messages/s into the channel API (signed POSTs to
gunicorn, round robin over --chats chats) and operators write --rate replies/s in those chats (the stand-in
posts OnImConnectorMessageAdd to /events/).

Faults: every --every seconds a pair, one of ours and one of the outside world, each lasting up to --outage s:
  ours:    a Celery worker SIGKILLed (its process group) and restarted; RabbitMQ stopped for --outage s and
           started again; the database stopped; gunicorn SIGKILLed and started again; RabbitMQ restarted
           (stopped and started at once); Redis stopped; gunicorn HUP-reloaded; the database restarted (fast);
  outside: Bitrix24 answering QUERY_LIMIT_EXCEEDED (503); the outside webhook down (503); the OAuth server
           slow (answers 4 s late, after rotating) with every access token expired; Bitrix24 answering 500;
           the OAuth server down with every access token expired; the app unreachable for the portals' events
           (stand-in `app_unreachable`: online deliveries fail, offline records accumulate).
8 of ours and 6 of the outside world make 8 pairs, repeated in turn (the OAuth server slow comes twice: once
with the database stopped, once with the broker restarting; Bitrix24's QUERY_LIMIT_EXCEEDED twice as well).
`--faults` keeps only the kinds named (FAULT_KINDS); the others' places in the schedule stay quiet, so a fault
keeps its time (`--faults limit`: Bitrix24's limit answers at t+10 and t+220, nothing else). One kind runs only
when named, not in "all": `broker-freeze`, RabbitMQ frozen (SIGSTOP of its Erlang VM, SIGCONT after --outage s:
connections accepted and kept, nothing answered), in the slots of broker-stop and broker-restart (t+40, t+130).

`--trace` (for tracing one fault: logs at INFO unless SOAK_LOG_LEVEL says otherwise) also prints, per portal,
every imconnector.send.messages request the stand-in answered (when, its status, how many messages and how
old the oldest was), the requests of every method per 10 s (what shares the portal's bucket), the client
limiter's state as sampled every 0.5 s (its share of the plan's rate and the seconds to its next slot,
bitrix24/limits.py), and for the slowest customer messages each attempt that reached the stand-in.

At the end (faults off) the soak waits up to --settle s for everything to arrive, then prints: every operator
reply at the outside system exactly once and in order per chat (those /events/ refused included), every
accepted customer message at Bitrix24 exactly once and in order, tokens lost (stored refresh tokens the OAuth
server no longer knows), portals blocked, dead letters, and a table of the faults with what each pair cost.
Asserts nothing about time; whatever is lost is printed exactly (chat, message), not raised.
"""

import argparse
import contextlib
import glob
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _common as common

LOGS = common.ARTIFACTS / "soak"
PORTALS = 4


# --- servers of our own ------------------------------------------------------------------------------


def _run(command, **kwargs):
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done


class OwnPostgres:
    """A PostgreSQL cluster in a temp folder on a free port (run as the `postgres` user: initdb refuses root)."""

    def __init__(self, folder: Path):
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
        if not versions:
            raise SystemExit("no /usr/lib/postgresql/*/bin: the soak needs a PostgreSQL of its own")
        self.bin = Path(versions[-1])
        self.folder = folder
        self.data = folder / "data"
        self.port = common.free_port()
        self.log = LOGS / "postgres.log"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        folder.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            folder.parent.chmod(0o755)  # mkdtemp's folder is the owner's only; postgres must reach its own
            shutil.chown(folder, "postgres", "postgres")
            self.log.touch()
            shutil.chown(self.log, "postgres", "postgres")
        _run([*self.as_user, str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
              "-E", "UTF8", "--no-sync"])  # fmt: skip

    def start(self):
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        _run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log),
              "-w", "-t", "60", "start"])  # fmt: skip

    def stop(self, mode: str = "fast"):
        _run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"])

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


class OwnRedis:
    def __init__(self, folder: Path):
        self.folder = folder
        self.port = common.free_port()
        self.process = None

    def start(self):
        self.log = open(LOGS / "redis.log", "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), http_socket(self.port):
                return
            time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.log.close()


class OwnRabbit:
    """A RabbitMQ node of the run's own (soak<pid>@localhost), so that the soak may stop it: free AMQP and
    distribution ports on 127.0.0.1, its database, logs, config and an empty plugin list in the temp folder, and
    HOME there too, so its Erlang cookie is its own (the machine's shared node `rabbit@...` cannot even be reached
    with it). Stopped with `rabbitmqctl -n soak<pid>@localhost stop`, which names this node only. Durable queues
    and persistent messages live in its database, so they outlive a stop."""

    BIN = Path("/usr/lib/rabbitmq/bin")

    def __init__(self, folder: Path):
        if not (self.BIN / "rabbitmq-server").exists():
            raise SystemExit(f"no {self.BIN}/rabbitmq-server: the soak needs a RabbitMQ node of its own")
        self.folder = folder
        self.node = f"soak{os.getpid()}@localhost"
        self.port = common.free_port()
        self.dist_port = common.free_port()
        self.process = None
        self.starts = 0
        self.cpu_before = 0.0  # CPU seconds of the node's earlier VMs (each start is a new one)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "enabled_plugins").write_text("[].\n")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(folder),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_PID_FILE": str(folder / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),  # absent: the defaults
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(folder / "advanced"),
            "RABBITMQ_CONF_ENV_FILE": str(folder / "rabbitmq-env.conf"),
        }
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self):
        self.log = open(LOGS / "rabbitmq.log", "ab")  # noqa: SIM115 (closed in stop)
        self.starts += 1
        self.process = subprocess.Popen(
            [str(self.BIN / "rabbitmq-server")], cwd=self.folder, env=self.env, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # its AMQP listener opens once the broker has booted
            with contextlib.suppress(OSError), http_socket(self.port):
                return
            if self.process.poll() is not None:
                raise SystemExit(f"rabbitmq-server exited; see {LOGS / 'rabbitmq.log'}")
            time.sleep(0.1)
        raise SystemExit("rabbitmq-server did not open its port")

    def freeze(self):
        """SIGSTOP the node's Erlang VM (beam.smp, its pid file's process, never a shared epmd): its sockets stay
        open and its kernel still completes TCP connects and takes bytes until the buffers are full; nobody
        answers."""
        os.kill(self._beam(), signal.SIGSTOP)

    def thaw(self):
        with contextlib.suppress(OSError, ValueError):
            os.kill(self._beam(), signal.SIGCONT)

    def _beam(self) -> int:
        return int((self.folder / "pid").read_text().strip())

    def stop(self):
        if self.process is None or self.process.poll() is not None:
            return
        self.thaw()  # a frozen node would not hear rabbitmqctl
        with contextlib.suppress(OSError, StopIteration, ValueError):
            self.cpu_before = self.usage()[1]
        ctl = [str(self.BIN / "rabbitmqctl"), "-n", self.node, "stop", str(self.folder / "pid")]
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(ctl, env=self.env, cwd=self.folder, capture_output=True, timeout=60)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # this node's own process group, by its id
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.log.close()

    def usage(self) -> tuple[int, float]:
        """(RSS in KiB, CPU seconds since the first start) of the node's Erlang VM (beam.smp)."""
        pid = (self.folder / "pid").read_text().strip()
        status = Path(f"/proc/{pid}/status").read_text()
        rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return rss, self.cpu_before + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def http_socket(port):
    import socket

    sock = socket.create_connection(("127.0.0.1", port), timeout=1)
    try:
        yield sock
    finally:
        sock.close()


# --- the app's processes -----------------------------------------------------------------------------


class Processes:
    """gunicorn, two workers and beat, each in its own process group (a SIGKILL takes its children with it)."""

    def __init__(self, env: dict, port: int, folder: Path):
        self.env, self.port, self.folder = env, port, folder
        self.loglevel = env.get("LOG_LEVEL", "WARNING")  # celery's --loglevel sets the root logger's level
        self.gunicorn = None
        self.workers: list = [None, None]
        self.beat = None
        self.started: Counter[str] = Counter()

    def _spawn(self, name, command):
        self.started[name] += 1
        log = open(LOGS / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps its own copy)
        process = subprocess.Popen(
            command, cwd=common.ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return process

    def start_gunicorn(self):
        command = [common.PYTHON, "-m", "gunicorn", "-c", "python:b24widget.gunicorn", "--no-control-socket"]
        self.gunicorn = self._spawn("gunicorn", [*command, "b24widget.wsgi"])
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz", headers={"Host": "127.0.0.1"})
                conn.getresponse().read()
                conn.close()
                return
            if self.gunicorn.poll() is not None:
                raise SystemExit(f"gunicorn exited; see {LOGS / 'gunicorn.log'}")
            time.sleep(0.2)
        raise SystemExit("gunicorn did not answer")

    def start_worker(self, index: int):
        queue = self.env["CELERY_QUEUE"]
        command = [common.PYTHON, "-m", "celery", "-A", "b24widget", "worker", "--concurrency", "2"]
        command += [
            "-n",
            f"soak{index}-{queue}@%h",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            self.loglevel,
        ]
        self.workers[index] = self._spawn(f"worker{index}", command)

    def start_beat(self):
        command = [common.PYTHON, "-m", "celery", "-A", "b24widget", "beat", "--loglevel", "WARNING"]
        self.beat = self._spawn("beat", [*command, "--schedule", str(self.folder / "beat-schedule")])

    @staticmethod
    def kill(process, sig=signal.SIGKILL):
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            process.wait(timeout=60)

    def stop_all(self):
        for process in [self.gunicorn, *self.workers, self.beat]:
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in [self.gunicorn, *self.workers, self.beat]:
            if process is not None:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.kill(process)


# --- the outside system ------------------------------------------------------------------------------


class Receiver:
    """The outside system's webhook: records each operator reply (chat, text, when); `down` answers 503."""

    def __init__(self):
        self.got: dict[str, list[tuple[str, float]]] = defaultdict(list)
        self.refused = 0
        self.down = False
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.down:
                    with receiver.lock:
                        receiver.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    body = json.loads(raw)
                    if body.get("message", {}).get("text") is not None:
                        with receiver.lock:
                            receiver.got[str(body["chat"]["id"])].append((body["message"]["text"], time.time()))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server, self.url = common.serve_hook(Handler)


# --- traffic -----------------------------------------------------------------------------------------


class Traffic:
    def __init__(self, port: int, chats: int, rate: float):
        self.port, self.chats, self.rate = port, chats, rate
        self.stop = threading.Event()
        self.lock = threading.Lock()
        # customer messages: (portal, chat) -> [(text, accepted at)]; refused: [(at, status)]
        self.accepted: dict[tuple[int, str], list[tuple[str, float]]] = defaultdict(list)
        self.unsure: list[tuple[int, str, str, float, str]] = []  # no answer: may or may not have been stored
        self.refused: list[tuple[float, str]] = []
        # operator replies: (portal, chat) -> [(text, written at)]; their /events/ deliveries refused: [at]
        self.written: dict[tuple[int, str], list[tuple[str, float]]] = defaultdict(list)
        self.events_refused: list[tuple[float, str]] = []

    def post(self, p: int, public_id: str, secret: str, chat: str, text: str, message_id: str) -> str:
        """One signed customer message through gunicorn; its status ("202", "409 channel_disconnected", an error)."""
        from openlines.outbound import INBOUND, sign

        body = json.dumps(
            {"chat": {"id": chat}, "user": {"id": f"u-{chat}"}, "message": {"id": message_id, "text": text}}
        ).encode()
        ts = str(int(time.time()))
        headers = {
            "Host": "127.0.0.1",
            "Content-Type": "application/json",
            "X-B24Widget-Timestamp": ts,
            "X-B24Widget-Signature": sign(secret, ts, body, INBOUND),
            "X-B24Widget-Signature-Version": "2",
        }
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            conn.request("POST", f"/channels/{public_id}/messages", body, headers)
            response = conn.getresponse()
            answer = response.read()
            conn.close()
        except (OSError, http.client.HTTPException) as exc:
            return type(exc).__name__
        status = str(response.status)
        if response.status != 202:
            with contextlib.suppress(ValueError, AttributeError):
                status += " " + str(json.loads(answer).get("error", {}).get("code") or "")
        return status.strip()

    def customer(self, p: int, public_id: str, secret: str):
        n = 0
        while not self.stop.is_set():
            chat = f"chat-{p}-{n % self.chats}"
            text = f"in {p}-{n}"
            at = time.time()
            status = self.post(p, public_id, secret, chat, text, f"m-{p}-{n}")
            with self.lock:
                if status == "202":
                    self.accepted[(p, chat)].append((text, at))
                else:
                    self.refused.append((at, status))
                    if status in ("TimeoutError", "RemoteDisconnected", "ConnectionResetError"):
                        self.unsure.append((p, chat, text, at, status))
            n += 1
            self.stop.wait(1 / self.rate)

    def operator(self, p: int, b24, chat_ids: dict[str, int]):
        from sandbox.standin import rest_imconnector as imc

        n = 0
        chats = sorted(chat_ids)
        while not self.stop.is_set():
            chat = chats[n % len(chats)]
            text = f"op {p}-{n}"
            at = time.time()
            with self.lock:
                self.written[(p, chat)].append((text, at))
            _, results = imc.operator_reply(b24, chat_ids[chat], text)
            bad = [r for r in results if r.get("event", "").upper() == "ONIMCONNECTORMESSAGEADD" and r["status"] != 200]
            if bad:
                with self.lock:
                    self.events_refused.append((at, str(bad[0]["status"] or bad[0].get("error") or "failed")))
            n += 1
            self.stop.wait(1 / self.rate)


# --- faults ------------------------------------------------------------------------------------------


class Faults:
    """The pairs injected; each entry of `log` is (started, name, ended)."""

    def __init__(self, procs: Processes, pg: OwnPostgres, redis: OwnRedis, rabbit, standin, portals, receiver, outage):
        self.procs, self.pg, self.redis, self.rabbit, self.standin = procs, pg, redis, rabbit, standin
        self.portals, self.receiver, self.outage = portals, receiver, outage
        self.kills = 0

    # ours
    def worker_kill(self):
        index = self.kills % 2
        self.kills += 1
        self.procs.kill(self.procs.workers[index])
        time.sleep(2)
        self.procs.start_worker(index)
        return f"worker {index} SIGKILL, restarted after 2 s"

    def gunicorn_hup(self):
        self.procs.gunicorn.send_signal(signal.SIGHUP)
        return "gunicorn HUP (graceful reload)"

    def db_stop(self):
        self.pg.stop("fast")
        time.sleep(self.outage)
        self.pg.start()
        return f"PostgreSQL stopped {self.outage:.0f} s"

    def gunicorn_kill(self):
        self.procs.kill(self.procs.gunicorn)
        time.sleep(2)
        self.procs.start_gunicorn()
        return "gunicorn SIGKILL, started again after 2 s"

    def redis_stop(self):
        self.redis.stop()
        time.sleep(self.outage)
        self.redis.start()
        return f"Redis stopped {self.outage:.0f} s"

    def db_restart(self):
        self.pg.stop("fast")
        self.pg.start()
        return "PostgreSQL restarted (fast)"

    def broker_stop(self):
        began = time.monotonic()
        self.rabbit.stop()
        time.sleep(self.outage)
        self.rabbit.start()
        return f"RabbitMQ stopped {self.outage:.0f} s (down {time.monotonic() - began:.0f} s)"

    def broker_restart(self):
        began = time.monotonic()
        self.rabbit.stop()
        self.rabbit.start()
        return f"RabbitMQ restarted (down {time.monotonic() - began:.0f} s)"

    def broker_freeze(self):
        """RabbitMQ frozen (SIGSTOP of its VM) for --outage s, then thawed (SIGCONT): connections are accepted and
        kept, nothing is answered (issue 26)."""
        self.rabbit.freeze()
        try:
            time.sleep(self.outage)
        finally:
            self.rabbit.thaw()
        return f"RabbitMQ frozen (SIGSTOP) {self.outage:.0f} s"

    # outside
    METHODS = ("imconnector.send.messages", "imopenlines.session.history.get")

    def _scripted(self, error: str, status: int):
        """Every call of METHODS answers `error` for --outage seconds, and none after. `fail_next` scripts a count,
        not a time: one answer is kept pending (topped up every 0.1 s) and what is left is dropped at the end,
        through the portal's `_failures` (bench-only use of the stand-in's internals, as add_virtual_portals)."""
        end = time.monotonic() + self.outage
        while time.monotonic() < end:
            for b24 in self.portals:
                for method in self.METHODS:
                    with b24._standin.lock:
                        pending = len(b24._failures.get(method, []))
                    if not pending:
                        b24.fail_next(method, error, status)
            time.sleep(0.1)
        for b24 in self.portals:
            with b24._standin.lock:
                for method in self.METHODS:
                    b24._failures.pop(method, None)

    def query_limit(self):
        self._scripted("QUERY_LIMIT_EXCEEDED", 503)
        return f"Bitrix24 QUERY_LIMIT_EXCEEDED {self.outage:.0f} s"

    def webhook_down(self):
        self.receiver.down = True
        time.sleep(self.outage)
        self.receiver.down = False
        return f"outside webhook 503 {self.outage:.0f} s"

    def oauth_slow(self):
        for b24 in self.portals:
            b24.expire_access_tokens()
        self.standin.oauth_late = 4.0
        time.sleep(self.outage)
        self.standin.oauth_late = 0.0
        return f"OAuth 4 s late (after rotating), tokens expired, {self.outage:.0f} s"

    def server_errors(self):
        self._scripted("INTERNAL_SERVER_ERROR", 500)
        return f"Bitrix24 500 {self.outage:.0f} s"

    def oauth_down(self):
        for b24 in self.portals:
            b24.expire_access_tokens()
        self.standin.oauth_down = True
        time.sleep(self.outage)
        self.standin.oauth_down = False
        return f"OAuth down, tokens expired, {self.outage:.0f} s"

    def unreachable(self):
        for b24 in self.portals:
            b24.app_unreachable(True)
        time.sleep(self.outage)
        for b24 in self.portals:
            b24.app_unreachable(False)
        return f"app unreachable for events {self.outage:.0f} s"

    def pairs(self, kinds: frozenset[str] | None = None):
        """The schedule; with `kinds`, only those faults (FAULT_KINDS' names), the others' places left quiet."""
        chosen = None if kinds is None else {FAULT_KINDS[k] for k in kinds}
        if chosen is not None and "broker_freeze" in chosen:  # the freeze takes the broker's stop and restart slots
            swap = {"broker_stop", "broker_restart"}
            schedule = [tuple(self.broker_freeze if f.__name__ in swap else f for f in p) for p in self._schedule()]
        else:
            schedule = self._schedule()
        return [tuple(f for f in pair if chosen is None or f.__name__ in chosen) for pair in schedule]

    def _schedule(self):
        return [
            (self.worker_kill, self.query_limit),
            (self.broker_stop, self.webhook_down),
            (self.db_stop, self.oauth_slow),  # a refresh answer due while the database is down (issue 23)
            (self.gunicorn_kill, self.server_errors),
            (self.broker_restart, self.oauth_slow),  # refreshes while the broker is away
            (self.redis_stop, self.oauth_down),
            (self.gunicorn_hup, self.unreachable),
            (self.db_restart, self.query_limit),
        ]


# --faults: a name for each kind -> its Faults method.
FAULT_KINDS = {
    "worker-kill": "worker_kill",
    "broker-stop": "broker_stop",
    "db-stop": "db_stop",
    "gunicorn-kill": "gunicorn_kill",
    "broker-restart": "broker_restart",
    "broker-freeze": "broker_freeze",  # only when named: in the slots of broker-stop and broker-restart, not in "all"
    "redis-stop": "redis_stop",
    "gunicorn-hup": "gunicorn_hup",
    "db-restart": "db_restart",
    "limit": "query_limit",
    "webhook-down": "webhook_down",
    "oauth-slow": "oauth_slow",
    "500": "server_errors",
    "oauth-down": "oauth_down",
    "unreachable": "unreachable",
}


def fault_kinds(text: str) -> frozenset[str] | None:
    """--faults: "all" (None) or a comma-separated list of FAULT_KINDS' names."""
    if text.strip() == "all":
        return None
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(kinds - set(FAULT_KINDS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown fault kinds {unknown}; choose from {', '.join(FAULT_KINDS)}")
    if "broker-freeze" in kinds and kinds & {"broker-stop", "broker-restart"}:
        raise argparse.ArgumentTypeError("broker-freeze takes the slots of broker-stop and broker-restart")
    return kinds


def run_pair(pair) -> list[str]:
    names: list[str] = []

    def one(fault):
        try:
            names.append(fault())
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            names.append(f"{fault.__name__} FAILED: {exc!r}")

    threads = [threading.Thread(target=one, args=(f,)) for f in pair]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return names


# --- the run -----------------------------------------------------------------------------------------


# --- --trace ---------------------------------------------------------------------------------------------


def limiter_state(portals, plans: dict[str, str]) -> list[tuple[float, float]]:
    """Each portal's client limiter as every process sees it (the shared cache): (share of the plan's rate,
    seconds to its next slot). Reads bitrix24/limits.py's state, bench-only."""
    from bitrix24 import limits

    now = time.time()
    out = []
    for b24 in portals:
        plan = plans.get(b24.member_id) or limits.STANDARD
        _tat, share, _changed, _limited = limits._state(limits.cache.get(f"b24widget:rl:{b24.member_id}"), now)
        out.append((share, limits.next_slot_in(b24.member_id, plan=plan, now=now)))
    return out


def _texts(params) -> list[str]:
    messages = params.get("MESSAGES") if isinstance(params, dict) else None
    if isinstance(messages, dict):
        messages = list(messages.values())
    texts = []
    for m in messages or []:
        with contextlib.suppress(AttributeError, TypeError):
            texts.append(str(m["message"]["text"]))
    return texts


def _worker_log_events(started: float) -> dict[str, list[tuple[float, str]]]:
    """The workers' log lines about limits and postponed deliveries, per member_id: (t, what)."""
    from datetime import datetime

    wanted = {
        "portal answered QUERY_LIMIT_EXCEEDED; pacing slowed": "slowed",
        "portal answered at the slowed pace; pacing sped up": "sped up",
        "inbound delivery postponed": "inbound postponed",
        "rest retry": "rest retry",
    }
    out: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for path in sorted(LOGS.glob("worker*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
                what = wanted.get(entry.get("message"))
                if what is None or "member_id" not in entry:
                    continue
                at = datetime.strptime(entry["time"], "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            detail = entry.get("share") or entry.get("code") or ""
            out[entry["member_id"]].append((at - started, f"{what} {detail}".strip()))
    for events in out.values():
        events.sort()
    return out


def print_trace(started, injected, portals, traffic, arrived, replies, limiter_samples) -> None:
    """--trace: where the time of the waiting messages went (see the module's docstring)."""
    accepted_at = {t: a for v in traffic.accepted.values() for t, a in v}
    delivered_at: dict[str, float] = {}
    for msgs in arrived.values():
        for text, at in msgs:
            delivered_at.setdefault(text, at)
    written_at = {t: a for v in traffic.written.values() for t, a in v}
    outside_at: dict[str, float] = {}
    for msgs in replies.values():
        for text, at in msgs:
            outside_at.setdefault(text, at)
    print("\n--trace: each fault's backlog (what was written before it ended) and the minute after it:")
    for at, ended, names in injected:
        if names and names[0].startswith("(quiet"):
            continue
        lines = []
        for what, sent, got in (("customer messages", accepted_at, delivered_at), ("replies", written_at, outside_at)):
            backlog = [t for t, a in sent.items() if at <= a < ended]
            last = max((got[t] for t in backlog if t in got), default=None)
            after = [got[t] - a for t, a in sent.items() if ended <= a < ended + 60 and t in got]
            lines.append(
                f"{what}: {len(backlog)} written during it, all arrived by "
                + (f"t+{last - started:.1f} ({last - ended:.1f} s after it ended)" if last else "-")
                + f"; written in the 60 s after: max {max(after, default=0):.1f} s, "
                f"p50 {common.median(after):.1f} s"
            )
        print(f"  t+{at - started:.0f}..t+{ended - started:.0f} {' + '.join(names)}:\n    " + "\n    ".join(lines))
    attempts: dict[str, list[tuple[float, int]]] = defaultdict(list)
    windows: dict[int, Counter] = defaultdict(Counter)
    print("\n--trace: imconnector.send.messages requests that met a limit or carried a message older than 5 s:")
    for p, b24 in enumerate(portals):
        with b24._standin.lock:
            requests = [dict(r) for r in b24.requests]
        lines = []
        for r in requests:
            at = r.get("at")
            if at is None or at < started:
                continue
            windows[int((at - started) // 10)][(r["method"], r["status"] == 200)] += 1
            if r["method"] != "imconnector.send.messages":
                continue
            texts = _texts(r["params"])
            for t in texts:
                attempts[t].append((at - started, r["status"]))
            oldest = max((at - accepted_at[t] for t in texts if t in accepted_at), default=0.0)
            if r["status"] != 200 or oldest > 5:
                lines.append(f"t+{at - started:.1f} {r['status']} n={len(texts)} oldest {oldest:.0f} s")
        print(f"  portal {p}: {len(lines)} requests: " + "; ".join(lines))
    methods = sorted({m for c in windows.values() for m, _ in c})
    rows = []
    for w in sorted(windows):
        c = windows[w]
        rows.append([f"t+{w * 10}"] + [f"{c[(m, True)]}/{c[(m, False)]}" for m in methods])
    print("\nrequests answered per 10 s, all portals (ok / not ok), by method:")
    print(
        common.table(
            rows, ["from", *[m.replace("imconnector.", "imc.").replace("imopenlines.", "iol.") for m in methods]]
        )
    )

    print("\nclient limiter, sampled every 0.5 s (per portal: share of the plan's rate / seconds to its next slot),")
    print("every 2 s while a portal was slowed or had to wait, and around it:")
    rows, last = [], -10.0
    for i, (at, state) in enumerate(limiter_samples):
        busy = any(share < 1.0 or slot > 0.05 for share, slot in state)
        near = any(any(sh < 1.0 or sl > 0.05 for sh, sl in s2) for _, s2 in limiter_samples[max(i - 4, 0) : i + 5])
        if (busy or near) and at - last >= 2.0:
            last = at
            rows.append([f"t+{at - started:.1f}"] + [f"{share:.3f} / {slot:.1f}" for share, slot in state])
    print(common.table(rows, ["at", *[f"portal {p}" for p in range(len(portals))]]) if rows else "  (never slowed)")

    events = _worker_log_events(started)
    print("\nworkers' log (INFO) per portal: answers that slowed or sped up the pacing (share after), postponed runs:")
    for p, b24 in enumerate(portals):
        mine = events.get(b24.member_id, [])
        print(f"  portal {p}: " + ("; ".join(f"t+{t:.1f} {what}" for t, what in mine) or "-"))

    slowest = sorted(((delivered_at[t] - a, t) for t, a in accepted_at.items() if t in delivered_at), reverse=True)[:12]
    print("\nthe slowest customer messages: accepted, each request carrying it (t+, status), at Bitrix24:")
    for delay, text in slowest:
        tries = ", ".join(f"{t:.1f} {s}" for t, s in attempts.get(text, []))
        print(
            f"  {text!r}: {delay:.1f} s; accepted t+{accepted_at[text] - started:.1f}; requests {tries}; "
            f"arrived t+{delivered_at[text] - started:.1f}"
        )


def compare(expected: list[str], got: list[str]) -> dict:
    seen = Counter(got)
    missing = [t for t in expected if seen[t] == 0]
    duplicated = sorted(t for t, n in seen.items() if n > 1)
    unexpected = [t for t in seen if t not in set(expected)]
    firsts = list(dict.fromkeys(got))
    order = [t for t in expected if t in seen]
    return {
        "missing": missing,
        "duplicated": duplicated,
        "unexpected": unexpected,
        "in_order": [t for t in firsts if t in set(expected)] == order,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between fault pairs")
    parser.add_argument("--outage", type=float, default=20.0, help="seconds each timed fault lasts")
    parser.add_argument("--settle", type=float, default=300.0, help="longest wait for everything to arrive")
    parser.add_argument("--rate", type=float, default=0.5, help="customer messages and operator replies/s per portal")
    parser.add_argument("--chats", type=int, default=3, help="chats per portal")
    parser.add_argument(
        "--faults",
        type=fault_kinds,
        default=None,
        metavar="KINDS",
        help=f"only these fault kinds, comma-separated (the others' places stay quiet): {', '.join(FAULT_KINDS)}; "
        "default all",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="print what the portals' requests and the client's limiter did, and the slowest messages' attempts",
    )
    args = parser.parse_args()

    run = f"{os.getpid()}-{secrets.token_hex(3)}"
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in LOGS.glob("*.log"):
        old.unlink()
    folder = Path(tempfile.mkdtemp(prefix="b24bench-soak-"))
    pg, redis, rabbit = None, None, None
    try:
        pg = OwnPostgres(folder / "pg")
        pg.start()
        redis = OwnRedis(folder)
        redis.start()
        rabbit = OwnRabbit(folder / "rabbitmq")
        rabbit.start()
        idle_from = rabbit.usage()[1]
        time.sleep(20)  # the node alone, nothing connected: what it costs idle
        rss, cpu = rabbit.usage()
        rabbit_idle = f"RSS {rss / 1024:.0f} MiB, CPU {100 * (cpu - idle_from) / 20:.1f}% of a core idle (20 s)"
    except BaseException:  # leave nothing behind: a server started, the temp folder
        if rabbit is not None:
            rabbit.stop()
        if redis is not None:
            redis.stop()
        if pg is not None and pg.running():
            with contextlib.suppress(BaseException):
                pg.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)
        raise
    port = common.free_port()
    os.environ.update(
        {
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{pg.port}/b24bench_soak_{os.getpid()}",
            "CACHE_URL": f"redis://127.0.0.1:{redis.port}/0",
            "BENCH_CACHE_PREFIX": f"b24bench-soak-{run}",
            "B24_APP_URL": f"http://127.0.0.1:{port}",
            "CELERY_BROKER_URL": rabbit.url,
            "CELERY_QUEUE": f"b24bench-soak-{run}",
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": "2",
            "LOG_LEVEL": os.environ.get("SOAK_LOG_LEVEL", "INFO" if args.trace else "WARNING"),
            "B24_TOKEN_SPOOL_DIR": str(folder / "held-tokens"),  # every process of the run shares it
            "OPENLINES_ALLOW_PRIVATE_WEBHOOKS": "true",  # the receiver listens on 127.0.0.1
            "OPENLINES_INBOUND_PER_MINUTE": "0",  # refusals come from the faults only
            # Beat's passes, shortened for the soak (each at its minimum or near it).
            "B24_OFFLINE_PULL_INTERVAL": "10",
            "B24_OFFLINE_MIN_TIMEOUT": "5",
            "OPENLINES_RECONCILE_INTERVAL": "10",
            "OPENLINES_WAITING_INTERVAL": "10",
            "OPENLINES_SWEEP_INTERVAL": "5",
            "B24_INBOX_SWEEP_INTERVAL": "5",
            "B24_TOKEN_HELD_INTERVAL": "5",
        }
    )
    procs = None
    try:
        with common.standin() as standin:
            common.setup_django(oauth_url=standin.oauth_url)
            import logging

            logging.getLogger().setLevel(logging.WARNING)  # this process's own lines; LOG_LEVEL is the children's
            from django.db import close_old_connections, connections
            from django.test import Client

            from b24widget.celery import app
            from bench.rest_list import install
            from openlines import lifecycle, registry
            from openlines.models import Delivery, InboundMessage, OutboundMessage
            from portals.models import Portal
            from sandbox.standin import rest_imconnector as imc

            with common.bench_database(), common.bench_cache():
                common.print_header(
                    f"soak: {args.minutes:g} min, a fault pair every {args.every:g} s ({args.outage:g} s outages), "
                    f"{PORTALS} portals x {args.chats} chats, {args.rate:g} msgs/s and {args.rate:g} replies/s each"
                    + ("" if args.faults is None else f"; only faults {','.join(sorted(args.faults))}")
                )
                print(
                    f"own PostgreSQL {pg.bin.parent.name} on :{pg.port}, own Redis on :{redis.port}, own RabbitMQ "
                    f"node {rabbit.node} on :{rabbit.port} (queue {os.environ['CELERY_QUEUE']}), gunicorn :{port}; "
                    f"logs {LOGS.relative_to(common.ROOT)}"
                )
                print(f"own RabbitMQ node: {rabbit_idle}")
                env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.settings"}
                procs = Processes(env, port, folder)
                procs.start_gunicorn()
                procs.start_worker(0)
                procs.start_worker(1)
                procs.start_beat()
                receiver = Receiver()
                client = Client()
                portals, channels = [], []
                for _ in range(PORTALS):
                    b24 = standin.add_portal()
                    stored = install(client, b24)
                    channel, secret = lifecycle.connect(
                        stored, registry.HTTP, "1", user_id="1", webhook_url=receiver.url
                    )
                    portals.append(b24)
                    channels.append((str(channel.public_id), secret))
                traffic = Traffic(port, args.chats, args.rate)
                # Each chat's first message makes its conversation at Bitrix24 (the operators answer in it).
                for p, (public_id, secret) in enumerate(channels):
                    for c in range(args.chats):
                        status = traffic.post(p, public_id, secret, f"chat-{p}-{c}", "hello", f"hello-{p}-{c}")
                        assert status == "202", status
                deadline = time.monotonic() + 120
                chat_ids: list[dict[str, int]] = []
                while time.monotonic() < deadline:
                    chat_ids = [{c["external_chat"]: c["chat_id"] for c in imc.conversations(b24)} for b24 in portals]
                    if all(len(ids) >= args.chats for ids in chat_ids):
                        break
                    time.sleep(0.5)
                else:
                    raise SystemExit(f"conversations not opened: {chat_ids}; see {LOGS}")
                opened = sum(map(len, chat_ids))
                print(f"setup: {PORTALS} portals installed and connected, {opened} conversations open")
                sys.stdout.flush()

                # --- what has arrived, and a timeline of what waits (every 10 s) ---
                def expected_inbound():
                    return {k: [t for t, _ in v] for k, v in traffic.accepted.items()}

                def at_bitrix24():
                    out = defaultdict(list)
                    for p, b24 in enumerate(portals):
                        for conv in imc.conversations(b24):
                            for m in conv["messages"]:
                                if m["outside"] and m["text"] != "hello":
                                    out[(p, conv["external_chat"])].append((m["text"], m["at"]))
                    return out

                def replies_received():
                    with receiver.lock:
                        return {k: list(v) for k, v in receiver.got.items()}

                timeline = []  # (at, inbound waiting, oldest s, replies waiting, oldest s, tasks held)
                sampler_stop = threading.Event()

                def tasks_held() -> str:
                    """Tasks sent more than 20 s ago and not started (a channel's queued mark, an inbox row sent and
                    still pending), and the messages ready in the broker's queue: 'channels/rows/ready'."""
                    from datetime import timedelta

                    from django.db.models import Q
                    from django.utils import timezone

                    from inbox.models import InboxItem
                    from openlines.models import Channel

                    parts = []
                    try:
                        old = timezone.now() - timedelta(seconds=20)
                        held = Q(inbound_queued_at__lt=old) | Q(outbound_queued_at__lt=old)
                        parts.append(str(Channel.objects.filter(held).count()))
                        parts.append(str(InboxItem.objects.filter(state="pending", enqueued_at__lt=old).count()))
                    except Exception:  # the database is away
                        parts += ["?", "?"]
                    finally:
                        connections.close_all()  # this thread's own
                    try:
                        with app.connection_for_read() as conn:
                            conn.ensure_connection(max_retries=1, timeout=2)
                            declared = conn.default_channel.queue_declare(os.environ["CELERY_QUEUE"], passive=True)
                            parts.append(str(declared.message_count))
                    except Exception:  # the broker is away
                        parts.append("-")
                    return "/".join(parts)

                def sample():
                    while not sampler_stop.wait(10):
                        now = time.time()
                        with traffic.lock:
                            accepted = [(t, a) for v in traffic.accepted.values() for t, a in v]
                            written = [(t, a) for v in traffic.written.values() for t, a in v]
                        got_in = {t for v in at_bitrix24().values() for t, _ in v}
                        got_out = {t for v in replies_received().values() for t, _ in v}
                        waiting_in = [a for t, a in accepted if t not in got_in]
                        waiting_out = [a for t, a in written if t not in got_out]
                        timeline.append(
                            (
                                now,
                                len(waiting_in),
                                now - min(waiting_in, default=now),
                                len(waiting_out),
                                now - min(waiting_out, default=now),
                                tasks_held(),
                            )
                        )

                threads = []
                for p, (public_id, secret) in enumerate(channels):
                    threads.append(threading.Thread(target=traffic.customer, args=(p, public_id, secret)))
                    threads.append(threading.Thread(target=traffic.operator, args=(p, portals[p], chat_ids[p])))
                threads.append(threading.Thread(target=sample, daemon=True))
                limiter_samples: list[tuple[float, list[tuple[float, float]]]] = []  # (at, [(share, next slot)])
                if args.trace:
                    plans = {
                        p.member_id: p.rest_plan
                        for p in Portal.objects.filter(member_id__in=[b.member_id for b in portals])
                    }
                    connections.close_all()

                    def sample_limiter():
                        while not sampler_stop.wait(0.5):
                            with contextlib.suppress(Exception):  # Redis stopped: no sample
                                limiter_samples.append((time.time(), limiter_state(portals, plans)))

                    threads.append(threading.Thread(target=sample_limiter, daemon=True))
                for thread in threads:
                    thread.start()
                faults = Faults(procs, pg, redis, rabbit, standin, portals, receiver, args.outage)
                rabbit_cpu_from = rabbit.usage()[1]
                pairs = faults.pairs(args.faults)
                injected = []  # (started, ended, names)
                started = time.time()
                end = started + args.minutes * 60
                n = 0
                time.sleep(min(10, args.every / 3))  # a quiet start
                while time.time() + 1 < end:
                    at = time.time()
                    names = run_pair(pairs[n % len(pairs)]) or ["(quiet: no chosen fault here)"]
                    injected.append((at, time.time(), names))
                    print(f"  t+{at - started:5.0f} s  {' + '.join(names)}")
                    sys.stdout.flush()
                    n += 1
                    time.sleep(max(0.0, min(at + args.every, end) - time.time()))
                traffic.stop.set()
                for thread in threads[:-1]:
                    thread.join(timeout=60)
                load_ended = time.time()

                # --- settle: faults off, wait until everything arrived (or --settle passed) ---
                def everything_arrived():
                    got_in = {k: {t for t, _ in v} for k, v in at_bitrix24().items()}
                    got_out = {k: {t for t, _ in v} for k, v in replies_received().items()}
                    inbound_ok = all(set(v) <= got_in.get(k, set()) for k, v in expected_inbound().items())
                    replies_ok = all({t for t, _ in v} <= got_out.get(k[1], set()) for k, v in traffic.written.items())
                    return inbound_ok and replies_ok

                settle_deadline = time.time() + args.settle
                while time.time() < settle_deadline and not everything_arrived():
                    time.sleep(2)
                settled = time.time() - load_ended
                time.sleep(15)  # late duplicates, if any, arrive too
                sampler_stop.set()
                close_old_connections()
                connections.close_all()

                # --- figures ---
                arrived = at_bitrix24()
                replies = replies_received()
                print(
                    f"\nload {load_ended - started:.0f} s, then faults off; everything arrived "
                    f"{settled:.0f} s later"
                    + ("" if everything_arrived() else f" -- NOT within --settle {args.settle:g} s")
                )
                rows, lost_lines = [], []
                totals = Counter()
                for label, expected, got in (
                    (
                        "customer messages accepted (202) -> Bitrix24",
                        expected_inbound(),
                        {k: [t for t, _ in v] for k, v in arrived.items()},
                    ),
                    (
                        "operator replies -> outside system",
                        {k: [t for t, _ in v] for k, v in traffic.written.items()},
                        {k: [t for t, _ in replies.get(k[1], [])] for k in traffic.written},
                    ),
                ):
                    count = Counter()
                    for key, texts in expected.items():
                        result = compare(texts, got.get(key, []))
                        count["sent"] += len(texts)
                        count["missing"] += len(result["missing"])
                        count["duplicated"] += len(result["duplicated"])
                        count["chats out of order"] += 0 if result["in_order"] else 1
                        count["unexpected"] += len(result["unexpected"])
                        if result["missing"]:
                            lost_lines.append(f"  {label}: chat {key[1]} missing {result['missing']}")
                        if result["duplicated"]:
                            lost_lines.append(f"  {label}: chat {key[1]} duplicated {result['duplicated']}")
                        if not result["in_order"]:
                            lost_lines.append(f"  {label}: chat {key[1]} out of order: {got.get(key)}")
                    rows.append(
                        [label, count["sent"], count["missing"], count["duplicated"], count["chats out of order"],
                         count["unexpected"]]
                    )  # fmt: skip
                    totals.update(count)
                print(common.table(rows, ["", "sent", "missing", "duplicated", "chats out of order", "unexpected"]))
                unsure_arrived = sum(
                    1 for p, chat, text, _, _ in traffic.unsure if text in {t for t, _ in arrived.get((p, chat), [])}
                )
                print(
                    f"customer POSTs refused or unanswered: {len(traffic.refused)} "
                    f"({', '.join(f'{s} {n}' for s, n in Counter(s for _, s in traffic.refused).most_common())}); "
                    f"unanswered but stored and delivered anyway (counted 'unexpected' above): {unsure_arrived}"
                )
                print(
                    f"operator replies whose /events/ delivery failed (recovered by offline pull/reconciliation): "
                    f"{len(traffic.events_refused)} "
                    f"({', '.join(f'{s} {n}' for s, n in Counter(s for _, s in traffic.events_refused).most_common())})"
                )
                live = set(standin._refresh)
                stored = list(Portal.objects.filter(member_id__in=[b.member_id for b in portals]))
                lost_tokens = [p.member_id for p in stored if p.refresh_token not in live]
                blocked = [p.member_id for p in stored if p.status == Portal.Status.BLOCKED]
                dead_in = InboundMessage.objects.filter(state=Delivery.DEAD).count()
                dead_out = OutboundMessage.objects.filter(state=Delivery.DEAD).count()
                waiting_in = InboundMessage.objects.exclude(state__in=[Delivery.SENT, Delivery.DEAD]).count()
                waiting_out = OutboundMessage.objects.exclude(state__in=[Delivery.SENT, Delivery.DEAD]).count()
                print(
                    f"tokens lost {len(lost_tokens)}; portals blocked {len(blocked)}; dead letters: inbound {dead_in}, "
                    f"outbound {dead_out}; still waiting: inbound {waiting_in}, outbound {waiting_out}; "
                    f"webhook 503s answered while down {receiver.refused}; stand-in errors {len(standin.errors)}"
                )
                print(f"processes started: {dict(procs.started)}")
                rss, cpu = rabbit.usage()
                print(
                    f"own RabbitMQ node at the end: RSS {rss / 1024:.0f} MiB, CPU {cpu - rabbit_cpu_from:.0f} s over "
                    f"the load and settle ({rabbit.starts} starts)"
                )
                from django.db.models import Count, Max
                from django.utils import timezone

                from inbox.models import InboxItem
                from openlines.models import WaitingReply

                def spread(model, field):
                    return dict(sorted(Counter(model.objects.values_list(field, flat=True)).items()))

                print(
                    f"attempts per row (1: sent at the first): inbound {spread(InboundMessage, 'attempts')}; "
                    f"outbound {spread(OutboundMessage, 'attempts')}"
                )
                operator_events = InboxItem.objects.filter(event="ONIMCONNECTORMESSAGEADD")
                sources = operator_events.values("source", "state", "outcome").annotate(
                    n=Count("id"), tries=Max("attempts")
                )
                print(
                    "operator reply events stored (source, state, outcome: rows, most attempts): "
                    + "; ".join(
                        f"{r['source']} {r['state']} {r['outcome'][:40]!r}: {r['n']}, {r['tries']}" for r in sources
                    )
                )
                for item in InboxItem.objects.filter(state="processing"):
                    behind = InboxItem.objects.filter(member_id=item.member_id, state="pending").count()
                    left = (item.lease_until - timezone.now()).total_seconds() if item.lease_until else 0
                    print(
                        f"  event held 'processing': {item.event} of portal {item.member_id[:8]}, received "
                        f"{item.received_at:%H:%M:%S}, attempts {item.attempts}, lease {left:.0f} s left, "
                        f"{behind} pending events of its portal; last error {item.last_error[-160:]!r}"
                    )
                for row in WaitingReply.objects.values("state", "reason").annotate(
                    n=Count("id"), tries=Max("attempts")
                ):
                    print(f"  replies that waited for a confirmation: {row}")

                from openlines.models import Channel

                now = timezone.now()
                for model, lease in ((InboundMessage, "inbound"), (OutboundMessage, "outbound")):
                    stuck = model.objects.exclude(state__in=[Delivery.SENT, Delivery.DEAD])
                    for channel in Channel.objects.filter(pk__in=stuck.values("channel_id")):
                        rows = stuck.filter(channel=channel).order_by("id")
                        first = rows.first()
                        until = getattr(channel, f"{lease}_lease_until")
                        held = f"{(until - now).total_seconds():.0f} s" if until else "free"
                        print(
                            f"  still waiting, {lease}, channel {channel.pk}: {rows.count()} rows, states "
                            f"{dict(Counter(rows.values_list('state', flat=True)))}; "
                            f"oldest: attempts {first.attempts}, "
                            f"next attempt in {(first.next_attempt_at - now).total_seconds():.0f} s, last error "
                            f"{first.last_error!r}; lease {held}, owner "
                            f"{getattr(channel, f'{lease}_lease_owner')!r}, queued at "
                            f"{getattr(channel, f'{lease}_queued_at')}"
                        )
                if lost_lines:
                    print("what went wrong, exactly:")
                    print("\n".join(lost_lines[:60]))

                # --- what each fault pair cost ---
                inbound_delay = {}
                for msgs in arrived.values():
                    for text, at in msgs:
                        inbound_delay.setdefault(text, at)
                reply_arrival = {}
                for msgs in replies.values():
                    for text, at in msgs:
                        reply_arrival.setdefault(text, at)
                cost_rows = []
                for i, (at, ended, names) in enumerate(injected):
                    until = injected[i + 1][0] if i + 1 < len(injected) else load_ended
                    sent_in = [(t, a) for v in traffic.accepted.values() for t, a in v if at <= a < until]
                    written = [(t, a) for v in traffic.written.values() for t, a in v if at <= a < until]
                    in_delays = [inbound_delay[t] - a for t, a in sent_in if t in inbound_delay]
                    out_delays = [reply_arrival[t] - a for t, a in written if t in reply_arrival]
                    cost_rows.append(
                        [
                            f"t+{at - started:.0f} {' + '.join(names)}",
                            f"{ended - at:.0f}",
                            sum(1 for a, _ in traffic.refused if at <= a < until),
                            f"{max(in_delays, default=0):.1f}",
                            sum(1 for a, _ in traffic.events_refused if at <= a < until),
                            f"{common.median(out_delays):.1f}",
                            f"{max(out_delays, default=0):.1f}",
                            len(written) - len(out_delays),
                        ]
                    )
                print(f"\nfaults injected (a pair every ~{args.every:g} s) and what each pair cost until the next one:")
                print(
                    common.table(
                        cost_rows,
                        [
                            "fault pair",
                            "s",
                            "customer POSTs refused",
                            "inbound max delay s",
                            "replies refused at /events/",
                            "reply p50 delay s",
                            "reply max delay s",
                            "replies never arrived",
                        ],
                    )
                )
                marks = {round(at - started): " + ".join(names) for at, _, names in injected}
                rows = []
                for at, wi, oi, wo, oo, held in timeline:
                    t = at - started
                    fault = "; ".join(m for k, m in marks.items() if t - 10 < k <= t)
                    phase = "load" if at <= load_ended else "settle"
                    rows.append([f"t+{t:.0f}", phase, wi, f"{oi:.0f}", wo, f"{oo:.0f}", held, fault])
                print(
                    "\nwhat waited, every 10 s (customer messages not yet at Bitrix24, replies not yet outside; tasks "
                    "held: channels whose task was sent > 20 s ago and not started / inbox rows likewise / messages "
                    "ready in the broker, '-' while it is down):"
                )
                print(
                    common.table(
                        rows,
                        [
                            "at",
                            "phase",
                            "inbound waiting",
                            "oldest s",
                            "replies waiting",
                            "oldest s",
                            "tasks held",
                            "faults begun",
                        ],
                    )
                )
                if args.trace:
                    print_trace(started, injected, portals, traffic, arrived, replies, limiter_samples)
                verdict = (
                    totals["missing"] == 0
                    and totals["duplicated"] == 0
                    and totals["chats out of order"] == 0
                    and not lost_tokens
                    and not blocked
                )
                print(f"\nverdict: {'nothing lost, nothing twice, order kept' if verdict else 'LOSSES (see above)'}")
                procs.stop_all()
                procs = None
                with contextlib.suppress(Exception), app.connection_for_write() as conn:
                    conn.default_channel.queue_delete(os.environ["CELERY_QUEUE"])
    finally:
        if procs is not None:
            procs.stop_all()
        rabbit.stop()
        redis.stop()
        with contextlib.suppress(Exception):
            pg.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
