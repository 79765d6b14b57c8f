"""kill -9 of `reconciler run` with the default lock settings, restarted at once: it resumes its own
live lease (the lock ID kept in its store) and dispatches within seconds, not after the ~45 s the
lease takes to lapse (nomad/locks.go: 2 x TTL, then LockDelay). A second instance on the same
cluster, with its own store, still never acts while the first lives."""

from __future__ import annotations

import time

import pytest

from .support import Service, action_toml, children_of, merge_actions, result, wait_for

pytestmark = pytest.mark.timeout(150)

DEFAULTS = {"RECONCILER_LOCK_TTL": "15", "RECONCILER_LOCK_DELAY": "15"}


def test_restart_after_kill_resumes_within_seconds_and_the_standby_never_acts(cluster, formula, tmp_path):
    a = Service(cluster, tmp_path, "a", **DEFAULTS)
    b = Service(cluster, tmp_path, "b", **DEFAULTS)
    a.start()
    try:
        wait_for(a.is_leader, 30, "the first reconciler to lead")
        b.start()
        wait_for(lambda: (b.leadership() or {}).get("role") == "standby", 30, "the second to stand by")
        assert (b.leadership() or {}).get("holder", "").endswith(f":{a.pid}"), b.leadership()

        a.kill()
        aid = "restart-soon-0"
        formula.set_duration(aid, 0.2)
        merge_actions(cluster, {aid: action_toml(aid, formula.name)})
        restarted = time.monotonic()
        a.start()
        wait_for(lambda: children_of(cluster, aid), 30, "the restarted reconciler's first dispatch")
        took = time.monotonic() - restarted
        print(f"restart to first dispatch: {took:.2f} s (TTL 15 s, LockDelay 15 s: a lapse would take ~45 s)")
        assert took < 5.0, f"restart to first dispatch took {took:.2f} s"
        wait_for(lambda: result(cluster, aid), 60, "its result")
        assert b.runs() == [], "the standby never acted"
        assert (b.leadership() or {}).get("role") == "standby"
    finally:
        for svc in (a, b):
            if svc.alive():
                svc.kill()
