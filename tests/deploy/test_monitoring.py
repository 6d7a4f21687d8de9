"""Prometheus config, alert rules and their unit tests, and the Grafana
dashboard, checked against the metric contract in artefacts.py; with
promtool (scripts/test installs Debian's prometheus) also checked by
Prometheus itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.artefacts import (
    ALERT_TESTS,
    ALERTS,
    API_PORT,
    COMPOSE,
    DASHBOARD,
    DEPLOY,
    HISTOGRAM_SUFFIXES,
    METRICS,
    METRICS_PORT,
    PROMETHEUS,
    REPO,
    TARGET_LABELS,
    compose_services,
    load_yaml,
    volume_source,
)


# --------------------------------------------------------------- Prometheus
def test_prometheus_scrapes_api_worker_and_trainer() -> None:
    config = load_yaml(PROMETHEUS)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    services = compose_services(COMPOSE)
    expected = {"safespot-api": ("api", API_PORT), "safespot-worker": ("worker", METRICS_PORT),
                "safespot-trainer": ("trainer", METRICS_PORT)}
    for job_name, (service, port) in expected.items():
        job = jobs[job_name]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == [service] and service in services
        assert sd["type"] == "A" and sd["port"] == port
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS.parent / rule_file).is_file()
    mounts = dict(volume_source(v) for v in services["prometheus"]["volumes"])
    assert mounts["./deploy/prometheus"] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
REQUIRED_ALERTS = {
    "SafeSpotApiDown", "SafeSpotRedisDown", "SafeSpotNoReadyWorkers", "SafeSpotQueueBacklogHigh",
    "SafeSpotQueueBacklogGrowing", "SafeSpotHigh5xxRatio", "SafeSpotApiLatencyP95High",
    "SafeSpotLowSafeSpotFoundRatio", "SafeSpotOodFlagSpike", "SafeSpotJobFailures",
}


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def test_alert_rules_have_the_right_structure() -> None:
    groups = load_yaml(ALERTS)["groups"]
    assert groups and len({g["name"] for g in groups}) == len(groups)
    names = []
    for group in groups:
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
            names.append(rule["alert"])
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert DURATION.match(str(rule["for"])), rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= REQUIRED_ALERTS
    by_name = {r["alert"]: r for r in alert_rules()}
    assert "safespot_redis_up == 0" in by_name["SafeSpotRedisDown"]["expr"]
    assert 'job="safespot-api"' in by_name["SafeSpotApiDown"]["expr"]


def test_alert_unit_tests_cover_existing_alerts() -> None:
    tests = load_yaml(ALERT_TESTS)
    assert tests["rule_files"] == ["alerts.yml"]
    names = {r["alert"] for r in alert_rules()}
    tested = {case["alertname"] for t in tests["tests"] for case in t.get("alert_rule_test", [])}
    assert tested and tested <= names
    assert {"SafeSpotRedisDown", "SafeSpotNoReadyWorkers", "SafeSpotHigh5xxRatio"} <= tested


# ---------------------------------------------------------- metric contract
METRIC_TOKEN = re.compile(r"\bsafespot_[a-z0-9_]+")


def metric_base(token: str) -> str:
    if token in METRICS:
        return token
    for suffix in HISTOGRAM_SUFFIXES:
        base = token.removesuffix(suffix)
        if base != token and base in METRICS:
            assert METRICS[base][0] == "histogram", f"{token}: {base} is not a histogram"
            return base
    raise AssertionError(f"{token} is not a metric the code exports (see METRICS)")


def metric_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml", ".json"})


def exprs_in(path: Path) -> list[str]:
    """PromQL expressions in alert rules, alert tests and the dashboard."""
    if path.suffix == ".json":
        panels = json.loads(path.read_text())["panels"]
        return [t["expr"] for p in panels for t in p.get("targets", [])]
    return [r["expr"] for r in alert_rules()] if path == ALERTS else []


@pytest.mark.parametrize("path", metric_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_only_contract_metrics_are_referenced(path: Path) -> None:
    text = path.read_text()
    for token in set(METRIC_TOKEN.findall(text)):
        metric_base(token)
    for expr in exprs_in(path):
        for token, matchers in re.findall(r"\b(safespot_[a-z0-9_]+)\{([^}]*)\}", expr):
            labels = METRICS[metric_base(token)][1] | TARGET_LABELS
            if token.endswith("_bucket"):
                labels |= {"le"}
            for label in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers):
                assert label in labels, f"{path.name}: {token} has no label {label}"
        for func, token in re.findall(r"\b(rate|increase|irate)\((safespot_[a-z0-9_]+)", expr):
            base = metric_base(token)
            assert METRICS[base][0] == "counter" or token.endswith(HISTOGRAM_SUFFIXES), \
                f"{path.name}: {func}() of the gauge {token}"


def test_alerts_and_dashboard_reference_metrics() -> None:
    alerts = set(METRIC_TOKEN.findall(ALERTS.read_text()))
    assert {"safespot_redis_up", "safespot_workers_ready", "safespot_queue_depth",
            "safespot_http_requests_total", "safespot_worker_safe_spots_total",
            "safespot_worker_ood_flags_total", "safespot_worker_jobs_total"} <= alerts


# ----------------------------------------------------------------- dashboard
def test_dashboard_parses_and_every_panel_has_targets() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    data_panels = [p for p in panels if p["type"] != "row"]
    assert len(data_panels) >= 10
    for panel in data_panels:
        assert panel["title"] and {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        assert panel["targets"], f"panel {panel['title']} has no target"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"]
            uid = target.get("datasource", panel.get("datasource", {})).get("uid", "")
            assert uid.strip("${}") in variables, f"panel {panel['title']}: unknown data source {uid}"
    used = {metric_base(t) for p in data_panels for tg in p["targets"]
            for t in METRIC_TOKEN.findall(tg["expr"])}
    assert {"safespot_http_requests_total", "safespot_http_request_duration_seconds",
            "safespot_queue_depth", "safespot_worker_batch_size", "safespot_worker_jobs_total",
            "safespot_worker_safe_spots_total", "safespot_worker_ood_flags_total",
            "safespot_worker_busy_seconds_total", "safespot_worker_model_info"} <= used
    latency = [tg["expr"] for p in data_panels for tg in p["targets"]
               if "safespot_http_request_duration_seconds_bucket" in tg["expr"]]
    assert {q for q in ("0.5", "0.95", "0.99") if any(f"histogram_quantile({q}," in e for e in latency)} \
        == {"0.5", "0.95", "0.99"}



# ------------------------------------------- optional: real tools when present
def test_promtool_accepts_config_rules_tests_and_dashboard_queries(tmp_path: Path) -> None:
    assert shutil.which("promtool"), "promtool is missing: scripts/test installs Debian's prometheus"

    def run(*args: str) -> None:
        done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr

    run("check", "config", str(PROMETHEUS))
    run("check", "rules", str(ALERTS))
    run("test", "rules", str(ALERT_TESTS))
    # The dashboard's queries, checked as recording rules (PromQL syntax).
    exprs = exprs_in(DASHBOARD)
    rules = [{"record": f"dashboard:query{i}", "expr": e.replace("$__rate_interval", "5m")}
             for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run("check", "rules", str(path))
