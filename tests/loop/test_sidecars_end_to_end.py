"""Sidecars against the doubles: issues on the tracker -> reproduce/triage/verify runs on Nomad."""

from __future__ import annotations

import pytest

from reconciler.local_cluster import PROJECT_REPO
from states.machine import State
from tests.conftest import Harness

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def sidecar_harness(cluster, tmp_path):
    h = Harness(cluster, tmp_path, sidecars=True, interval=0.05)
    yield h
    h.close()


def sidecar_runs(h, issue):
    return [r for r in h.store.runs() if r.issue == issue]


def test_sidecar_scenario(cluster, sidecar_harness):
    forge, h = cluster.forge, sidecar_harness
    repro = forge.add_issue(PROJECT_REPO, title="crash", labels=["bug-report"])
    triage = forge.add_issue(PROJECT_REPO, title="slow", labels=["bug-report", "in-triage"])
    verify = forge.add_issue(PROJECT_REPO, title="fixed?", labels=["bug-report", "in-progress"])
    forge.add_issue(PROJECT_REPO, title="part 1", body=f"Decomposed from #{verify}", state="closed")
    forge.add_issue(PROJECT_REPO, title="part 2", body=f"Decomposed from #{verify}.", state="closed")
    half = forge.add_issue(PROJECT_REPO, title="half done", labels=["bug-report", "in-progress"])
    forge.add_issue(PROJECT_REPO, title="part a", body=f"Decomposed from #{half}", state="closed")
    forge.add_issue(PROJECT_REPO, title="part b", body=f"Decomposed from #{half}", state="open")
    lonely = forge.add_issue(PROJECT_REPO, title="no parts", labels=["bug-report", "in-progress"])
    blocked = forge.add_issue(PROJECT_REPO, title="blocked", labels=["bug-report", "blocked"])
    rejected = forge.add_issue(PROJECT_REPO, title="nope", labels=["bug-report", "rejected"])
    # #12 vs #123: an issue whose number prefixes another's must not count it as its sub-issue
    cluster.sidecar_exit(repro, "reproduce", 3)

    h.until_idle()
    assert [r.kind for r in sidecar_runs(h, repro)] == ["reproduce"]
    assert [r.kind for r in sidecar_runs(h, triage)] == ["triage"]
    assert [r.kind for r in sidecar_runs(h, verify)] == ["verify"]
    for quiet in (half, lonely, blocked, rejected):
        assert sidecar_runs(h, quiet) == []
    for r in h.store.runs():
        if r.issue is not None:
            assert r.state == State.REPORTED
    failed = sidecar_runs(h, repro)[0]
    assert failed.outcome == "failure" and failed.exit_code == 3
    comments = forge.comments(PROJECT_REPO, repro)
    assert len(comments) == 1 and "reproduce" in comments[0]["body"]
    assert forge.comments(PROJECT_REPO, triage) == []

    # Repeated passes over quiet issues dispatch nothing more.
    children = len(cluster.nomad.children("sidecar"))
    for _ in range(3):
        h.reconciler._last_sidecar_scan = float("-inf")
        h.run_pass()
    assert len(cluster.nomad.children("sidecar")) == children
    assert len(forge.comments(PROJECT_REPO, repro)) == 1

    # A label change earns a new run.
    forge.set_labels(PROJECT_REPO, repro, ["bug-report", "in-triage"])
    h.reconciler._last_sidecar_scan = float("-inf")
    h.until_idle()
    assert [r.kind for r in sidecar_runs(h, repro)] == ["reproduce", "triage"]
    job = cluster.nomad.job(sidecar_runs(h, repro)[1].nomad_job_id)
    assert job["Meta"]["issue_number"] == str(repro) and job["Meta"]["project"] == "demo"


def test_at_most_one_in_flight_per_issue_and_kind(cluster, sidecar_harness):
    forge, h = cluster.forge, sidecar_harness
    n = forge.add_issue(PROJECT_REPO, title="slowish", labels=["bug-report"])
    h.reconciler._last_sidecar_scan = float("-inf")
    h.run_pass()
    runs = sidecar_runs(h, n)
    assert len(runs) == 1
    for _ in range(3):
        h.reconciler._last_sidecar_scan = float("-inf")
        h.run_pass()
    assert len(sidecar_runs(h, n)) == 1
    h.until_idle()
