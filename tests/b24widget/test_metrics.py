"""/metrics: Prometheus counters behind a bearer token; the product's hooks count what happens."""

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from b24widget.celery import app as celery_app
from tests.helpers import database_url, free_port
from tests.placements.frames import is_widget, open_widget
from tests.workers import Worker, wait_for

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "metrics-token-for-tests-0123456789"


def scrape(client) -> dict:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_without_a_token_configured_there_is_no_endpoint(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN])
def test_a_wrong_or_missing_token_is_forbidden(client, settings, header):
    settings.METRICS_TOKEN = TOKEN
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.get("/metrics", **extra)
    assert response.status_code == 403 and b"b24widget_" not in response.content


@pytest.mark.django_db
def test_widget_opens_refusals_verifications_and_rest_calls_are_counted(client, settings, installed):
    settings.METRICS_TOKEN = TOKEN
    frame = Client(enforce_csrf_checks=True)
    _, b24 = installed
    before = scrape(client)
    batches_before = b24.calls("batch")
    fields = b24.placement_post()
    assert is_widget(open_widget(frame, fields))
    assert is_widget(open_widget(frame, fields))  # the cached verdict
    bad = dict(fields, AUTH_ID="not-a-token-anybody-issued")
    assert open_widget(frame, bad).status_code == 403
    after = scrape(client)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("b24widget_widget_opens_total", result="shown") == 2
    assert grew("b24widget_widget_opens_total", result="bad_token") == 1
    assert grew("b24widget_verifications_total", source="cache") == 1
    assert grew("b24widget_verifications_total", source="bitrix24") == 2
    batches = b24.calls("batch") - batches_before
    assert batches >= 1 and grew("b24widget_rest_calls_total", method="batch") == batches


def test_refresh_failures_and_limit_waits_are_counted_by_code_and_method():
    from bitrix24 import metrics
    from portals import tokens

    metrics.rest_call("crm.item.list")
    before = metrics.LIMIT_WAITS.labels("rate", "crm.item.list")._value.get()
    metrics.limit_wait("rate", 0.25)
    metrics.limit_wait("rate", 0)  # no wait, nothing counted
    assert metrics.LIMIT_WAITS.labels("rate", "crm.item.list")._value.get() == before + 1
    failures = tokens.REFRESH_FAILURES.labels("invalid_grant")._value.get()
    tokens.refresh_failed("invalid_grant")
    assert tokens.REFRESH_FAILURES.labels("invalid_grant")._value.get() == failures + 1
    tokens.refresh_failed('weird code {with} "quotes" and a very long tail ' * 3)
    codes = [sample.labels["code"] for family in tokens.REFRESH_FAILURES.collect() for sample in family.samples]
    assert codes and all(len(code) <= 48 and '"' not in code and " " not in code for code in codes)


INCREMENT = """
import django, sys
django.setup()
from bitrix24 import metrics
for _ in range(int(sys.argv[1])):
    metrics.rest_call("server.time")
"""
SCRAPE = """
import django
django.setup()
from django.test import Client
from django.test.utils import override_settings
with override_settings(METRICS_TOKEN="t", ALLOWED_HOSTS=["testserver"]):
    print(Client().get("/metrics", HTTP_AUTHORIZATION="Bearer t").content.decode())
"""


@pytest.mark.slow  # gunicorn workers
def test_gunicorn_workers_counters_are_added_up_in_multiprocess_mode(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "tests.settings"}
    for count in (3, 4):  # two "workers", each its own process
        subprocess.run([sys.executable, "-c", INCREMENT, str(count)], cwd=ROOT, env=env, check=True, timeout=60)
    page = subprocess.run(
        [sys.executable, "-c", SCRAPE], cwd=ROOT, env=env, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert 'b24widget_rest_calls_total{method="server.time"} 7.0' in page


def test_gunicorn_starts_multiprocess_mode_with_an_empty_folder(tmp_path, monkeypatch):
    from b24widget import gunicorn as config

    (tmp_path / "counter_123.db").write_bytes(b"last run")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    config.on_starting(server=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_limit_answers_are_counted_by_code():
    from bitrix24 import limits, metrics

    before = metrics.LIMIT_ANSWERS.labels("QUERY_LIMIT_EXCEEDED")._value.get()
    limits.note_limited("m-metrics")
    assert metrics.LIMIT_ANSWERS.labels("QUERY_LIMIT_EXCEEDED")._value.get() == before + 1


@pytest.mark.django_db
def test_the_inbox_backlog_is_a_metric(client, settings, installed):
    from inbox.models import InboxItem

    portal, _b24 = installed
    InboxItem.objects.create(member_id=portal.member_id, portal=portal, event="ONAPPUPDATE", idempotency_key="a" * 64)
    InboxItem.objects.create(
        member_id=portal.member_id,
        portal=portal,
        event="ONAPPUPDATE",
        idempotency_key="b" * 64,
        state=InboxItem.State.FAILED,
    )
    settings.METRICS_TOKEN = TOKEN
    samples = scrape(client)
    assert value(samples, "b24widget_inbox_unfinished") == 1 and value(samples, "b24widget_inbox_failed") == 1
    assert ("b24widget_inbox_oldest_unfinished_seconds", ()) in samples


def test_requests_are_counted_and_timed_by_view_never_by_path(client, settings, db):
    settings.METRICS_TOKEN = TOKEN
    before = scrape(client)
    assert client.get("/healthz").status_code == 200
    assert client.get("/no/such/page-4f1e?token=secret").status_code == 404
    assert client.generic("BREW", "/healthz").status_code == 405  # a made-up method is "other"
    after = scrape(client)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("b24widget_http_requests_total", view="healthz", method="GET", status="200") == 1
    assert grew("b24widget_http_requests_total", view="unmatched", method="GET", status="404") == 1
    assert grew("b24widget_http_requests_total", view="healthz", method="other", status="405") == 1
    assert grew("b24widget_http_request_duration_seconds_count", view="healthz") == 2
    assert grew("b24widget_http_requests_total", view="metrics", method="GET", status="200") == 1  # the 1st scrape
    labels = {v for (name, pairs) in after if name.startswith("b24widget_http_") for _, v in pairs}
    assert not [label for label in labels if "/" in label or "4f1e" in label]


@celery_app.task(name="tests.metrics.flaky", bind=True, max_retries=1)
def flaky(self, mode: str) -> str:
    if mode == "fail":
        raise ValueError("boom")
    if mode == "retry" and not self.request.retries:
        raise self.retry(countdown=0)
    return "done"


def test_tasks_are_counted_by_name_with_failures_retries_and_durations(client, settings, db):
    """The Celery task signals (task_prerun/postrun/failure/retry), as a worker sends them around each run."""
    settings.METRICS_TOKEN = TOKEN
    before = scrape(client)
    assert flaky.apply(args=["ok"]).get() == "done"
    assert flaky.apply(args=["fail"]).failed()
    flaky.apply(args=["retry"])  # one run asks for a retry, the retry (run at once, eagerly) succeeds
    after = scrape(client)

    def grew(name):
        return value(after, name, task="tests.metrics.flaky") - value(before, name, task="tests.metrics.flaky")

    assert grew("b24widget_celery_tasks_total") == 4
    assert grew("b24widget_celery_task_failures_total") == 1
    assert grew("b24widget_celery_task_retries_total") == 1
    assert grew("b24widget_celery_task_duration_seconds_count") == 4


# --- each process type its own folder: a web restart keeps the worker's counters ------------------------------


def _scrape_url(url: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}", "Host": "localhost"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _start_web(env: dict, port: int, log) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:b24widget.gunicorn", "b24widget.wsgi"],
        cwd=ROOT,
        env={**env, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for(lambda: _answers(f"http://127.0.0.1:{port}/metrics") or process.poll() is not None, what="gunicorn")
    assert process.poll() is None
    return process


def _answers(url: str) -> bool:
    try:
        _scrape_url(url)
        return True
    except OSError:
        return False


@pytest.mark.slow  # a Celery worker and gunicorn, restarted
@pytest.mark.django_db(transaction=True)
def test_a_web_restart_keeps_the_workers_task_series(standin, tmp_path):
    worker_port, web_port = free_port(), free_port()
    common = {"METRICS_TOKEN": TOKEN, "WORKER_METRICS_PORT": str(worker_port), "WORKER_METRICS_ADDRESS": "127.0.0.1"}
    worker = Worker(
        standin, tmp_path, "metrics", env={**common, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "worker")}
    ).wait_ready()
    web_env = {
        **os.environ,
        **common,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "B24_OAUTH_URL": standin.oauth_url,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "web"),
        "WORKER_METRICS_PORT": "0",
    }
    worker_url, web_url = f"http://127.0.0.1:{worker_port}/metrics", f"http://127.0.0.1:{web_port}/metrics"
    web = None
    try:
        celery_app.send_task("portals.sweep_inbox")
        task = ("b24widget_celery_tasks_total", (("task", "portals.sweep_inbox"),))
        wait_for(lambda: _scrape_url(worker_url).get(task), what="the worker's task series")
        with open(tmp_path / "web.log", "wb") as log:
            web = _start_web(web_env, web_port, log)
        page = _scrape_url(web_url)
        assert any(name == "b24widget_http_requests_total" for name, _labels in page)
        before = _scrape_url(worker_url)[task]
        web.send_signal(signal.SIGTERM)  # a web restart: gunicorn empties its own folder at start
        web.wait(timeout=60)
        with open(tmp_path / "web.log", "ab") as log:
            web = _start_web(web_env, web_port, log)
        assert _scrape_url(worker_url)[task] == before >= 1
        assert sorted(p.name for p in (tmp_path / "worker").iterdir() if p.suffix == ".db")  # untouched
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(worker_url, timeout=10)
        assert refused.value.code == 403
    finally:
        if web is not None and web.poll() is None:
            web.send_signal(signal.SIGTERM)
            web.wait(timeout=60)
        worker.stop()
