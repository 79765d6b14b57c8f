"""The approval gate end to end, through the CLI, against the Forgejo double (docs/approval.md).

Each numbered case of the gate audit: the reconciler runs as ``reconciler run --until-idle``
in its own process (its own store and ops clone) over the cluster's doubles. Cases 1-6 are
never dispatched and get a result naming what failed; case 8 (every merge style) is
approved and dispatched exactly once. Case 7 (odd file names) is in test_odd_inputs.py.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from reconciler.local_cluster import OPS_REPO
from tests.crash.support import Service
from tests.loop.test_end_to_end import action_toml, children_of, result

pytestmark = pytest.mark.timeout(300)


def _path(action_id: str) -> str:
    return f"vault/actions/{action_id}.toml"


def _rejected(cluster, action_id: str) -> str:
    res = result(cluster, action_id)
    assert res is not None, f"no result for {action_id}"
    assert res["exit_code"] == 1 and res["outcome"] == "rejected", res
    assert children_of(cluster, action_id) == [], "a rejected action was dispatched"
    return res["reason"] if "reason" in res else res["logs"]


def _service(cluster, tmp_path, name: str, **env: str) -> Service:
    return Service(cluster, tmp_path, name, **env)


def test_case1_approve_push_merge(cluster, tmp_path):
    """An admin approves harmless content; the writer pushes other content and merges at once."""
    forge = cluster.forge
    number = forge.open_pull(OPS_REPO, author="alice", title="c1", files={_path("gate-c1"): action_toml("gate-c1", timeout_minutes=5)})
    forge.review(OPS_REPO, number, user="admin")
    head_ref = f"pr-{number}"
    forge.commit_direct(OPS_REPO, author="alice", branch=head_ref, message="swap", files={_path("gate-c1"): action_toml("gate-c1", timeout_minutes=7)})
    forge.merge(OPS_REPO, number, merger="alice")  # before Forgejo's stale marking ran
    _service(cluster, tmp_path, "c1").until_idle()
    reason = _rejected(cluster, "gate-c1")
    assert "admin approved commit" in reason and "held other content" in reason, reason


def test_case2_manually_merged_onto_a_direct_push(cluster, tmp_path):
    forge = cluster.forge
    number = forge.open_pull(OPS_REPO, author="alice", title="c2", files={_path("gate-c2"): action_toml("gate-c2", timeout_minutes=5)})
    forge.review(OPS_REPO, number, user="admin")
    direct = forge.commit_direct(OPS_REPO, author="alice", message="by hand", files={_path("gate-c2"): action_toml("gate-c2", timeout_minutes=7)})
    forge.merge(OPS_REPO, number, merger="alice", style="manually-merged", commit=direct)
    _service(cluster, tmp_path, "c2").until_idle()
    reason = _rejected(cluster, "gate-c2")
    assert "held other content" in reason, reason


def test_case3_scheduled_auto_merge_is_no_merger_approval(cluster, tmp_path):
    """The admin schedules an auto-merge of harmless content; the writer pushes before it runs."""
    forge = cluster.forge
    number = forge.open_pull(OPS_REPO, author="alice", title="c3", files={_path("gate-c3"): action_toml("gate-c3", timeout_minutes=5)})
    forge.schedule_merge(OPS_REPO, number, by="admin")
    forge.commit_direct(OPS_REPO, author="alice", branch=f"pr-{number}", message="swap", files={_path("gate-c3"): action_toml("gate-c3", timeout_minutes=7)})
    forge.run_scheduled_merges(OPS_REPO)
    assert forge.pull_json(OPS_REPO, number)["merged_by"]["login"] == "admin"
    _service(cluster, tmp_path, "c3", RECONCILER_MERGER_APPROVES="true").until_idle()  # even with the merger path on
    assert "scheduled auto-merge" in _rejected(cluster, "gate-c3")


def test_case4_a_listed_name_anyone_can_register(cluster, tmp_path):
    """FORGE_ADMIN_USERS=vault-bot,admin (the default): a user registers vault-bot and approves."""
    forge = cluster.forge
    forge.add_user("vault-bot")
    number = forge.open_pull(OPS_REPO, author="alice", title="c4", files={_path("gate-c4"): action_toml("gate-c4")})
    forge.review(OPS_REPO, number, user="vault-bot")
    forge.merge(OPS_REPO, number, merger="bob")
    _service(cluster, tmp_path, "c4", FORGE_ADMIN_USERS="vault-bot,admin").until_idle()
    reason = _rejected(cluster, "gate-c4")
    assert "vault-bot's approval does not count" in reason, reason


def test_case4_renamed_admin_name_taken_over(cluster, tmp_path):
    """A repo admin renames; someone registers the old name and approves under it."""
    forge = cluster.forge
    forge.add_user("carla")
    forge.add_collaborator(OPS_REPO, "carla", "admin")
    forge.rename_user("carla", "carla-new")
    forge.add_user("carla")  # a different user, same name
    number = forge.open_pull(OPS_REPO, author="alice", title="c4b", files={_path("gate-c4b"): action_toml("gate-c4b")})
    forge.review(OPS_REPO, number, user="carla")
    forge.merge(OPS_REPO, number, merger="bob")
    _service(cluster, tmp_path, "c4b").until_idle()
    assert "carla's approval does not count" in _rejected(cluster, "gate-c4b")


def test_case4_repo_admin_collaborator_approves(cluster, tmp_path):
    """The positive side: a collaborator the forge confirms as admin of the ops repo counts."""
    forge = cluster.forge
    forge.add_user("dora")
    forge.add_collaborator(OPS_REPO, "dora", "admin")
    number = forge.open_pull(OPS_REPO, author="alice", title="c4c", files={_path("gate-c4c"): action_toml("gate-c4c")})
    forge.review(OPS_REPO, number, user="dora")
    forge.merge(OPS_REPO, number, merger="bob")
    _service(cluster, tmp_path, "c4c").until_idle()
    res = result(cluster, "gate-c4c")
    assert res and res["exit_code"] == 0 and res["approver"] == "dora" and res["approved_via"] == "review", res


def test_case5_shallow_clone_is_unshallowed_before_deciding(cluster, tmp_path):
    """A direct push followed by an unrelated approved merge: a depth-1 clone would blame the merge."""
    forge = cluster.forge
    direct = forge.commit_direct(OPS_REPO, author="alice", message="direct", files={_path("gate-c5"): action_toml("gate-c5")})
    cluster.merge_files({"docs/c5.md": b"unrelated\n"}, title="docs")
    service = _service(cluster, tmp_path, "c5")
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{cluster.bare}", str(service.ops_root)], check=True)
    service.until_idle()
    reason = _rejected(cluster, "gate-c5")
    assert f"commit {direct[:7]}" in reason, reason  # the true last change, not the clone's boundary
    shallow = subprocess.run(["git", "-C", str(service.ops_root), "rev-parse", "--is-shallow-repository"], capture_output=True, text=True)
    assert shallow.stdout.strip() == "false"


def test_case6_force_push_that_removed_an_action_is_not_undone(cluster, tmp_path):
    """A human force-pushes main back past an action; the reconciler's next result push, built on the
    head it knew, must not fast-forward over that and bring the action back (``--force-with-lease``).

    In process, with a long interval and no watchers, so the reconciler has not fetched since the
    force-push when it pushes: exactly the window the lease closes. Operator verbs go through the CLI.
    """
    from tests.cli.test_cli import cli
    from tests.conftest import Harness

    harness = Harness(cluster, tmp_path, interval=3600)
    env = {**cluster.environment(), "RECONCILER_DB": str(harness.settings.store.db)}
    try:
        assert cli("pause", "--reason", "hold new work", env=env).returncode == 0
        before = cluster.forge.head(OPS_REPO)
        cluster.merge_action("gate-c6-removed", action_toml("gate-c6-removed"))  # approved; the brake holds it
        harness.run_pass()
        assert harness.store.find("gate-c6-removed") is not None
        subprocess.run(["git", "--git-dir", str(cluster.bare), "update-ref", "refs/heads/main", before], check=True)
        assert cli("cancel", "gate-c6-removed", env=env).returncode == 0  # its result is pushed on the stale head
        _wait(lambda: harness.reconciler.run_pass(fetch=False) and result(cluster, "gate-c6-removed"), "the cancelled run's result")
    finally:
        harness.close()
    assert cluster.remote_file(_path("gate-c6-removed")) is None, "the result push resurrected the removed action"
    assert children_of(cluster, "gate-c6-removed") == []
    parent = subprocess.run(["git", "--git-dir", str(cluster.bare), "rev-parse", "main^"], capture_output=True, text=True).stdout.strip()
    assert parent == before, "the result commit is built on the force-pushed head"


def _wait(probe, what: str, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("style", ["merge", "rebase", "rebase-merge", "squash", "fast-forward-only"])
def test_case8_every_merge_style_is_approved_and_dispatched_once(cluster, tmp_path, style):
    forge = cluster.forge
    action_id = f"gate-c8-{style}"
    number = forge.open_pull(OPS_REPO, author="alice", title=f"c8 {style}", files={_path(action_id): action_toml(action_id)})
    forge.commit_direct(OPS_REPO, author="alice", branch=f"pr-{number}", message="notes", files={f"notes/{action_id}.md": b"x\n"})
    forge.settle(OPS_REPO)
    forge.review(OPS_REPO, number, user="admin")
    forge.merge(OPS_REPO, number, merger="alice", style=style)
    _service(cluster, tmp_path, f"c8-{style}").until_idle()
    res = result(cluster, action_id)
    assert res and res["exit_code"] == 0, res
    assert (res["approved_via"], res["approver"], res["pull_request"]) == ("review", "admin", number)
    assert len(children_of(cluster, action_id)) == 1


def test_results_name_the_path_that_approved(cluster, tmp_path):
    """A true merge by an admin with no review: approved via the merger when that path is on, and the
    result says so; off (the default), the same merge approves nothing."""
    number, _ = cluster.merge_action("gate-merger", action_toml("gate-merger"), approver=None, merger="admin")
    _service(cluster, tmp_path, "merger", RECONCILER_MERGER_APPROVES="true").until_idle()
    res = result(cluster, "gate-merger")
    assert res and res["exit_code"] == 0 and res["approved_via"] == "merger" and res["approver"] == "admin", res
    off = "gate-merger-off"
    cluster.merge_action(off, action_toml(off), approver=None, merger="admin")
    _service(cluster, tmp_path, "merger-off").until_idle()
    assert "turned off" in _rejected(cluster, off)
