"""The monitoring we ship (deploy/prometheus, deploy/grafana) works on the metrics a running reconciler exports.

* every metric an alert or a dashboard panel names is in a running reconciler's ``/metrics``
  (a renamed metric fails here, with or without Prometheus installed);
* ``promtool`` checks the rules and runs their unit tests (deploy/prometheus/*.test.yml);
* a real Prometheus (Debian's ``prometheus`` package, installed by ``.ci/run``) scrapes a
  running ``reconciler run``, loads the rules, and finds every named metric.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.crash.support import Service
from tests.loop.test_end_to_end import action_toml, result

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "reconciler-alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "reconciler-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "reconciler-dashboard.json"

pytestmark = pytest.mark.timeout(240)


def _expressions() -> list[str]:
    rules = re.findall(r"^\s*expr: (.+)$", RULES.read_text(encoding="utf-8"), re.M)
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    return rules + [t["expr"] for p in panels for t in p["targets"]]


def named_metrics() -> set[str]:
    return {m for e in _expressions() for m in re.findall(r"\breconciler_[a-z_]+", e)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def running(cluster, tmp_path_factory):
    """A ``reconciler run`` serving /metrics that has reported one action."""
    port = _free_port()
    service = Service(cluster, tmp_path_factory.mktemp("monitoring"), "m", RECONCILER_METRICS_ADDR=f"127.0.0.1:{port}")
    cluster.merge_action("monitored", action_toml("monitored"))
    service.start()
    deadline = time.time() + 90
    while result(cluster, "monitored") is None and time.time() < deadline:
        time.sleep(0.2)
    assert result(cluster, "monitored") is not None, service.log_tail()
    yield f"127.0.0.1:{port}"
    assert service.terminate() == 0


def test_alerts_and_panels_name_metrics_the_rules_file_and_dashboard_agree_on():
    names = named_metrics()
    assert {"reconciler_leader", "reconciler_run_oldest_age_seconds", "reconciler_nomad_watch_live",
            "reconciler_result_push_failures_total", "reconciler_claim_revocation_failures_total"} <= names


def test_every_named_metric_is_in_a_running_reconcilers_metrics(running):
    text = requests.get(f"http://{running}/metrics", timeout=10).text
    exported = set(re.findall(r"^([a-z_]+)(?:\{| )", text, re.M))
    missing = sorted(named_metrics() - exported)
    assert missing == [], f"alerts or panels name metrics /metrics does not export: {missing}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent, capture_output=True, text=True, timeout=60)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text(encoding="utf-8")))
    defined = set(re.findall(r"- alert: (\w+)", RULES.read_text(encoding="utf-8")))
    assert defined <= tested, f"alerts without a unit test: {sorted(defined - tested)}"


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (apt-get install prometheus)")
def test_a_real_prometheus_scrapes_the_reconciler_and_loads_the_rules(running, tmp_path):
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{json.dumps(str(RULES))}]\n"
        "scrape_configs:\n"
        f"  - job_name: reconciler\n    static_configs: [{{targets: [{json.dumps(running)}]}}]\n"
    )
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        def query(q: str) -> list:
            try:
                reply = requests.get(f"{api}/query", params={"query": q}, timeout=5).json()
            except (requests.RequestException, ValueError):
                return []
            return reply.get("data", {}).get("result", []) if reply.get("status") == "success" else []

        deadline = time.time() + 60
        while not query('up{job="reconciler"} == 1') and time.time() < deadline:
            time.sleep(0.5)
        assert query('up{job="reconciler"} == 1'), (tmp_path / "prometheus.log").read_text()[-2000:]
        missing = [name for name in sorted(named_metrics()) if not query(f'count({{__name__="{name}"}})')]
        assert missing == [], f"Prometheus has no series for {missing}"
        groups = requests.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == 8 and all(r["health"] in ("ok", "unknown") for r in rules), rules
        firing = [r["name"] for r in rules if r["state"] == "firing"]
        assert "ReconcilerNoLeader" not in firing and "ReconcilerDown" not in firing
    finally:
        proc.terminate()
        proc.wait(timeout=20)
