"""Metrics: recorded values appear on /metrics; /healthz follows the age of the last pass."""

from __future__ import annotations

import pytest
import requests

from reconciler.metrics import Metrics, parse_address


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def served():
    clock = FakeClock()
    metrics = Metrics(interval=10.0, stale_intervals=3, clock=clock)
    server = metrics.serve("127.0.0.1:0")
    yield metrics, server, clock
    server.stop()


def scrape(server) -> str:
    resp = requests.get(server.url + "/metrics", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    return resp.text


def test_recorded_values_are_scraped(served):
    metrics, server, _ = served
    metrics.transition("vault-action", "bind", "pending", "policy-bound")
    metrics.transition("vault-action", "bind", "pending", "policy-bound")
    metrics.transition("vault-action", "create", None, "pending")
    metrics.dispatch_latency(3.2)
    metrics.report_latency(0.7)
    metrics.external_error("vault")
    metrics.pass_duration(0.12)
    metrics.set_runs_by_state({"pending": 2, "running": 1})
    metrics.set_leader(True)
    text = scrape(server)
    assert (
        'reconciler_transitions_total{from_state="pending",kind="vault-action",to_state="policy-bound",transition="bind"} 2.0'
        in text
    )
    assert 'from_state="none"' in text
    assert "reconciler_dispatch_latency_seconds_count 1.0" in text
    assert "reconciler_dispatch_latency_seconds_sum 3.2" in text
    assert 'reconciler_report_latency_seconds_bucket{le="1.0"} 1.0' in text
    assert 'reconciler_external_errors_total{system="vault"} 1.0' in text
    assert "reconciler_pass_duration_seconds_count 1.0" in text
    assert 'reconciler_runs{state="pending"} 2.0' in text
    assert 'reconciler_runs{state="running"} 1.0' in text
    assert 'reconciler_runs{state="reported"} 0.0' in text
    assert "reconciler_leader 1.0" in text
    assert "reconciler_last_pass_timestamp_seconds 1000.0" in text


def test_runs_by_state_resets_states_that_emptied(served):
    metrics, server, _ = served
    metrics.set_runs_by_state({"running": 4})
    metrics.set_runs_by_state({"reported": 4})
    text = scrape(server)
    assert 'reconciler_runs{state="running"} 0.0' in text
    assert 'reconciler_runs{state="reported"} 4.0' in text


def test_each_instance_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.external_error("nomad")
    assert b'reconciler_external_errors_total{system="nomad"} 1.0' in a.exposition()
    assert b'reconciler_external_errors_total{system="nomad"} 0.0' in b.exposition(), "exported at 0 from the start"


def test_healthz_ok_then_503_when_the_last_pass_is_too_old(served):
    metrics, server, clock = served
    resp = requests.get(server.url + "/healthz", timeout=5)
    assert resp.status_code == 200 and resp.text.startswith("ok")
    metrics.pass_duration(0.1)
    clock.t += 12.5
    resp = requests.get(server.url + "/healthz", timeout=5)
    assert resp.status_code == 200
    assert "ok: last pass 12.5 s ago" in resp.text
    clock.t += 20  # 32.5 s > 3 intervals of 10 s
    resp = requests.get(server.url + "/healthz", timeout=5)
    assert resp.status_code == 503
    assert "32.5 s ago" in resp.text


def test_healthz_503_when_no_pass_ever_finished(served):
    _, server, clock = served
    clock.t += 31
    resp = requests.get(server.url + "/healthz", timeout=5)
    assert resp.status_code == 503 and "no pass finished" in resp.text


def test_unknown_path_is_404_and_stop_releases_the_port():
    metrics = Metrics()
    server = metrics.serve("127.0.0.1:0")
    url = server.url
    assert requests.get(url + "/nope", timeout=5).status_code == 404
    server.stop()
    server.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/metrics", timeout=2)


def test_parse_address():
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address(":9464") == ("0.0.0.0", 9464)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    with pytest.raises(ValueError, match="host:port"):
        parse_address("localhost")


def test_a_standby_that_keeps_turning_stays_healthy(served):
    metrics, server, clock = served
    metrics.set_leader(False)
    clock.t += 25
    metrics.alive()
    clock.t += 25  # 50 s since start, no pass ever, but the loop turned 25 s ago
    resp = requests.get(server.url + "/healthz", timeout=5)
    assert resp.status_code == 200 and "standby" in resp.text
    clock.t += 10  # 35 s since the loop last turned
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 503
