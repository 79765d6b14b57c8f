"""Operator actions and things done behind the reconciler's back, on the real CLI.

Graceful stop, ``retry``, ``cancel`` (running, and dispatched but not yet
placed), a child purged by someone else, an action file removed before
dispatch, and the leftovers of a git killed mid-operation in the clone.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import requests

from .support import (
    LEADER_PATH,
    NAMESPACE,
    Service,
    action_toml,
    children_of,
    merge_actions,
    remove_action,
    result,
    result_commits,
    token_audit,
    verify,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)


def _lock_is_free(cluster) -> bool:
    """Take and give back the leadership lock: possible at once only if its holder released it."""
    url = f"{cluster.nomad.address}/v1/var/{LEADER_PATH}"
    auth = {"X-Nomad-Token": cluster.nomad_token} if cluster.nomad_token else {}
    body = {"Namespace": NAMESPACE, "Path": LEADER_PATH, "Lock": {"TTL": "10s", "LockDelay": "1s"}}
    resp = requests.put(url, params={"lock-acquire": "", "namespace": NAMESPACE}, json=body, headers=auth, timeout=5)
    if resp.status_code != 200:
        return False
    lock_id = resp.json()["Lock"]["ID"]
    body = {"Namespace": NAMESPACE, "Path": LEADER_PATH, "Lock": {"ID": lock_id}}
    requests.put(url, params={"lock-release": "", "namespace": NAMESPACE}, json=body, headers=auth, timeout=5).raise_for_status()
    return True


def _state(svc: Service, action_id: str) -> str | None:
    return (svc.run_of(action_id) or {}).get("state")


def test_sigterm_exits_0_within_10_s_releases_leadership_and_a_restart_finishes(cluster, formula, tmp_path):
    aid = "graceful"
    formula.set_duration(aid, 2.0)
    svc = Service(cluster, tmp_path)
    merge_actions(cluster, {aid: action_toml(aid, formula.name)})
    svc.start()
    try:
        wait_for(lambda: _state(svc, aid) in ("dispatched", "running"), 30, "the action in flight")
    except AssertionError:
        svc.kill()
        raise
    stopped_at = time.monotonic()
    assert svc.terminate(timeout=10) == 0
    print(f"SIGTERM -> exit 0 in {time.monotonic() - stopped_at:.2f} s")
    assert (svc.leadership() or {}).get("role") == "stopped"
    assert _lock_is_free(cluster), "the leadership lock was released, not left to expire"
    svc.until_idle(timeout=60)
    verify(cluster, formula, [aid], [svc.db])


def test_retry_runs_the_next_attempt_and_its_result_replaces_the_old(cluster, formula, tmp_path):
    aid = "retried"
    formula.set_duration(aid, 0.3)
    svc = Service(cluster, tmp_path)
    merge_actions(cluster, {aid: action_toml(aid, formula.name)})
    svc.until_idle()
    first = result(cluster, aid)
    assert first["outcome"] == "success"

    proc = svc.cli("retry", aid)
    assert proc.returncode == 0, proc.stderr
    assert "attempt 2" in proc.stdout
    svc.until_idle()

    second = result(cluster, aid)
    assert second["outcome"] == "success"
    assert second["attempt"] == first["attempt"] + 1
    assert second["run_id"] == first["run_id"]
    assert result_commits(cluster, aid) == 2, "history keeps the old result"
    assert formula.starts()[aid] == 2, "the operator's retry ran it once more, and only once"
    attempts = sorted(int(c["Meta"]["attempt"]) for c in children_of(cluster, aid))
    assert attempts == [1, 2]
    journal = json.loads(svc.cli("show", aid, "--json").stdout)["events"]
    assert [e["to"] for e in journal].count("reported") == 2
    assert token_audit(cluster, [aid], [svc.db]).recorded == []


def test_cancel_of_a_running_action_stops_the_child_and_reports_cancelled(cluster, formula, tmp_path):
    aid = "cancel-running"
    formula.set_duration(aid, 60)
    svc = Service(cluster, tmp_path)
    merge_actions(cluster, {aid: action_toml(aid, formula.name, secrets=["GITHUB_TOKEN"])})
    svc.start()
    try:
        wait_for(lambda: _state(svc, aid) == "running" and formula.starts()[aid] == 1, 30, "the action running")
        proc = svc.cli("cancel", aid, "--reason", "operator says stop")
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: result(cluster, aid), 20, "the cancelled result")
    finally:
        svc.terminate()
    res = result(cluster, aid)
    assert res["outcome"] == "cancelled" and res["exit_code"] != 0
    assert "operator says stop" in res["reason"]
    [child] = children_of(cluster, aid)
    assert cluster.nomad.wait_until(lambda: cluster.nomad.job(child["ID"])["Status"] == "dead", timeout=10)
    # A stopped job is "dead" as soon as its allocations are told to stop (nomad/state/state_store.go
    # getJobStatus: DesiredStatus stop is terminal); the client's task ends a moment later.
    assert cluster.nomad.wait_until(
        lambda: all(a["ClientStatus"] != "running" for a in cluster.nomad.allocations_of(child["ID"])), timeout=15
    )
    assert formula.finished()[aid] == 0, "the formula was stopped, not left to finish"
    run = svc.run_of(aid)
    assert run["state"] == "reported"
    assert cluster.vault.token_by_accessor(run["token_accessor"])["live"] is False
    assert token_audit(cluster, [aid], [svc.db]).recorded == []


def test_cancel_before_placement_revokes_the_unused_claim_and_nothing_starts(cluster, formula, tmp_path):
    aid = "cancel-unplaced"
    delay = 8.0
    cluster.nomad.script_next(lambda job: (job.get("Meta") or {}).get("action_id") == aid, placement_delay=delay)
    svc = Service(cluster, tmp_path)
    merge_actions(cluster, {aid: action_toml(aid, formula.name, secrets=["GITHUB_TOKEN"])})
    svc.start()
    try:
        wait_for(lambda: _state(svc, aid) == "dispatched", 30, "the action dispatched")
        dispatched_at = time.monotonic()
        assert svc.cli("cancel", aid).returncode == 0
        wait_for(lambda: result(cluster, aid), 20, "the cancelled result")
    finally:
        svc.terminate()
    assert result(cluster, aid)["outcome"] == "cancelled"
    run = svc.run_of(aid)
    inner = cluster.vault.token_by_accessor(run["token_accessor"])
    assert inner["revoked"], "the claim token was revoked"
    [wrap] = [w for w in cluster.vault.wrapping_tokens() if w["wrapped_accessor"] == run["token_accessor"]]
    assert not wrap["used"] and (wrap["revoked"] or not wrap["live"]), "the wrapping token can no longer be unwrapped"
    [child] = children_of(cluster, aid)
    time.sleep(max(0.0, delay + 1.0 - (time.monotonic() - dispatched_at)))
    assert cluster.nomad.processes_started(child["ID"]) == 0, "a stopped child is never placed"
    assert formula.starts()[aid] == 0


def test_a_child_purged_behind_its_back_is_reported_unknown(cluster, formula, tmp_path):
    aid = "purged"
    formula.set_duration(aid, 60)
    svc = Service(cluster, tmp_path)
    merge_actions(cluster, {aid: action_toml(aid, formula.name)})
    svc.start()
    try:
        wait_for(lambda: _state(svc, aid) == "running" and formula.starts()[aid] == 1, 30, "the formula running")
        job_id = svc.run_of(aid)["nomad_job_id"]
        cluster.nomad.stop_behind_back(job_id, purge=True)
        wait_for(lambda: result(cluster, aid), 30, "a result for the purged child")
    finally:
        svc.terminate()
    res = result(cluster, aid)
    assert res["outcome"] == "unknown" and res["exit_code"] != 0, res
    assert svc.run_of(aid)["state"] == "reported"
    assert formula.starts()[aid] == 1
    assert token_audit(cluster, [aid], [svc.db]).recorded == []


def test_an_action_removed_from_main_before_dispatch_is_cancelled_and_never_dispatched(cluster, formula, tmp_path):
    blocker, victim = "removal-blocker", "removal-victim"
    formula.set_duration(blocker, 6)
    svc = Service(cluster, tmp_path, RECONCILER_MAX_IN_FLIGHT="1")
    merge_actions(cluster, {blocker: action_toml(blocker, formula.name)})
    svc.start()
    try:
        wait_for(lambda: _state(svc, blocker) in ("dispatched", "running"), 30, "the blocker in flight")
        merge_actions(cluster, {victim: action_toml(victim, formula.name)})
        wait_for(lambda: "capacity" in ((svc.run_of(victim) or {}).get("waiting") or ""), 20, "the victim waiting for capacity")
        remove_action(cluster, victim)
        wait_for(lambda: _state(svc, victim) == "reported", 20, "the victim cancelled and reported")
        wait_for(lambda: result(cluster, blocker), 30, "the blocker's result")
    finally:
        svc.terminate()
    run = svc.run_of(victim)
    assert run["outcome"] == "cancelled"
    assert "left main" in (run["error"] or "")
    assert children_of(cluster, victim) == []
    assert not [c for c in cluster.nomad.calls_to("POST", r"/v1/job/vault-runner/dispatch") if victim in json.dumps(c.json() or {})]
    assert [t for t in cluster.vault.tokens() if (t.get("meta") or {}).get("action_id") == victim] == [], "no claim minted"
    assert result(cluster, victim) is None, "an automatic cancel writes no result file"
    assert result(cluster, blocker)["outcome"] == "success"


def test_stale_git_locks_and_a_half_done_rebase_in_the_clone_are_cleaned_on_start(cluster, formula, tmp_path):
    aid = "after-stale-locks"
    formula.set_duration(aid, 0.3)
    svc = Service(cluster, tmp_path)
    proc = svc.cli("run", "--once")
    assert proc.returncode == 0, proc.stderr
    git_dir = svc.ops_root
    assert (git_dir / "HEAD").exists(), "the clone is bare: its git dir is OPS_REPO_ROOT"
    leftovers = [
        git_dir / "index.lock",
        git_dir / "HEAD.lock",
        git_dir / "packed-refs.lock",
        git_dir / "refs" / "remotes" / "origin" / "main.lock",
        git_dir / "rebase-merge" / "head-name",
        git_dir / "rebase-merge" / "onto",
        git_dir / "MERGE_HEAD",
    ]
    head = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "refs/remotes/origin/main"], capture_output=True, text=True, check=True).stdout.strip()
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("refs/heads/main\n" if path.name == "head-name" else head + "\n")
    # A killed rebase leaves HEAD detached.
    (git_dir / "HEAD").write_text(head + "\n")

    merge_actions(cluster, {aid: action_toml(aid, formula.name)})
    svc.until_idle(timeout=60)
    verify(cluster, formula, [aid], [svc.db])
    for path in leftovers:
        assert not path.exists(), f"{path.relative_to(git_dir)} left behind"
    assert not (git_dir / "rebase-merge").exists()
    assert (git_dir / "HEAD").read_text().strip() == "ref: refs/heads/main", "the rebase's branch is re-attached"
