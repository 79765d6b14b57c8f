"""End to end with Nomad's ACLs enforced and the shipped policies (jobspecs/nomad-acl/reconciler.hcl):
a run past its placement deadline, a run past its timeout, a lost allocation and a cancel each reach
``reported`` with their child stopped, while other actions' results keep arriving.

Stopping takes ``deregister-job`` (nomad/job_endpoint.go Deregister); with the policy of the first
edition (``dispatch-job`` only) every one of these stops was a 403 and the runs never reported.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from reconciler.app import build_context
from reconciler.local_cluster import LocalCluster
from reconciler.loop import Reconciler
from states.machine import State
from store.runs import RunStore

pytestmark = pytest.mark.timeout(240)


class Clock:
    """Real time plus an offset the test moves forward (an action's timeout is at least a minute)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def acl_cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("acl"), nomad_mode="simulate").start()
    assert c.nomad_token and c.nomad.token, "ACLs are on"
    yield c
    c.stop()


def _action(aid: str, **extra) -> str:
    lines = [f'id = "{aid}"', 'formula = "release"', 'context = "acl e2e"', "secrets = []"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def _result(cluster, aid: str) -> dict | None:
    raw = cluster.remote_file(f"vault/actions/{aid}.result.json")
    return json.loads(raw) if raw else None


def _children(cluster, aid: str) -> list[dict]:
    return [j for j in cluster.nomad.children("vault-runner") if (j.get("Meta") or {}).get("action_id") == aid]


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_stops_under_the_shipped_policy_each_reach_reported(acl_cluster, tmp_path: Path) -> None:
    cluster = acl_cluster
    durations = {"acl-timeout": 10_000.0, "acl-lost": 10_000.0, "acl-cancel": 10_000.0}
    cluster.nomad.simulate = lambda job: (durations.get((job.get("Meta") or {}).get("action_id"), 0.3), 0, "ok\n")
    clock = Clock()
    settings = cluster.settings(db=tmp_path / "state" / "r.db", ops_root=tmp_path / "ops", placement_deadline=3, max_attempts=1)
    store = RunStore(settings.store.db, clock)
    reconciler = Reconciler(build_context(settings, store, clock))
    stop = threading.Event()
    service = threading.Thread(target=reconciler.serve, args=(stop,), daemon=True)
    service.start()
    try:
        # Placement deadline: nothing can be placed while capacity is 0.
        cluster.nomad.capacity = 0
        cluster.merge_action("acl-unplaced", _action("acl-unplaced"))
        _wait(lambda: _children(cluster, "acl-unplaced"), 30, "the unplaceable child")
        _wait(lambda: _result(cluster, "acl-unplaced"), 60, "the placement-deadline result")
        cluster.nomad.capacity = None

        # Timeout, lost allocation and cancel: three long runs.
        cluster.merge_files({f"vault/actions/{aid}.toml": _action(aid, timeout_minutes=1).encode() for aid in durations}, title="long ones")
        for aid in durations:
            _wait(lambda aid=aid: (store.find(aid) and State(store.find(aid).state) == State.RUNNING), 60, f"{aid} running")
        lost_alloc = store.find("acl-lost").alloc_id
        cluster.nomad.lose(lost_alloc, lose_as="lost", replace=False)
        run = store.find("acl-cancel")
        store.transition(run.id, "cancel", expect=run.state, reason="cancelled by operator",
                         changes={"outcome": "cancelled", "exit_code": 1, "error": "cancelled by operator"})
        reconciler.wake()
        # Meanwhile another action's result keeps arriving.
        cluster.merge_action("acl-normal", _action("acl-normal"))
        _wait(lambda: _result(cluster, "acl-normal"), 60, "the ordinary action's result")
        clock.offset += 60 + 31  # past timeout_minutes and the grace the runner gets
        reconciler.wake()
        for aid in ("acl-lost", "acl-cancel", "acl-timeout"):
            _wait(lambda aid=aid: _result(cluster, aid), 60, f"{aid}'s result")
    finally:
        stop.set()
        reconciler.wake()
        service.join(timeout=30)
        reconciler.close()

    outcomes = {aid: _result(cluster, aid)["outcome"] for aid in ("acl-unplaced", "acl-timeout", "acl-lost", "acl-cancel", "acl-normal")}
    assert outcomes["acl-timeout"] == "timeout" and outcomes["acl-cancel"] == "cancelled"
    assert outcomes["acl-lost"] == "unknown" and outcomes["acl-normal"] == "success"
    assert outcomes["acl-unplaced"] in ("failure", "unknown"), outcomes
    for aid in ("acl-unplaced", "acl-timeout", "acl-lost", "acl-cancel"):
        assert State(store.find(aid).state) == State.REPORTED, aid
        children = _children(cluster, aid)
        assert children and all(c.get("Stop") for c in children), f"{aid}: child stopped (a 403 would leave it running)"
        assert not any("Permission denied" in (e.reason or "") for e in store.journal(store.find(aid).id)), aid
