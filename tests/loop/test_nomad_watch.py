"""The Nomad watch end to end: the event stream keeps a running child cheap; a cut watch is said and survived.

Against the strict Nomad double (the suite-wide fixture in ``tests/conftest.py`` fails a test whose
requests the double refused as malformed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from states.machine import State

from .test_end_to_end import action_toml, result, write_formula

pytestmark = pytest.mark.timeout(300)


def _serve(harness) -> tuple[threading.Event, threading.Thread, list[bool]]:
    stop = threading.Event()
    outcome: list[bool] = []
    thread = threading.Thread(
        target=lambda: outcome.append(harness.reconciler.serve(stop, until_idle=True, timeout=150)), daemon=True
    )
    thread.start()
    return stop, thread, outcome


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def _watch_record(harness) -> dict:
    raw = harness.store.get_value("nomad_watch")
    return json.loads(raw) if raw else {}


def test_a_running_child_costs_under_two_nomad_requests_a_minute_with_the_watch_live(cluster, harness):
    write_formula(cluster, "sleepy", "sleep 15\necho slept\n")
    cluster.merge_action("watch-live", action_toml("watch-live", formula="sleepy"))
    stop, thread, outcome = _serve(harness)
    try:
        _wait(lambda: (harness.store.find("watch-live") or None) is not None
              and harness.store.find("watch-live").state == State.RUNNING, 60, "the run started")
        run = harness.store.find("watch-live")
        job_id = run.nomad_job_id
        assert _watch_record(harness).get("state") == "live"
        calls_before = len(cluster.nomad.calls)
        started = time.monotonic()
        _wait(lambda: harness.store.find("watch-live").state != State.RUNNING, 60, "the run was collected")
        running_for = time.monotonic() - started
        window = cluster.nomad.calls[calls_before:]
        thread.join(120)
    finally:
        stop.set()
    assert outcome == [True]
    about_child = [c for c in window if job_id in c.path or any(job_id in v for vs in c.query.values() for v in vs)]
    # the collection itself (job, allocations, logs, stop) is the end, not the watching
    watching = [c for c in about_child if c.method == "GET"]
    assert running_for >= 8, running_for
    per_minute_budget = 2 * running_for / 60
    collect_reads = 2  # job + allocations when the end is seen (logs are read by allocation id)
    assert len(watching) <= collect_reads + per_minute_budget, [(c.method, c.path) for c in watching]
    streams = [c for c in window if c.path == "/v1/event/stream"]
    assert len(streams) <= 1  # one connection for every child, not one per child (none if it stayed up)
    assert cluster.nomad.calls_to("GET", "/v1/event/stream"), "the watch is the event stream"
    blocking = [c for c in window if c.path == "/v1/allocations" and c.arg("index")]
    assert blocking == []  # no blocking list either: the stream carries the changes
    assert result(cluster, "watch-live")["outcome"] == "success"


def test_with_the_watch_cut_the_service_says_so_and_every_run_still_ends_and_is_reported(cluster, harness, tmp_path):
    cluster.nomad.event_stream_cut = True
    try:
        ids = ["watch-cut-1", "watch-cut-2"]
        for action_id in ids:
            cluster.merge_action(action_id, action_toml(action_id))
        stop, thread, outcome = _serve(harness)
        try:
            _wait(lambda: _watch_record(harness).get("state") == "failing", 30, "the watch reported failing")
            env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_", "VAULT_", "FORGE_", "RECONCILER_"))}
            env["RECONCILER_DB"] = str(harness.settings.store.db)
            status = subprocess.run([sys.executable, "-m", "reconciler", "status"], capture_output=True, text=True, env=env, timeout=60)
            assert status.returncode == 0, status.stderr
            line = [ln for ln in status.stdout.splitlines() if ln.startswith("nomad watch:")]
            assert line and "failing" in line[0] and "fallback:" in line[0], status.stdout
            metrics = harness.ctx.metrics.exposition().decode()
            assert "reconciler_nomad_watch_live 0.0" in metrics
            assert "reconciler_nomad_watch_failures_total 1.0" in metrics
            thread.join(150)
        finally:
            stop.set()
        assert outcome == [True]
        listings = [c for c in cluster.nomad.calls_to("GET", "/v1/allocations") if not c.arg("index")]
        assert listings, "the safety poll lists the namespace's allocations while the stream is cut"
        assert not any(c.arg("filter") for c in listings)  # unfiltered: go-bexpr has no `>`
        for action_id in ids:
            res = result(cluster, action_id)
            assert res is not None and res["outcome"] == "success", (action_id, res)
            assert harness.store.find(action_id).state == State.REPORTED
    finally:
        cluster.nomad.event_stream_cut = False
