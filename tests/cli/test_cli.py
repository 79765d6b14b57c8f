"""The CLI as INTERFACE.md defines it: exit codes, status/show/validate, retry/cancel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store.models import RunRecord
from store.runs import RunStore

FIXTURES = Path(__file__).resolve().parents[2] / "reconciler" / "demo"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_", "VAULT_", "FORGE_", "RECONCILER_"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=60)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "state.db"
    store = RunStore(path, time.time)
    store.create(RunRecord(id="rel-abc", action_id="release-v1", path="vault/actions/release-v1.toml", result_path="vault/actions/release-v1.result.json"), "seen")
    store.transition("rel-abc", "bind", expect="pending", reason="approved", changes={"attempt": 1})
    store.create(RunRecord(id="old-def", action_id="old", path="vault/actions/old.toml"), "seen")
    store.transition("old-def", "reject", expect="pending", reason="invalid action: bad", changes={"exit_code": 1, "outcome": "rejected", "error": "invalid action: bad"})
    store.transition("old-def", "report", expect="rejected", reason="pushed")
    store.close()
    return path


def test_help_explains_every_command():
    out = cli("--help")
    assert out.returncode == 0
    for command in ("run", "status", "show", "validate", "retry", "cancel", "demo"):
        assert command in out.stdout
    assert "--until-idle" in cli("run", "--help").stdout


def test_usage_errors_exit_2():
    assert cli("no-such-command").returncode == 2
    assert cli("run", "--once", "--until-idle").returncode == 2
    assert cli("status", "--older-than", "soon").returncode == 2


def test_validate_samples_ok_and_problems_one_per_line(tmp_path):
    env = {"FACTORY_ROOT": str(FIXTURES)}
    samples = sorted((FIXTURES / "ops-repo" / "vault" / "actions").glob("*.toml"))
    ok = cli("validate", *map(str, samples), env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": ok") == len(samples)
    bad = tmp_path / "bad-one.toml"
    bad.write_text('id = "other"\nformula = "nope"\ncontext = "x"\nsecrets = ["AWS"]\ncolour = 1\n')
    out = cli("validate", str(bad), env=env)
    assert out.returncode == 1
    lines = [l for l in out.stdout.splitlines() if l.strip()]
    assert len(lines) >= 4
    assert all(l.startswith(str(bad)) for l in lines)
    text = out.stdout
    assert "colour" in text and "AWS" in text and "nope" in text and "file name" in text


def test_validate_without_factory_root_fails_closed(tmp_path):
    f = FIXTURES / "ops-repo" / "vault" / "actions" / "release-v120.toml"
    out = cli("validate", str(f))
    assert out.returncode == 1 and "FACTORY_ROOT" in out.stdout


def test_status_json_shape(db):
    out = cli("status", "--json", env={"RECONCILER_DB": str(db)})
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["counts"] == {"policy-bound": 1, "reported": 1}
    run = next(r for r in data["runs"] if r["id"] == "rel-abc")
    for key in ("id", "kind", "action_id", "state", "state_since", "attempt", "nomad_job_id", "alloc_id", "exit_code", "error"):
        assert key in run
    assert run["kind"] == "vault-action" and run["state"] == "policy-bound"


def test_status_stuck_threshold(db):
    fresh = json.loads(cli("status", "--json", "--stuck", "--older-than", "1h", env={"RECONCILER_DB": str(db)}).stdout)
    assert fresh["runs"] == []
    stuck = json.loads(cli("status", "--json", "--stuck", "--older-than", "0s", env={"RECONCILER_DB": str(db)}).stdout)
    assert [r["id"] for r in stuck["runs"]] == ["rel-abc"]
    table = cli("status", env={"RECONCILER_DB": str(db)})
    assert "rel-abc" in table.stdout and "policy-bound" in table.stdout


def test_show_by_action_id_with_journal(db):
    out = cli("show", "release-v1", "--json", env={"RECONCILER_DB": str(db)})
    assert out.returncode == 0
    data = json.loads(out.stdout)
    assert data["id"] == "rel-abc"
    assert [(e["from"], e["to"]) for e in data["events"]] == [(None, "pending"), ("pending", "policy-bound")]
    assert all(set(e) >= {"at", "from", "to", "reason"} for e in data["events"])
    missing = cli("show", "nope", env={"RECONCILER_DB": str(db)})
    assert missing.returncode == 1 and "no run matches" in missing.stderr


def test_retry_and_cancel_are_journaled(db):
    env = {"RECONCILER_DB": str(db)}
    assert cli("retry", "rel-abc", env=env).returncode == 1  # not reported yet
    out = cli("retry", "old", env=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(cli("show", "old", "--json", env=env).stdout)
    assert data["state"] == "pending" and data["events"][-1]["transition"] == "retry"
    out = cli("cancel", "rel-abc", env=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(cli("show", "rel-abc", "--json", env=env).stdout)
    assert data["state"] == "cancelled" and data["events"][-1]["reason"] == "cancelled by operator"
    assert cli("cancel", "rel-abc", env=env).returncode == 1


def test_bad_configuration_is_a_runtime_error_with_advice(tmp_path):
    out = cli("run", "--once", env={"RECONCILER_DB": str(tmp_path / "x.db"), "RECONCILER_INTERVAL": "-3"})
    assert out.returncode == 1 and "RECONCILER_INTERVAL" in out.stderr
    out = cli("run", "--once", env={"RECONCILER_DB": str(tmp_path / "x.db")})
    assert out.returncode == 1 and "OPS_REPO_REMOTE" in out.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text("nomad_adr = 'x'\n")
    out = cli("--config", str(cfg), "status")
    assert out.returncode == 1 and "nomad_adr" in out.stderr
