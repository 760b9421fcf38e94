"""deploy/monitoring: the Grafana dashboard and the Prometheus alert rules use only series the app exports.

Every PromQL expression of both files is parsed (promql-parser: a typo in one rule makes Prometheus refuse
the whole rules file), each series it selects must be one `GET /metrics` really prints (scraped here with
METRICS_TOKEN set, after the app's metric hooks ran once so every labelled family has samples: counters
appear with their `_total` suffix), and each label it matches or groups by must be one those series carry.
"""

import json
import re
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "monitoring" / "grafana-dashboard.json"
ALERTS = ROOT / "deploy" / "monitoring" / "alerts.yaml"
TOKEN = "metrics-token-for-the-monitoring-test-0123456789"

# Prometheus adds these labels to every series it scrapes, and makes `up` for every target itself.
TARGET_LABELS = {"job", "instance"}
PROMETHEUS_SERIES = {"up"}
# Grafana's variables, replaced by a value of the right kind before parsing (as Grafana does before a query).
GRAFANA = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "job": "b24widget",
    "worker_job": "b24widget-worker",
}
# Read from the shared database at each scrape: every replica reports the same figure, so summing them over
# replicas would multiply the backlog by the number of replicas.
DATABASE_GAUGES = ("b24widget_inbox_", "b24widget_openlines_")


def _panels(panels):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def dashboard_expressions() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [
        (f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in _panels(board["panels"])
        for t in p.get("targets") or []
        if t.get("expr")
    ]


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(f"alert {r.get('alert') or r.get('record')}", r["expr"]) for g in rules["groups"] for r in g["rules"]]


EXPRESSIONS = dashboard_expressions() + alert_expressions()


def parse(expr: str):
    expr = re.sub(r"\$\{?(\w+)\}?", lambda m: GRAFANA[m.group(1)], expr)  # an unknown variable: KeyError
    return promql_parser.parse(expr)


def selectors(ast) -> list[tuple[str | None, set]]:
    """(series name, label names matched) of each selector, and (None, labels) of each `by (...)`."""
    found = []

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append((node.name, {m.name for m in node.matchers.matchers}))
        elif (
            isinstance(node, promql_parser.AggregateExpr)
            and node.modifier is not None
            and node.modifier.type == promql_parser.AggModifierType.By
        ):
            found.append((None, set(node.modifier.labels)))
        return True

    promql_parser.walk(ast, visit)
    return found


@pytest.fixture
def exported(client, settings, db) -> dict[str, set]:
    """What /metrics prints: {sample name: the label names it carries}."""
    from b24widget import metrics
    from bitrix24 import metrics as client_metrics
    from placements import metrics as widget_metrics
    from portals import tokens

    # Each hook once, where the product code calls it, so every labelled family prints samples.
    widget_metrics.widget_open("shown")
    widget_metrics.verification(cached=True)
    client_metrics.rest_call("server.time")
    client_metrics.limit_wait("rate", 0.01)
    client_metrics.limit_answer("QUERY_LIMIT_EXCEEDED")
    tokens.refresh_failed("client_misconfigured")
    metrics.task_started("t-1")
    metrics.task_finished("t-1", "portals.sweep_inbox")
    metrics.task_failed("portals.sweep_inbox")
    metrics.task_retried("portals.sweep_inbox")
    client.get("/healthz")  # a request through the middleware
    settings.METRICS_TOKEN = TOKEN
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    series = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def test_both_files_have_expressions():
    assert len(dashboard_expressions()) >= 10 and len(alert_expressions()) >= 8


@pytest.mark.parametrize("where, expr", EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_every_expression_is_valid_promql(where, expr):
    try:
        ast = parse(expr)
    except ValueError as exc:
        pytest.fail(f"{where}: {exc}\n{expr}")
    assert any(name for name, _ in selectors(ast)), f"{where} selects no series by name"


def test_every_series_and_label_used_is_exported_by_the_app(exported):
    problems, used = [], set()
    for where, expr in EXPRESSIONS:
        found = selectors(parse(expr))
        names = [name for name, _ in found if name]
        used.update(names)
        carried = set(TARGET_LABELS)
        for name in names:
            if name not in exported and name not in PROMETHEUS_SERIES:
                problems.append(f"{where}: {name} is not exported (/metrics prints {sorted(exported)})")
            carried |= exported.get(name, set())
        for name, labels in found:
            own = TARGET_LABELS | (exported.get(name, set()) if name else carried)
            if name in PROMETHEUS_SERIES:
                own = TARGET_LABELS
            if labels - own:
                problems.append(f"{where}: label(s) {sorted(labels - own)} not on {name or 'the series grouped'}")
    assert not problems, "\n".join(problems)
    # Every app series an operator needs is on the dashboard or in an alert (a new metric gets a panel).
    app_series = {name for name in exported if name.startswith("b24widget_") and not name.endswith("_created")}
    assert app_series <= used, f"exported but neither shown nor alerted on: {sorted(app_series - used)}"


@pytest.mark.parametrize("where, expr", EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_database_gauges_are_never_summed_over_replicas(where, expr):
    def visit(node):
        if isinstance(node, promql_parser.AggregateExpr) and str(node.op) in ("sum", "count"):
            inner = [name for name, _ in selectors(node.expr) if name]
            assert not [n for n in inner if n.startswith(DATABASE_GAUGES)], f"{where}: {expr}"
        return True

    promql_parser.walk(parse(expr), visit)


def test_the_dashboard_is_importable_into_grafana():
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["uid"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = list(_panels(board["panels"]))
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        for target in panel.get("targets") or []:
            assert target["datasource"]["uid"] == "${datasource}" and target["refId"], panel["title"]


def test_every_alert_has_a_severity_and_a_runbook():
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert re.fullmatch(r"[0-9]+[smh]", str(rule["for"])), rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"] and notes["runbook"].lstrip().startswith("1."), rule["alert"]
