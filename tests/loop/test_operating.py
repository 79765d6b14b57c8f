"""Operating it: brakes, plan, wake-ups (issue: status that explains, brakes, metrics...)."""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time

import pytest

from reconciler import brakes
from reconciler.plan import plan
from states.machine import State
from tests.conftest import Harness
from tests.loop.test_end_to_end import action_toml, children_of, result, write_formula

pytestmark = pytest.mark.timeout(240)


def snapshot(cluster, harness):
    """Everything `plan` must leave untouched."""
    runs = [r.model_dump() for r in harness.store.runs()]
    journal = {r["id"]: len(harness.store.journal(r["id"])) for r in runs}
    remote = subprocess.run(["git", "--git-dir", str(cluster.bare), "rev-parse", "main"], capture_output=True, text=True).stdout
    return {
        "runs": json.dumps(runs, default=str, sort_keys=True),
        "journal": journal,
        "nomad_jobs": sorted(j["ID"] for j in cluster.nomad.children("vault-runner")),
        "nomad_writes": len([c for c in cluster.nomad.calls if c.method in ("POST", "PUT", "DELETE")]),
        "vault_tokens": len(cluster.vault.tokens()),
        # writes by the reconciler's own token (a running runner unwraps and reads with its claim meanwhile)
        "vault_writes": len([c for c in cluster.vault.calls if c.method in ("POST", "PUT", "DELETE") and "lookup" not in c.path
                             and c.header("X-Vault-Token") == cluster.dispatcher_token]),
        "remote": remote,
    }


def test_pause_holds_new_dispatches_while_running_work_finishes(cluster, harness):
    write_formula(cluster, "pause-slow", "sleep 1.5; echo slow done\n")
    cluster.merge_action("pause-running", action_toml("pause-running", formula="pause-slow"))
    for _ in range(50):
        harness.run_pass()
        if harness.store.find("pause-running").state == State.RUNNING:
            break
        time.sleep(0.1)
    brakes.set_brakes(harness.store, paused=True, reason="test")
    cluster.merge_action("pause-new", action_toml("pause-new"))
    deadline = time.time() + 20
    while time.time() < deadline and harness.store.find("pause-running").state != State.REPORTED:
        harness.run_pass()
        time.sleep(0.2)
    assert harness.store.find("pause-running").state == State.REPORTED
    assert result(cluster, "pause-running")["outcome"] == "success"
    new = harness.store.find("pause-new")
    assert new.state == State.PENDING and "paused" in (new.waiting or "")
    assert children_of(cluster, "pause-new") == []
    assert [e["action"] for e in harness.store.control_events()][-1] == "pause"
    brakes.set_brakes(harness.store, paused=False)
    harness.until_idle()
    assert result(cluster, "pause-new")["outcome"] == "success"


def test_plan_changes_nothing(cluster, harness):
    write_formula(cluster, "plan-slow", "sleep 2; echo done\n")
    cluster.merge_action("plan-running", action_toml("plan-running", formula="plan-slow"))
    for _ in range(50):
        harness.run_pass()
        if harness.store.find("plan-running").state == State.RUNNING:
            break
        time.sleep(0.1)
    cluster.merge_action("plan-new", action_toml("plan-new"))
    cluster.merge_action("plan-bad", action_toml("plan-bad", secrets=["NOT_ALLOWED"]))
    harness.ctx.ops.fetch()
    before = snapshot(cluster, harness)
    lines = list(plan(harness.ctx))
    after = snapshot(cluster, harness)
    assert before == after
    text = "\n".join(lines)
    assert "plan-new.toml: would create" in text
    assert "plan-bad.toml: would create" in text
    assert "plan-running: would keep watching" in text
    harness.until_idle()


class _FileRemoteHarness(Harness):
    """A harness whose ops remote is ``file://`` (``OPS_REPO_REMOTE``): only a local remote is polled
    every second for merges; over HTTPS the pass's once-per-interval fetch is the only poll."""

    def __init__(self, cluster, workdir, **loop):
        from dataclasses import replace

        from reconciler.app import build_context
        from reconciler.loop import Reconciler
        from store.runs import RunStore

        self.cluster = cluster
        base = cluster.settings(db=workdir / "state" / "r.db", ops_root=workdir / "ops", **loop)
        self.settings = replace(base, ops=replace(base.ops, remote=cluster.file_remote))
        self.store = RunStore(self.settings.store.db, time.time)
        self.ctx = build_context(self.settings, self.store)
        self.reconciler = Reconciler(self.ctx)


def test_wakeups_report_quickly_with_a_long_interval(cluster, tmp_path):
    """RECONCILER_INTERVAL=60: job end -> result pushed, and merge -> dispatch, come from wake-ups, not the timer."""
    h = _FileRemoteHarness(cluster, tmp_path, interval=60.0)
    stop = threading.Event()
    server = threading.Thread(target=h.reconciler.serve, args=(stop,), daemon=True)
    server.start()
    try:
        time.sleep(1.0)  # the first pass ran; the loop now waits up to 60 s
        write_formula(cluster, "wake", "sleep 0.5; echo woke\n")
        lat_dispatch, lat_report = [], []
        for i in range(4):
            action_id = f"wake-{i}"
            _, _ = cluster.merge_action(action_id, action_toml(action_id, formula="wake"))
            merged = time.time()
            while not children_of(cluster, action_id):
                assert time.time() - merged < 10, "not dispatched within 10 s"
                time.sleep(0.05)
            lat_dispatch.append(time.time() - merged)
            while result(cluster, action_id) is None:
                assert time.time() - merged < 30, "no result within 30 s"
                time.sleep(0.05)
            pushed = time.time()
            job = children_of(cluster, action_id)[0]
            alloc = cluster.nomad.allocations_of(job["ID"])[0]
            finished = alloc["TaskStates"]["runner"]["FinishedAt"]
            from store.runs import parse_rfc3339

            lat_report.append(pushed - parse_rfc3339(finished))
        print(f"merge->dispatch {lat_dispatch}, job end->pushed {lat_report}")
        assert max(lat_dispatch) < 5.0
        assert statistics.median(lat_report) < 1.5
    finally:
        stop.set()
        h.reconciler.wake()
        server.join(10)
        h.close()


def test_a_rewritten_token_file_is_picked_up_without_restart(cluster, tmp_path):
    from dataclasses import replace

    from reconciler.app import build_context
    from reconciler.jobspecs import DISPATCHER_POLICY
    from reconciler.loop import Reconciler
    from store.runs import RunStore

    token_file = tmp_path / "vault-token"
    token_file.write_text(cluster.dispatcher_token + "\n")
    base = cluster.settings(db=tmp_path / "r.db", ops_root=tmp_path / "ops")
    settings = replace(base, vault=replace(base.vault, token=None, token_file=token_file))
    store = RunStore(settings.store.db, time.time)
    rec = Reconciler(build_context(settings, store))
    try:
        cluster.merge_action("token-file-1", action_toml("token-file-1", secrets=["DEPLOY_KEY"]))
        assert rec.serve(threading.Event(), until_idle=True, timeout=60)
        assert result(cluster, "token-file-1")["outcome"] == "success"
        # Rotate: a new token in the file, the old one revoked.
        old, fresh = cluster.dispatcher_token, cluster.vault.create_token([DISPATCHER_POLICY], display_name="reconciler-rotated")
        cluster.dispatcher_token = fresh  # later tests of this module use the cluster's current token
        token_file.write_text(fresh + "\n")
        cluster.vault.revoke_token(old)
        cluster.merge_action("token-file-2", action_toml("token-file-2", secrets=["DEPLOY_KEY"]))
        assert rec.serve(threading.Event(), until_idle=True, timeout=60)
        assert result(cluster, "token-file-2")["outcome"] == "success"
        used = {c.header("X-Vault-Token") for c in cluster.vault.calls[-30:]}
        assert fresh in used
    finally:
        rec.close()
        store.close()
