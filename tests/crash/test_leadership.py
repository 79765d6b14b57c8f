"""Two reconcilers on one cluster (separate stores and clones): one acts, the other waits, and takes over.

Each process records what it is (leader or standby) in its own store; the CLI's
``status --json`` shows it as ``leadership``. The standby's store stays empty
while the leader works. When the leader is SIGKILLed, its lock lapses 2 x TTL after its
last renewal, nobody may take it for LockDelay more, and the standby's next poll wins it;
having never seen the runs, it rebuilds them from the ops repo and the durable
claims, adopting the children in flight: nothing runs twice.
"""

from __future__ import annotations

import json
import time

import pytest

from .support import Service, action_toml, merge_actions, result, verify, wait_for

pytestmark = pytest.mark.timeout(150)

TTL, DELAY, INTERVAL = 10.0, 1.0, 0.3  # Nomad's minimum TTL (support.py's environment)


def _status(svc: Service) -> dict:
    proc = svc.cli("status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_one_of_two_acts_and_the_other_takes_over_when_it_dies(cluster, formula, tmp_path):
    a = Service(cluster, tmp_path, "a")
    b = Service(cluster, tmp_path, "b")
    a.start()
    try:
        wait_for(a.is_leader, 20, "the first reconciler to lead")
        b.start()
        wait_for(lambda: (b.leadership() or {}).get("role") == "standby", 20, "the second to stand by")

        first = [f"duo-first-{i}" for i in range(4)]
        for aid in first:
            formula.set_duration(aid, 0.5)
        merge_actions(cluster, {aid: action_toml(aid, formula.name) for aid in first})
        wait_for(lambda: all(result(cluster, aid) for aid in first), 60, "the first actions' results")

        status_a, status_b = _status(a), _status(b)
        assert status_a["leadership"]["role"] == "leader"
        assert status_b["leadership"]["role"] == "standby"
        assert f"another instance ({status_a['leadership']['identity']}) holds" in status_b["leadership"]["why"]
        assert status_b["leadership"]["holder"] == status_a["leadership"]["identity"], "the standby names the leader"
        assert {r["action_id"] for r in status_a["runs"]} >= set(first)
        assert all(r["state"] == "reported" for r in status_a["runs"])
        assert status_b["runs"] == [], "the standby dispatched nothing"

        # Handover while work is in flight.
        second = [f"duo-second-{i}" for i in range(4)]
        for aid in second:
            formula.set_duration(aid, 4.0)
        merge_actions(cluster, {aid: action_toml(aid, formula.name) for aid in second})
        wait_for(
            lambda: all((a.run_of(aid) or {}).get("state") == "running" for aid in second),
            60,
            "the second actions running under the first reconciler",
        )
        killed_at = time.monotonic()
        a.kill()
        wait_for(b.is_leader, 2 * TTL + DELAY + 5, "the standby to take over")
        handover = time.monotonic() - killed_at
        print(f"handover after {handover:.2f} s (2 x TTL {TTL} + LockDelay {DELAY} + poll {INTERVAL})")
        # nomad/locks.go: the lock lapses 2 x TTL after the last renewal, then LockDelay.
        assert 2 * TTL - TTL / 3 <= handover <= 2 * TTL + DELAY + TTL / 3 + 1.0, f"handover took {handover:.2f} s"

        wait_for(lambda: all(result(cluster, aid) for aid in second), 60, "the second actions' results")
        verdict = verify(cluster, formula, first + second, [a.db, b.db])
        print(verdict.summary())
        runs_b = {r["action_id"]: r for r in b.runs()}
        assert set(runs_b) == set(second), "the new leader took over exactly the unreported runs"
        for aid in second:
            journal = b.journal(aid)
            assert any("adopted" in (e["reason"] or "") or "recovered" in (e["reason"] or "") for e in journal), journal
        assert b.terminate() == 0
        assert (b.leadership() or {}).get("role") == "stopped"
    finally:
        for svc in (a, b):
            if svc.alive():
                svc.kill()


def test_a_former_leader_coming_back_with_its_stale_store_reports_nothing_twice(cluster, formula, tmp_path):
    """A dies with runs in flight, B finishes them and stops; A returns with its old store and must not redo them."""
    a = Service(cluster, tmp_path, "a")
    b = Service(cluster, tmp_path, "b")
    ids = [f"comeback-{i}" for i in range(3)]
    for aid in ids:
        formula.set_duration(aid, 2.0)
    a.start()
    try:
        wait_for(a.is_leader, 20, "the first reconciler to lead")
        merge_actions(cluster, {aid: action_toml(aid, formula.name) for aid in ids})
        wait_for(lambda: all((a.run_of(aid) or {}).get("state") == "running" for aid in ids), 60, "the actions running")
        a.kill()
        b.until_idle(timeout=60)
        first = {aid: result(cluster, aid) for aid in ids}
        assert all(first.values())
        a.until_idle(timeout=60)  # back, with runs it still believes are running
    finally:
        for svc in (a, b):
            if svc.alive():
                svc.kill()
    verify(cluster, formula, ids, [a.db, b.db])
    assert {aid: result(cluster, aid) for aid in ids} == first, "the results B pushed stand unchanged"
