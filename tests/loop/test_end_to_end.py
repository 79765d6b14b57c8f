"""Vault actions end to end against the doubles: ops repo -> gate -> claim -> Nomad -> runner -> result.

Everything real but the three servers: git (a bare remote reached by file://),
SQLite, the runner entry step (run as a process by the Nomad double), hvac,
python-nomad and requests.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from reconciler.local_cluster import OPS_REPO
from states.machine import State

pytestmark = pytest.mark.timeout(300)


def action_toml(action_id: str, formula: str = "release", secrets=(), mounts=(), **extra) -> str:
    lines = [
        f'id = "{action_id}"',
        f'formula = "{formula}"',
        'context = "test"',
        "secrets = [" + ", ".join(f'"{s}"' for s in secrets) + "]",
    ]
    if mounts:
        lines.append("mounts = [" + ", ".join(f'"{m}"' for m in mounts) + "]")
    for k, v in extra.items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def write_formula(cluster, name: str, script: str) -> None:
    path = cluster.factory_root / "formulas" / f"{name}.sh"
    path.write_text("#!/usr/bin/env bash\n" + script)


def result(cluster, action_id: str) -> dict | None:
    raw = cluster.remote_file(f"vault/actions/{action_id}.result.json")
    return json.loads(raw) if raw else None


def children_of(cluster, action_id: str) -> list[dict]:
    return [j for j in cluster.nomad.children("vault-runner") if (j.get("Meta") or {}).get("action_id") == action_id]


def assert_no_secret_anywhere(cluster, harness, values):
    haystacks = {
        "nomad jobs": json.dumps(cluster.nomad.children("vault-runner")),
        "store": "\n".join(json.dumps(r.model_dump(), default=str) for r in harness.store.runs())
        + "\n".join(json.dumps([e.model_dump() for e in harness.store.journal(r.id)]) for r in harness.store.runs()),
        "remote": "\n".join((cluster.remote_file(p) or b"").decode("utf-8", "replace") for p in _remote_paths(cluster)),
    }
    for alloc_logs in _all_logs(cluster):
        haystacks.setdefault("nomad logs", "")
        haystacks["nomad logs"] += alloc_logs
    for where, text in haystacks.items():
        for v in values:
            assert v not in text, f"secret value found in {where}"


def _remote_paths(cluster):
    import subprocess

    out = subprocess.run(["git", "--git-dir", str(cluster.bare), "ls-tree", "-r", "--name-only", "main"], capture_output=True, text=True).stdout
    return [p for p in out.splitlines() if p]


def _nomad_get(cluster, path: str, **params):
    import requests

    params.setdefault("namespace", "runners")
    return requests.get(f"{cluster.nomad.address}{path}", params=params, headers=_auth(cluster), timeout=10)


def _auth(cluster) -> dict[str, str]:
    """The reconciler's own token: ACLs are on, with the shipped policy."""
    return {"X-Nomad-Token": cluster.nomad_token} if cluster.nomad_token else {}


def _all_logs(cluster):
    for job in cluster.nomad.children("vault-runner"):
        for alloc in cluster.nomad.allocations_of(job["ID"]):
            for kind in ("stdout", "stderr"):
                r = _nomad_get(cluster, f"/v1/client/fs/logs/{alloc['ID']}", task="runner", type=kind, plain="true", origin="start")
                if r.status_code == 200:
                    yield r.text


# ----------------------------------------------------------------------------- the samples
def test_sample_actions_run_once_and_report_with_audit_trail(cluster, harness):
    samples = cluster.sample_actions()
    prs = {}
    for action_id, data in samples.items():
        prs[action_id], _ = cluster.merge_action(action_id, data)
    harness.until_idle(timeout=120)

    for action_id in samples:
        res = result(cluster, action_id)
        assert res is not None, f"no result for {action_id}"
        assert res["id"] == action_id
        assert res["exit_code"] == 0 and res["outcome"] == "success", res
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", res["timestamp"])
        assert "demo agent" in res["logs"] or "release formula ran" in res["logs"]
        assert len(res["logs"]) <= 1000
        assert res["pull_request"] == prs[action_id]
        assert res["approver"] == "admin" and res["approved_via"] == "review"
        assert res["tier"] in ("medium", "high")
        assert res["nomad_job_id"] and res["alloc_id"] and res["run_id"]
        assert len(children_of(cluster, action_id)) == 1

        run = harness.store.find(action_id)
        assert run.state == State.REPORTED
        token = cluster.vault.token_by_accessor(run.token_accessor)
        declared = {f"runner-{s}".lower() for s in res["secrets"]} | {f"runner-mount-{m}" for m in res["mounts"]}
        assert set(token["policies"]) == declared | {"runner-claim"}
        assert "default" not in token["policies"]
        assert token["renewable"] is False
        assert token["revoked"] is True
        # The runner revoked its own claim (runner-claim grants revoke-self): no denial in the log tail.
        assert "permission denied" not in res["logs"].lower(), res["logs"]
        assert any(c.header("X-Vault-Token") == token["token"] for c in cluster.vault.calls_to("POST", r"/v1/auth/token/revoke-self"))
        # The durable claim is closed: a retry may claim a new attempt.
        claim = _nomad_get(cluster, f"/v1/var/reconciler/runs/{run.id}").json()
        assert claim["Items"]["state"] == "done" and claim["Items"]["attempt"] == str(run.attempt), claim["Items"]

    # The only Vault credential in Nomad's job data: wrapping tokens, all used or dead by now.
    wraps = {w["token"]: w for w in cluster.vault.wrapping_tokens()}
    for job in cluster.nomad.children("vault-runner"):
        full = _nomad_get(cluster, f"/v1/job/{job['ID']}").json()
        payload = json.loads(__import__("base64").b64decode(full["Payload"]))
        w = wraps[payload["wrapping_token"]]
        assert w["used"] or w["expired"] or w.get("revoked")
    assert_no_secret_anywhere(cluster, harness, list(cluster.secrets.values()))


def test_unchanged_desired_state_dispatches_nothing_new(cluster, harness):
    cluster.merge_action("idle-check", action_toml("idle-check"))
    harness.until_idle()
    before = len(cluster.nomad.children("vault-runner"))
    for _ in range(3):
        harness.run_pass()
    assert len(cluster.nomad.children("vault-runner")) == before
    dispatches = cluster.nomad.calls_to("POST", r"/v1/job/vault-runner/dispatch")
    mine = [c for c in dispatches if (c.arg("idempotency_token") or "").startswith(harness.store.find("idle-check").id)]
    assert len(mine) == 1, "the idempotency token travels as the query parameter"


# ----------------------------------------------------------------------------- the gate
UNAUTHORIZED = {
    "merged-by-non-admin": dict(approver=None, merger="bob"),
    "stale-approval": "stale",
    "dismissed-approval": "dismissed",
    "superseded-approval": "superseded",
    "author-approval": dict(approver="alice", merger="alice", author="alice"),
    "own-user-approval": dict(approver="reconciler", merger="bob"),
}


def test_unauthorized_variants_are_rejected_and_never_dispatched(cluster, harness):
    forge = cluster.forge
    # merged by a non-admin without approval
    cluster.merge_action("merged-by-non-admin", action_toml("merged-by-non-admin"), approver=None, merger="bob")
    # only a stale / dismissed admin approval
    for variant, flag in (("stale-approval", {"stale": True}), ("dismissed-approval", {"dismissed": True})):
        n = forge.open_pull(OPS_REPO, author="alice", title=variant, files={f"vault/actions/{variant}.toml": action_toml(variant).encode()})
        forge.review(OPS_REPO, n, user="admin", state="APPROVED", **flag)
        forge.merge(OPS_REPO, n, merger="bob")
    # approval superseded by the same admin's request for changes
    n = forge.open_pull(OPS_REPO, author="alice", title="sup", files={"vault/actions/superseded-approval.toml": action_toml("superseded-approval").encode()})
    forge.review(OPS_REPO, n, user="admin", state="APPROVED")
    forge.review(OPS_REPO, n, user="admin", state="REQUEST_CHANGES")
    forge.merge(OPS_REPO, n, merger="bob")
    # approval only by the author / by the reconciler's own user
    cluster.merge_action("author-approval", action_toml("author-approval"), approver="alice", merger="alice")
    cluster.merge_action("own-user-approval", action_toml("own-user-approval"), approver="reconciler", merger="bob")
    # a forged merge message naming no such pull request
    forge.commit_direct(OPS_REPO, author="bob", files={"vault/actions/forged-message.toml": action_toml("forged-message").encode()},
                        message="Merge pull request 'x' (#999) from x into main")
    # the file changed on main after its approved merge
    cluster.merge_action("changed-after", action_toml("changed-after"))
    forge.commit_direct(OPS_REPO, author="bob", files={"vault/actions/changed-after.toml": action_toml("changed-after", secrets=["GITHUB_TOKEN"]).encode()},
                        message="tweak")
    # a direct push without dispatch_mode
    forge.commit_direct(OPS_REPO, author="bob", files={"vault/actions/direct-push.toml": action_toml("direct-push").encode()}, message="add")
    # direct mode on a high tier, on a low tier with secrets
    forge.commit_direct(OPS_REPO, author="bob", files={"vault/actions/direct-high.toml": action_toml("direct-high", dispatch_mode="direct").encode()}, message="add")
    forge.commit_direct(OPS_REPO, author="bob", files={"vault/actions/direct-secrets.toml": action_toml("direct-secrets", formula="triage-direct", secrets=["GITHUB_TOKEN"], dispatch_mode="direct").encode()}, message="add")
    # and a legitimate direct one: low tier, no secrets
    write_formula(cluster, "triage", "echo low tier direct ok\n")
    forge.commit_direct(OPS_REPO, author="bob", files={"vault/actions/direct-ok.toml": action_toml("direct-ok", formula="triage", dispatch_mode="direct").encode()}, message="add")

    harness.until_idle()
    rejected = ["merged-by-non-admin", "stale-approval", "dismissed-approval", "superseded-approval", "author-approval",
                "own-user-approval", "forged-message", "changed-after", "direct-push", "direct-high", "direct-secrets"]
    for action_id in rejected:
        res = result(cluster, action_id)
        assert res is not None, action_id
        assert res["exit_code"] == 1 and res["outcome"] == "rejected", (action_id, res)
        assert res["reason"], action_id
        assert children_of(cluster, action_id) == [], action_id
    assert "request" in result(cluster, "superseded-approval")["reason"].lower()
    ok = result(cluster, "direct-ok")
    assert ok["exit_code"] == 0 and ok["approved_via"] == "direct"


# ----------------------------------------------------------------------------- invalid files
INVALID = {
    "bad-toml": b'id = "bad-toml"\nformula = [unterminated\n',
    "unknown-key": action_toml("unknown-key", colour="blue").encode(),
    "unknown-secret": action_toml("unknown-secret", secrets=["AWS_SECRET"]).encode(),
    "unknown-mount": action_toml("unknown-mount", mounts=["kube"]).encode(),
    "id-mismatch": action_toml("something-else").encode(),
    "path-formula": action_toml("path-formula", formula="../etc/passwd").encode(),
    "missing-formula": action_toml("missing-formula", formula="no-such-formula").encode(),
    "zero-timeout": action_toml("zero-timeout", timeout_minutes=0).encode(),
    "huge-timeout": action_toml("huge-timeout", timeout_minutes=10**6).encode(),
    "not-utf8": b'id = "not-utf8"\nformula = "release"\ncontext = "\xff\xfe"\nsecrets = []\n',
    "ten-mb": b'id = "ten-mb"\n' + b"#" * (10 * 1024 * 1024),
}
EXPECT = {
    "bad-toml": "toml", "unknown-key": "colour", "unknown-secret": "AWS_SECRET", "unknown-mount": "kube",
    "id-mismatch": "file name", "path-formula": "formula", "missing-formula": "no-such-formula",
    "zero-timeout": "timeout", "huge-timeout": "timeout", "not-utf8": "utf-8", "ten-mb": "bytes",
}


def test_invalid_files_get_specific_reasons_and_valid_neighbours_run(cluster, harness):
    files = {f"vault/actions/{k}.toml": v for k, v in INVALID.items()}
    files["vault/actions/.hidden.toml"] = action_toml("hidden").encode()
    files["vault/actions/good-neighbour.toml"] = action_toml("good-neighbour").encode()
    cluster.merge_files(files, title="a batch of bad actions")
    harness.until_idle()
    for action_id, needle in EXPECT.items():
        res = result(cluster, action_id)
        assert res is not None, action_id
        assert res["exit_code"] == 1 and res["outcome"] == "rejected"
        assert needle.lower() in res["reason"].lower(), (action_id, res["reason"])
    # no safe result name: journaled rejection only
    hidden = [r for r in harness.store.runs() if r.path == "vault/actions/.hidden.toml"]
    assert hidden and hidden[0].state == State.REPORTED and hidden[0].outcome == "rejected"
    assert result(cluster, "good-neighbour")["exit_code"] == 0
    # nothing written outside vault/actions/
    for path in _remote_paths(cluster):
        assert path.startswith("vault/") or path == "README.md", path


# ----------------------------------------------------------------------------- redaction
def test_secrets_printed_by_a_formula_never_reach_logs_or_results(cluster, harness):
    secret = cluster.secrets["GITHUB_TOKEN"]
    write_formula(cluster, "leaky", f'echo "out: $GITHUB_TOKEN"\necho "err: $GITHUB_TOKEN" >&2\nprintf "%s" "${{GITHUB_TOKEN:0:10}}"; printf "%s\\n" "${{GITHUB_TOKEN:10}}"\n')
    pad = 1000 - 20
    write_formula(cluster, "straddle", f'python3 -c "print(\'x\' * {pad})"; printf "%s" "$GITHUB_TOKEN"; python3 -c "print(\'y\' * 15)"\n')
    cluster.merge_action("leaky-1", action_toml("leaky-1", formula="leaky", secrets=["GITHUB_TOKEN"]))
    cluster.merge_action("straddle-1", action_toml("straddle-1", formula="straddle", secrets=["GITHUB_TOKEN"]))
    harness.until_idle()
    for action_id in ("leaky-1", "straddle-1"):
        res = result(cluster, action_id)
        assert res["exit_code"] == 0, res
        for size in (8, 12):
            for i in range(0, len(secret) - size + 1):
                assert secret[i:i + size] not in res["logs"], (action_id, "fragment in result")
    assert "REDACTED" in result(cluster, "leaky-1")["logs"]
    assert_no_secret_anywhere(cluster, harness, [secret])


def test_each_claim_token_is_revoked_before_its_formula_starts(cluster, harness):
    """The runner revokes its claim right after reading secrets and mounts: the double's token record
    shows the revocation before the formula's first instruction ran (same clock: the double's is time.time)."""
    stamps = cluster.workdir / "formula-start-stamps"
    stamps.mkdir(exist_ok=True)
    write_formula(cluster, "stamped", f'python3 -c "import time; print(repr(time.time()))" > "{stamps}/$ACTION_ID"\necho "stamped $ACTION_ID"\n')
    ids = ["stamped-plain", "stamped-secret"]
    cluster.merge_action(ids[0], action_toml(ids[0], formula="stamped"))
    cluster.merge_action(ids[1], action_toml(ids[1], formula="stamped", secrets=["GITHUB_TOKEN"]))
    harness.until_idle()
    for action_id in ids:
        res = result(cluster, action_id)
        assert res["outcome"] == "success", res
        assert "permission denied" not in res["logs"].lower(), res["logs"]
        run = harness.store.find(action_id)
        token = cluster.vault.token_by_accessor(run.token_accessor)
        started = float((stamps / action_id).read_text())
        assert token["revoked"] is True and token["revoked_at"] < started, (token["revoked_at"], started)
        assert "runner-claim" in token["policies"]


def test_actions_run_with_delete_version_after_on_the_kv_mount(cluster, harness):
    """vault-plugin-secrets-kv: with ``delete_version_after`` on ``kv/config`` every write stamps a future
    deletion time; the secret stays live until then, so the action is dispatched and reads it."""
    cluster.vault.configure_kv(delete_version_after="720h")
    try:
        name = "GITHUB_TOKEN"
        cluster.vault.put_secret(f"disinto/runner/{name}", {"value": cluster.secrets[name]})  # a new version, stamped
        meta = cluster.vault._kv_metadata_body(cluster.vault._kv[f"disinto/runner/{name}"])
        assert meta["versions"][str(meta["current_version"])]["deletion_time"] != ""  # a future deletion time
        write_formula(cluster, "dva", f'test -n "${name}" && echo "dva formula has its secret"\n')
        cluster.merge_action("dva-1", action_toml("dva-1", formula="dva", secrets=[name]))
        harness.until_idle()
    finally:
        cluster.vault.configure_kv(delete_version_after=0)
    res = result(cluster, "dva-1")
    assert res["outcome"] == "success" and res["exit_code"] == 0, res.get("reason") or res
    assert "dva formula has its secret" in res["logs"]


# ----------------------------------------------------------------------------- lost node
def test_a_second_copy_started_by_nomad_exits_at_the_claim(cluster, harness, tmp_path):
    marker = tmp_path / "ran"
    write_formula(cluster, "slow-marker", f'echo run >> "{marker}"\nsleep 2\necho done\n')
    cluster.nomad.script_next(lambda job: (job.get("Meta") or {}).get("action_id") == "lost-node", lose_after=0.8, lose_as="lost", replace=True)
    cluster.merge_action("lost-node", action_toml("lost-node", formula="slow-marker"))
    for _ in range(100):
        harness.run_pass()
        if harness.store.find("lost-node").state == State.RUNNING:
            break
        time.sleep(0.1)
    # Leave Nomad alone until its replacement copy has met the claim.
    job_id = harness.store.find("lost-node").nomad_job_id

    def replacement_done():
        allocs = cluster.nomad.allocations_of(job_id)
        return len(allocs) >= 2 and allocs[-1]["ClientStatus"] in ("complete", "failed")

    assert cluster.nomad.wait_until(replacement_done, timeout=20)
    harness.until_idle()
    res = result(cluster, "lost-node")
    assert res["outcome"] == "unknown" and res["exit_code"] != 0
    job = children_of(cluster, "lost-node")
    assert len(job) == 1
    allocs = cluster.nomad.allocations_of(job[0]["ID"])
    assert len(allocs) >= 2, "Nomad started a replacement copy"
    time.sleep(2.5)
    assert marker.read_text().count("run") == 1, "the formula ran exactly once"
    codes = [ev.get("ExitCode") for a in allocs for ts in (a.get("TaskStates") or {}).values() for ev in ts.get("Events") or [] if ev.get("Type") == "Terminated"]
    assert 90 in codes, "the replacement copy found the claim taken"


# ----------------------------------------------------------------------------- metrics
def test_metrics_after_a_run_show_transitions_and_latencies(cluster, harness):
    import requests

    cluster.merge_action("metrics-1", action_toml("metrics-1"))
    harness.until_idle()
    server = harness.ctx.metrics.serve("127.0.0.1:0")
    try:
        text = requests.get(f"{server.url}/metrics", timeout=5).text
        health = requests.get(f"{server.url}/healthz", timeout=5)
    finally:
        server.stop()
    for trig in ("create", "bind", "dispatch", "collect", "report"):
        assert re.search(rf'reconciler_transitions_total\{{[^}}]*transition="{trig}"[^}}]*\}} [1-9]', text), trig
    assert re.search(r"reconciler_dispatch_latency_seconds_count [1-9]", text)
    assert re.search(r"reconciler_report_latency_seconds_count [1-9]", text)
    assert re.search(r"reconciler_pass_duration_seconds_count [1-9]", text)
    assert health.status_code == 200, health.text


def test_optional_comment_on_the_pull_request(cluster, tmp_path):
    from dataclasses import replace

    from tests.conftest import Harness

    h = Harness(cluster, tmp_path)
    h.ctx.settings = replace(h.settings, forge=replace(h.settings.forge, pr_comments=True))
    try:
        number, _ = cluster.merge_action("pr-comment-1", action_toml("pr-comment-1"))
        h.until_idle()
        h.run_pass()
        comments = cluster.forge.comments(OPS_REPO, number)
        assert len(comments) == 1
        assert "outcome **success**" in comments[0]["body"] and "pr-comment-1" in comments[0]["body"]
    finally:
        h.close()


def test_a_failed_pull_request_comment_is_recorded_retried_and_shown(cluster, tmp_path, monkeypatch):
    """A side effect of one run (its PR comment) that fails is kept, shown by `status` and retried,
    and holds back no result."""
    from dataclasses import replace

    from reconciler import publish
    from tests.cli.test_cli import cli
    from tests.conftest import Harness

    h = Harness(cluster, tmp_path)
    h.ctx.settings = replace(h.settings, forge=replace(h.settings.forge, pr_comments=True))
    comment_posts = lambda req: req.method == "POST" and req.path.endswith("/comments")  # noqa: E731
    try:
        cluster.forge.faults.fail_next(3, "error", match=comment_posts)  # the client does not retry a write
        number, _ = cluster.merge_action("pr-comment-2", action_toml("pr-comment-2"))
        h.until_idle()
        assert result(cluster, "pr-comment-2")["exit_code"] == 0, "the result is not held back"
        pending = publish.pending_comments(h.store)
        assert set(pending) == {h.store.find("pr-comment-2").id} and pending[h.store.find("pr-comment-2").id]["pull"] == number
        shown = cli("status", env={"RECONCILER_DB": str(h.settings.store.db)})
        assert f"comment on pull request #{number}" in shown.stdout and "(retried)" in shown.stdout, shown.stdout
        monkeypatch.setattr(publish, "COMMENT_RETRY_SECONDS", 0.0)
        cluster.forge.faults.fail_next(0)
        for _ in range(5):
            publish.retry_pending_comments(h.ctx)
            if not publish.pending_comments(h.store):
                break
        assert publish.pending_comments(h.store) == {}
        assert len(cluster.forge.comments(OPS_REPO, number)) == 1
    finally:
        h.close()
