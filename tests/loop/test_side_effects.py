"""A side effect that fails for one run (stop, revoke) never holds back another run's result: the
failure is recorded on that run (visible in status as its ``waiting``) and retried."""

from __future__ import annotations

import json

from reconciler import publish
from reconciler.clients.errors import PermanentError
from states.machine import State
from store.models import RunRecord


def _run(harness, run_id: str, action_id: str, **changes) -> None:
    store = harness.store
    store.create(RunRecord(id=run_id, action_id=action_id, path=f"vault/actions/{action_id}.toml",
                           result_path=f"vault/actions/{action_id}.result.json"), "seen")
    return None


def test_a_failing_stop_of_one_cancelled_run_does_not_block_the_others(cluster, harness, monkeypatch) -> None:
    ctx = harness.ctx
    ctx.ops.ensure_ready()
    store = harness.store
    _run(harness, "gone-1", "side-gone")
    store.transition("gone-1", "cancel", expect="pending", reason="operator",
                     changes={"outcome": "cancelled", "exit_code": 1, "nomad_job_id": "vault-runner/dispatch-1-deadbeef"})
    _run(harness, "fine-1", "side-fine")
    store.transition("fine-1", "reject", expect="pending", reason="invalid",
                     changes={"outcome": "rejected", "exit_code": 1, "error": "invalid action: x"})

    def refused(job_id: str, **kw) -> None:
        raise PermanentError("Nomad refused stop job: HTTP 403: Permission denied", system="nomad")

    monkeypatch.setattr(ctx.nomad, "stop", refused)
    reported = publish.report_ready(ctx)
    assert reported == ["fine-1"]
    assert json.loads(cluster.remote_file("vault/actions/side-fine.result.json"))["outcome"] == "rejected"
    stuck = store.get("gone-1")
    assert State(stuck.state) == State.CANCELLED
    assert stuck.waiting.startswith(publish.SETTLE_WAITING) and "Permission denied" in stuck.waiting
    assert stuck.next_try_at, "retried later"
    assert stuck.public()["state"] == "cancelled"

    assert publish.report_ready(ctx) == [], "not before its retry is due"
    monkeypatch.undo()
    store.update("gone-1", {"next_try_at": ctx.stamp(ctx.now() - 1)})
    assert publish.report_ready(ctx) == ["gone-1"]
    assert State(store.get("gone-1").state) == State.REPORTED
