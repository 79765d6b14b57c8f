"""The service as a keyed work queue: sources put run ids on the queue, and nothing else keeps them.

``reconciler.loop.Reconciler.serve`` against the local cluster (strict doubles, ACLs on).
"""

from __future__ import annotations

import threading
import time

import pytest

from states.machine import State

from .test_end_to_end import action_toml, result, write_formula
from .test_nomad_watch import _wait

pytestmark = pytest.mark.timeout(240)

#: The queue machinery itself, which is where run ids are meant to live.
QUEUE_PARTS = {"queue", "admission", "unclaimed"}


def _held_run_ids(reconciler, run_ids: set[str]) -> dict[str, list[str]]:
    """Attributes of the reconciler (outside the queue machinery and the context) that hold run ids."""
    found: dict[str, list[str]] = {}
    for name, value in vars(reconciler).items():
        if name in QUEUE_PARTS or name in ("ctx", "leadership"):
            continue
        if isinstance(value, (dict, set, frozenset, list, tuple)):
            text = repr(value)
            hits = sorted(rid for rid in run_ids if rid in text)
            if hits:
                found[name] = hits
    return found


def test_in_flight_runs_are_known_to_the_queue_only(cluster, harness):
    write_formula(cluster, "napping", "sleep 4\necho napped\n")
    ids = [f"wq-{i}" for i in range(3)]
    for action_id in ids:
        cluster.merge_action(action_id, action_toml(action_id, formula="napping"))
    stop = threading.Event()
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(harness.reconciler.serve(stop, until_idle=True, timeout=150)), daemon=True)
    thread.start()
    try:
        _wait(lambda: all((r := harness.store.find(a)) is not None and r.state == State.RUNNING for a in ids), 60, "all three running")
        run_ids = {harness.store.find(a).id for a in ids}
        assert _held_run_ids(harness.reconciler, run_ids) == {}
        # each running run waits in the queue for its own next look (its timeout, at the latest the resync)
        assert harness.reconciler.queue.pending() >= len(run_ids)
        thread.join(150)
    finally:
        stop.set()
    assert outcome == [True]
    for action_id in ids:
        assert result(cluster, action_id)["outcome"] == "success"


def test_a_run_looked_at_by_nothing_but_its_own_deadline_still_times_out(cluster, tmp_path):
    """No event reports a run past its timeout: the step's own look-again brings it back then."""
    from tests.conftest import Harness

    h = Harness(cluster, tmp_path)
    try:
        write_formula(cluster, "forever", "sleep 600\n")
        cluster.merge_action("wq-timeout", action_toml("wq-timeout", formula="forever"))
        stop = threading.Event()
        outcome: list[bool] = []
        thread = threading.Thread(target=lambda: outcome.append(h.reconciler.serve(stop, until_idle=True, timeout=200)), daemon=True)
        thread.start()
        try:
            _wait(lambda: (r := h.store.find("wq-timeout")) is not None and r.state == State.RUNNING, 60, "running")
            run = h.store.find("wq-timeout")
            # move its start back so that its timeout (1 min + the grace) falls due in a few seconds
            started = time.time() - 60 - 30 + 3
            h.store.update(run.id, {"started_at": h.ctx.stamp(started), "timeout_minutes": 1})
            h.reconciler.queue.add(run.id)  # as the store poll would after another process wrote it
            thread.join(150)
        finally:
            stop.set()
        assert outcome == [True]
        doc = result(cluster, "wq-timeout")
        assert doc is not None and doc["outcome"] == "timeout", doc
    finally:
        h.close()
