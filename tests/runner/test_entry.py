"""The runner's entry step, end to end as a subprocess against the Vault double.

Each test mints the claim as the reconciler does - through the ``vault-runner``
token role with hvac, response-wrapped - writes it as the dispatch payload, runs
``python -m reconciler.runner`` with the environment Nomad gives a dispatched
task, and checks the state of the world: exit code, the runner's output, files
the formula wrote, and the tokens in the double.
"""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import hvac
import requests
import pytest

from doubles.vault import INVALID_WRAPPING_TOKEN, VaultDouble
from reconciler.local_cluster import RUNNER_CLAIM_POLICY, configure_factory
from reconciler.redact import Redactor
from reconciler.runner.entry import (
    RunnerConfig,
    RunnerError,
    RunnerExit,
    formula_env,
    mount_env_name,
    resolve_formula,
    take_payload,
)
from reconciler.runner.process import run_formula
from reconciler.runner.vault_session import VaultCallError, VaultSession

GITHUB_TOKEN = "ghp_" + "Zq8rT2vX9wLmN4bC7dF1gH3jK5pS6yU0aE2i"
NPM_TOKEN = "npm-plain-value-7f3k2j"  # not secret-shaped: only its known value protects it
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBkdW1teWtleW1hdGVyaWFsZm9ydGVzdGluZ29ubHkAAAAAAAAAAAAAAAAA\n"
    "AAAEAZHVtbXlrZXltYXRlcmlhbGZvcnRlc3Rpbmdvbmx5ZHVtbXlrZXltYXRlcmlhbGZv\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
KEY_BODY = PRIVATE_KEY.splitlines()[1:-1]
KNOWN_HOSTS = "forge.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKnownHostKeyOfTheForge"
SECRETS = {"GITHUB_TOKEN": GITHUB_TOKEN, "NPM_TOKEN": NPM_TOKEN, "EMPTY_TOKEN": ""}
MOUNTS = {"ssh": {"id_ed25519": PRIVATE_KEY, "known_hosts": KNOWN_HOSTS}}
OUTER_VAULT_TOKEN = "hvs.OuterTokenTheFormulaMustNeverSee0123"
OUTER_NOMAD_TOKEN = "a3c1f9e2-nomad-token-the-formula-must-not-see"

FORMULAS = {
    # Records that it ran, what it saw, and whether the payload was still there.
    "record": """
        touch "$MARKER_DIR/ran"
        env -0 > "$MARKER_DIR/env"
        [ -e "$NOMAD_TASK_DIR/claim.json" ] && echo present > "$MARKER_DIR/payload" || echo gone > "$MARKER_DIR/payload"
        if [ -n "$RUNNER_MOUNT_SSH" ]; then
          stat -c '%a' "$RUNNER_MOUNT_SSH" > "$MARKER_DIR/mount-dir-mode"
          stat -c '%a' "$RUNNER_MOUNT_SSH/id_ed25519" > "$MARKER_DIR/mount-file-mode"
          cp "$RUNNER_MOUNT_SSH/id_ed25519" "$MARKER_DIR/key-copy"
        fi
        echo "formula ran for action $1"
        exit "${EXIT_WITH:-0}"
    """,
    # Prints every secret it holds, whole, split across writes, line by line, on both streams.
    "leak": """
        touch "$MARKER_DIR/ran"
        echo "token: $GITHUB_TOKEN"
        echo "npm: $NPM_TOKEN" >&2
        printf 'split: %s' "${GITHUB_TOKEN:0:9}"; sleep 0.05; printf '%s end\\n' "${GITHUB_TOKEN:9}"
        printf 'err-split: %s' "${NPM_TOKEN:0:5}" >&2; sleep 0.05; printf '%s\\n' "${NPM_TOKEN:5}" >&2
        printf 'no newline at all: %s' "${NPM_TOKEN:0:3}"; sleep 0.05; printf '%s' "${NPM_TOKEN:3}"; sleep 0.05
        echo
        cat "$RUNNER_MOUNT_SSH/id_ed25519"
        cat "$RUNNER_MOUNT_SSH/id_ed25519" >&2
        tail -n +2 "$RUNNER_MOUNT_SSH/id_ed25519" | head -n 3 | while read -r line; do
          printf '  > %s' "${line:0:20}"; sleep 0.02; printf '%s\\n' "${line:20}"
        done
        echo "an undeclared token ghp_UndeclaredButSecretShaped0123456789abcd leaks too" >&2
        echo "done"
    """,
    # Outlives its timeout, with a child in its process group.
    "sleepy": """
        sleep 300 &
        echo $! > "$MARKER_DIR/child.pid"
        echo started
        wait
    """,
    # Ignores SIGTERM: only SIGKILL stops it.
    "stubborn": """
        trap '' TERM
        sleep 300 &
        echo $! > "$MARKER_DIR/child.pid"
        echo started
        while true; do sleep 0.05; done
    """,
}


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture
def vault() -> Iterator[VaultDouble]:
    double = VaultDouble().start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def dispatcher(vault: VaultDouble) -> hvac.Client:
    """The reconciler's Vault client: the factory's layout and the dispatcher token."""
    token = configure_factory(vault, {k: v for k, v in SECRETS.items()}, MOUNTS)
    return hvac.Client(url=vault.address, token=token)


@dataclass
class Task:
    """A dispatched task's directories, as Nomad lays them out, and a factory checkout."""

    root: Path
    vault_addr: str
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for d in (self.task_dir, self.secrets_dir, self.markers, self.factory / "formulas"):
            d.mkdir(parents=True, exist_ok=True)
        for name, body in FORMULAS.items():
            (self.factory / "formulas" / f"{name}.sh").write_text("#!/usr/bin/env bash\n" + body)

    @property
    def task_dir(self) -> Path:
        return self.root / "alloc" / "runner" / "local"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "alloc" / "runner" / "secrets"

    @property
    def markers(self) -> Path:
        return self.root / "markers"

    @property
    def factory(self) -> Path:
        return self.root / "factory"

    @property
    def payload(self) -> Path:
        return self.task_dir / "claim.json"

    def write_payload(self, wrapping_token: str) -> None:
        self.payload.write_text(json.dumps({"version": 1, "wrapping_token": wrapping_token}))

    def env(self, formula: str, accessor: str, secrets: list[str], mounts: list[str], timeout: float = 30) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "LANG": "C.UTF-8",
            "NOMAD_TASK_DIR": str(self.task_dir),
            "NOMAD_SECRETS_DIR": str(self.secrets_dir),
            "NOMAD_ALLOC_ID": "0b1c2d3e-0000-4000-8000-000000000001",
            "NOMAD_META_run_id": "run-1",
            "NOMAD_META_attempt": "1",
            "NOMAD_META_action_id": "release-v120",
            "NOMAD_META_formula": formula,
            "NOMAD_META_timeout_seconds": str(timeout),
            "NOMAD_META_wrapped_accessor": accessor,
            "NOMAD_META_secrets": ",".join(secrets),
            "NOMAD_META_mounts": ",".join(mounts),
            "NOMAD_TOKEN": OUTER_NOMAD_TOKEN,
            "VAULT_ADDR": self.vault_addr,
            "VAULT_TOKEN": OUTER_VAULT_TOKEN,
            "FACTORY_ROOT": str(self.factory),
            "RUNNER_AGENT_COMMAND": "",
            "MARKER_DIR": str(self.markers),
        }
        env.update(self.extra_env)
        return env

    def formula_ran(self) -> bool:
        return (self.markers / "ran").exists()

    def formula_env(self) -> dict[str, str]:
        raw = (self.markers / "env").read_bytes().decode()
        return dict(item.split("=", 1) for item in raw.split("\0") if item)


@pytest.fixture
def task(tmp_path: Path, vault: VaultDouble) -> Task:
    return Task(tmp_path, vault.address)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def final_line(self) -> str:
        return self.stderr.rstrip("\n").splitlines()[-1]


def run_runner(env: dict[str, str], timeout: float = 30) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler.runner"], env=env, capture_output=True, timeout=timeout, cwd=env["HOME"]
    )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def mint_claim(
    client: hvac.Client, secrets: list[str], mounts: list[str], *, role: str | None = "vault-runner", claim_policy: bool = True
) -> tuple[str, str]:
    """Mint the attempt's claim as the reconciler does (``runner-claim`` always); returns (wrapping token, wrapped accessor)."""
    policies = [f"runner-{s}" for s in secrets] + [f"runner-mount-{m}" for m in mounts] + ([RUNNER_CLAIM_POLICY] if claim_policy else [])
    kwargs: dict[str, Any] = {
        "policies": policies,
        "renewable": False,
        "no_default_policy": True,
        "explicit_max_ttl": "1h",
        "wrap_ttl": "600s",
        "meta": {"run_id": "run-1", "attempt": "1"},
    }
    if role:
        kwargs["role_name"] = role
    reply = client.auth.token.create(**kwargs)
    info = reply["wrap_info"]
    assert info["creation_path"] == (f"auth/token/create/{role}" if role else "auth/token/create")
    return info["token"], info["wrapped_accessor"]


def dispatch(task: Task, client: hvac.Client, formula: str, secrets: list[str], mounts: list[str], **kw: Any) -> tuple[dict[str, str], str]:
    """Mint a claim, write the payload, and return (runner env, wrapped accessor)."""
    wrapping, accessor = mint_claim(client, secrets, mounts)
    task.write_payload(wrapping)
    return task.env(formula, accessor, secrets, mounts, **kw), accessor


def wrapping_token_used(vault: VaultDouble, token: str) -> bool:
    [rec] = [t for t in vault.wrapping_tokens() if t["token"] == token]
    return bool(rec["used"])


def assert_no_secret(text: str) -> None:
    for value in (GITHUB_TOKEN, NPM_TOKEN, PRIVATE_KEY, OUTER_VAULT_TOKEN, OUTER_NOMAD_TOKEN, *KEY_BODY):
        assert value not in text
    for line in KEY_BODY:  # not even a piece of a key line
        for i in range(0, len(line) - 16, 8):
            assert line[i : i + 16] not in text
    assert GITHUB_TOKEN[4:20] not in text and NPM_TOKEN[4:] not in text


# -- the happy path ------------------------------------------------------------------


def test_formula_runs_with_exactly_its_secrets_and_mounts_and_no_vault_token(
    task: Task, dispatcher: hvac.Client, vault: VaultDouble
) -> None:
    env, accessor = dispatch(task, dispatcher, "record", ["GITHUB_TOKEN", "NPM_TOKEN"], ["ssh"])
    result = run_runner(env)

    assert result.code == 0, result.stderr
    assert result.final_line == "reconciler-runner: exit=0 reason=ok"
    assert "formula ran for action release-v120" in result.stdout
    seen = task.formula_env()
    assert seen["GITHUB_TOKEN"] == GITHUB_TOKEN and seen["NPM_TOKEN"] == NPM_TOKEN
    assert "EMPTY_TOKEN" not in seen  # not declared, not read
    assert (seen["ACTION_ID"], seen["RUN_ID"], seen["ATTEMPT"]) == ("release-v120", "run-1", "1")
    assert not [k for k in seen if k.startswith("VAULT_") or k == "NOMAD_TOKEN"]
    assert OUTER_VAULT_TOKEN not in seen.values() and OUTER_NOMAD_TOKEN not in seen.values()
    claim_token = vault.token_by_accessor(accessor)
    assert claim_token is not None and claim_token["token"] not in seen.values()
    # The mount: read-only files in a read-only directory of the task's secrets dir.
    assert seen["RUNNER_MOUNT_SSH"] == str(task.secrets_dir / "mounts" / "ssh")
    assert (task.markers / "mount-dir-mode").read_text().strip() == "500"
    assert (task.markers / "mount-file-mode").read_text().strip() == "400"
    assert (task.markers / "key-copy").read_text() == PRIVATE_KEY
    assert (task.secrets_dir / "mounts" / "ssh" / "known_hosts").read_text() == KNOWN_HOSTS
    # The payload was gone before the formula started, and stays gone.
    assert (task.markers / "payload").read_text().strip() == "gone"
    assert not task.payload.exists()


def test_formula_exit_code_passes_through(task: Task, dispatcher: hvac.Client) -> None:
    env, _ = dispatch(task, dispatcher, "record", [], [])
    env["EXIT_WITH"] = "7"
    result = run_runner(env)
    assert result.code == 7
    assert result.final_line == "reconciler-runner: exit=7 reason=formula_failed"


def test_action_without_secrets_claims_with_runner_claim_only(
    task: Task, dispatcher: hvac.Client, vault: VaultDouble
) -> None:
    env, accessor = dispatch(task, dispatcher, "record", [], [])
    result = run_runner(env)
    assert result.code == 0, result.stderr
    token = vault.token_by_accessor(accessor)
    assert token is not None and token["policies"] == [RUNNER_CLAIM_POLICY]
    assert "RUNNER_MOUNT_SSH" not in task.formula_env()


def test_runner_revokes_its_token_before_the_formula_runs(task: Task, dispatcher: hvac.Client, vault: VaultDouble) -> None:
    # runner-claim, on every claim, grants exactly auth/token/revoke-self (claims carry no default policy).
    env, accessor = dispatch(task, dispatcher, "record", ["GITHUB_TOKEN"], [])
    result = run_runner(env)
    assert result.code == 0, result.stderr
    token = vault.token_by_accessor(accessor)
    assert token is not None and token["revoked"]
    revoked_at = token["revoked_at"]
    assert revoked_at is not None and revoked_at <= (task.markers / "ran").stat().st_mtime + 1
    assert "revoke" not in result.stderr
    assert "permission denied" not in (result.stderr + result.stdout).lower()


def test_failed_revoke_self_is_reported_but_not_fatal(task: Task, dispatcher: hvac.Client, vault: VaultDouble) -> None:
    # A claim minted without runner-claim (an older reconciler): revoke-self is denied.
    wrapping, accessor = mint_claim(dispatcher, ["GITHUB_TOKEN"], [], claim_policy=False)
    task.write_payload(wrapping)
    env = task.env("record", accessor, ["GITHUB_TOKEN"], [])
    result = run_runner(env)
    assert result.code == 0, result.stderr
    assert task.formula_ran()
    assert "reconciler-runner: revoke: could not revoke the claim token (revoke the claim token: HTTP 403" in result.stderr
    token = vault.token_by_accessor(accessor)
    assert token is not None and token["live"]  # left for the reconciler to revoke by accessor


def test_toml_formula_runs_through_the_agent_command(task: Task, dispatcher: hvac.Client) -> None:
    (task.factory / "formulas" / "agentic.toml").write_text('name = "agentic"\n')
    agent = task.root / "agent.sh"
    agent.write_text('printf "%s\\n" "$@" > "$MARKER_DIR/agent-args"\necho "agent: GITHUB_TOKEN=$GITHUB_TOKEN"\n')
    env, _ = dispatch(task, dispatcher, "agentic", ["GITHUB_TOKEN"], [])
    env["RUNNER_AGENT_COMMAND"] = f"bash {agent}"
    result = run_runner(env)
    assert result.code == 0, result.stderr
    args = (task.markers / "agent-args").read_text().splitlines()
    assert args == [str(task.factory / "formulas" / "agentic.toml"), "release-v120"]
    assert "agent: GITHUB_TOKEN=[REDACTED:GITHUB_TOKEN]" in result.stdout


# -- the claim -----------------------------------------------------------------------


def test_second_copy_finds_the_claim_taken_and_runs_nothing(
    task: Task, dispatcher: hvac.Client, vault: VaultDouble
) -> None:
    wrapping, accessor = mint_claim(dispatcher, ["GITHUB_TOKEN"], [])
    task.write_payload(wrapping)
    env = task.env("record", accessor, ["GITHUB_TOKEN"], [])
    first = run_runner(env)
    assert first.code == 0 and task.formula_ran()

    (task.markers / "ran").unlink()
    task.write_payload(wrapping)  # Nomad starts another copy with the same payload
    second = run_runner(env)

    assert second.code == RunnerExit.CLAIM_TAKEN == 90
    assert not task.formula_ran()
    assert "reconciler-runner: claim: the wrapping token is not valid or does not exist" in second.stderr
    assert second.final_line == "reconciler-runner: exit=90 reason=claim_taken"
    assert wrapping not in second.stderr and wrapping not in second.stdout
    assert not task.payload.exists()


def test_expired_claim_counts_as_taken(task: Task, dispatcher: hvac.Client, vault: VaultDouble) -> None:
    env, _ = dispatch(task, dispatcher, "record", [], [])
    vault.advance(601)
    result = run_runner(env)
    assert result.code == RunnerExit.CLAIM_TAKEN
    assert not task.formula_ran()


def test_claim_wrapped_outside_the_runner_role_is_refused_without_unwrapping(
    task: Task, vault: VaultDouble, dispatcher: hvac.Client
) -> None:
    root = hvac.Client(url=vault.address, token=vault.root_token)
    wrapping, accessor = mint_claim(root, ["GITHUB_TOKEN"], [], role=None)
    task.write_payload(wrapping)
    result = run_runner(task.env("record", accessor, ["GITHUB_TOKEN"], []))

    assert result.code == RunnerExit.CLAIM_INVALID == 94
    assert "'auth/token/create', not 'auth/token/create/vault-runner'" in result.stderr
    assert not task.formula_ran()
    assert not wrapping_token_used(vault, wrapping)


def test_claim_minted_for_another_dispatch_is_refused(task: Task, dispatcher: hvac.Client, vault: VaultDouble) -> None:
    wrapping, accessor = mint_claim(dispatcher, ["GITHUB_TOKEN"], [])
    _, other_accessor = mint_claim(dispatcher, ["GITHUB_TOKEN"], [])
    task.write_payload(wrapping)
    result = run_runner(task.env("record", other_accessor, ["GITHUB_TOKEN"], []))

    assert result.code == RunnerExit.CLAIM_INVALID
    assert "accessor is not NOMAD_META_wrapped_accessor" in result.stderr
    assert not task.formula_ran()


def test_token_role_is_configurable(task: Task, dispatcher: hvac.Client) -> None:
    env, _ = dispatch(task, dispatcher, "record", [], [])
    env["RUNNER_TOKEN_ROLE"] = "another-role"
    result = run_runner(env)
    assert result.code == RunnerExit.CLAIM_INVALID
    assert "not 'auth/token/create/another-role'" in result.stderr


def test_unwrap_reply_lost_is_not_retried_and_runs_nothing(task: Task, dispatcher: hvac.Client, vault: VaultDouble) -> None:
    env, _ = dispatch(task, dispatcher, "record", [], [])
    wrapping = json.loads(task.payload.read_text())["wrapping_token"]
    vault.faults.fail_next(1, "apply-then-drop", match=lambda r: r.path == "/v1/sys/wrapping/unwrap")
    result = run_runner(env)

    assert result.code == RunnerExit.VAULT_ERROR
    assert len(vault.calls_to("POST", r"/v1/sys/wrapping/unwrap")) == 1
    assert wrapping_token_used(vault, wrapping)
    assert not task.formula_ran()


def test_losing_a_concurrent_unwrap_with_500_is_claim_taken(task: Task, dispatcher: hvac.Client, vault: VaultDouble) -> None:
    """vault/wrapping.go: the loser of two concurrent unwraps may get 500; the wrapping token is used
    by then, so the runner exits claim_taken (90), not vault_error."""
    vault.racing_unwrap_500 = True
    env, _ = dispatch(task, dispatcher, "record", [], [])
    wrapping = json.loads(task.payload.read_text())["wrapping_token"]
    # The other copy unwraps between this runner's lookup (reply held) and its unwrap.
    hold = vault.faults.hold(lambda r: r.path == "/v1/sys/wrapping/lookup")
    proc = subprocess.Popen([sys.executable, "-m", "reconciler.runner"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=env["HOME"])
    assert hold.arrived.wait(20)
    winner = requests.post(f"{vault.address}/v1/sys/wrapping/unwrap", headers={"X-Vault-Token": wrapping}, timeout=5)
    assert winner.status_code == 200
    vault.faults.release()
    out, err = proc.communicate(timeout=30)
    result = Result(proc.returncode, out.decode(), err.decode())
    assert result.code == RunnerExit.CLAIM_TAKEN, result.stderr
    assert "took the claim at the same moment" in result.stderr
    assert not task.formula_ran()


def test_unwrap_500_with_the_token_still_valid_is_vault_error(task: Task, dispatcher: hvac.Client, vault: VaultDouble) -> None:
    env, _ = dispatch(task, dispatcher, "record", [], [])
    wrapping = json.loads(task.payload.read_text())["wrapping_token"]
    vault.faults.fail_next(1, "error", match=lambda r: r.path == "/v1/sys/wrapping/unwrap")
    result = run_runner(env)
    assert result.code == RunnerExit.VAULT_ERROR, result.stderr
    assert not wrapping_token_used(vault, wrapping)
    assert not task.formula_ran()


# -- secrets -------------------------------------------------------------------------


def test_secret_absent_from_vault_fails_with_secret_missing(task: Task, dispatcher: hvac.Client, vault: VaultDouble) -> None:
    vault.delete_secret("disinto/runner/NPM_TOKEN")  # soft-deleted: 404, metadata stays
    env, _ = dispatch(task, dispatcher, "record", ["GITHUB_TOKEN", "NPM_TOKEN"], [])
    result = run_runner(env)
    assert result.code == RunnerExit.SECRET_MISSING == 91
    assert "reconciler-runner: secrets: secret NPM_TOKEN: kv/data/disinto/runner/NPM_TOKEN does not exist" in result.stderr
    assert not task.formula_ran()


def test_secret_with_empty_value_fails_with_secret_missing(task: Task, dispatcher: hvac.Client) -> None:
    env, _ = dispatch(task, dispatcher, "record", ["EMPTY_TOKEN"], [])
    result = run_runner(env)
    assert result.code == RunnerExit.SECRET_MISSING
    assert "secret EMPTY_TOKEN: kv/data/disinto/runner/EMPTY_TOKEN has no 'value'" in result.stderr
    assert not task.formula_ran()


def test_secret_the_claim_may_not_read_fails_with_secret_missing(task: Task, dispatcher: hvac.Client) -> None:
    wrapping, accessor = mint_claim(dispatcher, ["GITHUB_TOKEN"], [])
    task.write_payload(wrapping)
    # Meta declares a secret the claim's policies do not cover: 403.
    result = run_runner(task.env("record", accessor, ["GITHUB_TOKEN", "NPM_TOKEN"], []))
    assert result.code == RunnerExit.SECRET_MISSING
    assert "secret NPM_TOKEN: permission denied reading kv/data/disinto/runner/NPM_TOKEN" in result.stderr
    assert not task.formula_ran()


def test_mount_absent_from_vault_fails_with_secret_missing(task: Task, dispatcher: hvac.Client, vault: VaultDouble) -> None:
    vault.destroy_secret("disinto/runner/mounts/ssh")
    env, _ = dispatch(task, dispatcher, "record", [], ["ssh"])
    result = run_runner(env)
    assert result.code == RunnerExit.SECRET_MISSING
    assert "mounts: mount ssh: kv/data/disinto/runner/mounts/ssh does not exist" in result.stderr
    assert not task.formula_ran()
    assert not (task.secrets_dir / "mounts").exists()


def test_transient_vault_error_on_a_read_is_retried(task: Task, dispatcher: hvac.Client, vault: VaultDouble) -> None:
    env, _ = dispatch(task, dispatcher, "record", ["GITHUB_TOKEN"], [])
    vault.faults.fail_next(1, "error", match=lambda r: r.path.startswith("/v1/kv/data/"))
    result = run_runner(env)
    assert result.code == 0, result.stderr
    assert task.formula_env()["GITHUB_TOKEN"] == GITHUB_TOKEN
    assert len(vault.calls_to("GET", r"/v1/kv/data/disinto/runner/GITHUB_TOKEN")) == 2


def test_vault_unreachable_is_a_vault_error(task: Task, dispatcher: hvac.Client) -> None:
    env, _ = dispatch(task, dispatcher, "record", [], [])
    env["VAULT_ADDR"] = "http://127.0.0.1:9"  # discard port: connection refused
    env["RUNNER_VAULT_TIMEOUT"] = "2"
    result = run_runner(env)
    assert result.code == RunnerExit.VAULT_ERROR == 95
    assert "reconciler-runner: claim: look up the wrapping token: no reply" in result.stderr
    assert not task.formula_ran()


# -- redaction at the source -----------------------------------------------------------


def test_secrets_printed_by_the_formula_never_reach_the_runner_output(task: Task, dispatcher: hvac.Client) -> None:
    env, _ = dispatch(task, dispatcher, "leak", ["GITHUB_TOKEN", "NPM_TOKEN"], ["ssh"])
    result = run_runner(env)

    assert result.code == 0, result.stderr
    assert task.formula_ran()
    for text in (result.stdout, result.stderr):
        assert_no_secret(text)
    assert "token: [REDACTED:GITHUB_TOKEN]\n" in result.stdout
    assert "split: [REDACTED:GITHUB_TOKEN] end\n" in result.stdout
    assert "no newline at all: [REDACTED:NPM_TOKEN]\n" in result.stdout
    assert "[REDACTED:mount:ssh/id_ed25519]" in result.stdout
    assert "  > [REDACTED:mount:ssh/id_ed25519]\n" in result.stdout
    assert "npm: [REDACTED:NPM_TOKEN]\n" in result.stderr
    assert "err-split: [REDACTED:NPM_TOKEN]\n" in result.stderr
    assert "[REDACTED:mount:ssh/id_ed25519]" in result.stderr
    assert "an undeclared token [REDACTED] leaks too" in result.stderr
    assert result.stdout.rstrip().endswith("done")


def test_output_is_streamed_while_the_formula_runs(task: Task, dispatcher: hvac.Client) -> None:
    # The formula waits for the test to have read its first line: a runner that
    # held output back until the formula ended would never let it finish.
    script = 'echo "first line"\nwhile [ ! -e "$MARKER_DIR/go" ]; do sleep 0.02; done\necho "second line"\n'
    (task.factory / "formulas" / "interactive.sh").write_text(script)
    env, _ = dispatch(task, dispatcher, "interactive", [], [], timeout=20)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.runner"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], 10)
        assert readable, "the first line did not arrive while the formula was running"
        assert proc.stdout.readline() == b"first line\n"
        assert proc.poll() is None
        (task.markers / "go").touch()
        assert proc.stdout.read() == b"second line\n"
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


# -- timeout -----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_dead(pid: int, within: float = 2.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return not _alive(pid)


def test_timeout_stops_the_whole_process_group(task: Task, dispatcher: hvac.Client) -> None:
    env, _ = dispatch(task, dispatcher, "sleepy", [], [], timeout=0.5)
    started = time.monotonic()
    result = run_runner(env)
    assert result.code == RunnerExit.TIMEOUT == 124
    assert result.final_line == "reconciler-runner: exit=124 reason=timeout"
    assert "started" in result.stdout
    assert time.monotonic() - started < 10
    assert _wait_dead(int((task.markers / "child.pid").read_text()))


def test_timeout_kills_a_formula_that_ignores_sigterm(task: Task, dispatcher: hvac.Client) -> None:
    env, _ = dispatch(task, dispatcher, "stubborn", [], [], timeout=0.5)
    env["RUNNER_KILL_GRACE_SECONDS"] = "0.3"
    started = time.monotonic()
    result = run_runner(env)
    assert result.code == RunnerExit.TIMEOUT
    assert time.monotonic() - started < 10
    assert _wait_dead(int((task.markers / "child.pid").read_text()))


def test_sigterm_to_the_runner_is_forwarded_to_the_formula(task: Task, dispatcher: hvac.Client) -> None:
    import signal

    env, _ = dispatch(task, dispatcher, "sleepy", [], [], timeout=60)
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.runner"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        assert _wait_dead(int((task.markers / "child.pid").read_text()))
        assert proc.stderr is not None and b"reason=stopped" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


# -- payload and configuration ---------------------------------------------------------


def test_missing_payload_fails_with_payload_missing(task: Task, dispatcher: hvac.Client) -> None:
    _, accessor = mint_claim(dispatcher, [], [])
    result = run_runner(task.env("record", accessor, [], []))
    assert result.code == RunnerExit.PAYLOAD_MISSING == 93
    assert "reconciler-runner: payload:" in result.stderr
    assert not task.formula_ran()


@pytest.mark.parametrize(
    "content",
    ['{"version": 2, "wrapping_token": "hvs.x"}', '{"version": 1}', "not json", '["hvs.x"]'],
)
def test_malformed_payload_fails_and_is_deleted_anyway(task: Task, content: str) -> None:
    task.payload.write_text(content)
    result = run_runner(task.env("record", "acc", [], []))
    assert result.code == RunnerExit.PAYLOAD_MISSING
    assert not task.payload.exists()


def test_missing_formula_fails_before_taking_the_claim(task: Task, dispatcher: hvac.Client, vault: VaultDouble) -> None:
    env, _ = dispatch(task, dispatcher, "no-such-formula", [], [])
    wrapping = json.loads(task.payload.read_text())["wrapping_token"]
    result = run_runner(env)
    assert result.code == RunnerExit.MISCONFIGURED == 92
    assert "reconciler-runner: formula: no no-such-formula.sh or no-such-formula.toml in" in result.stderr
    assert not wrapping_token_used(vault, wrapping)
    assert not task.payload.exists()


def test_toml_formula_without_agent_command_is_misconfigured(task: Task, dispatcher: hvac.Client) -> None:
    (task.factory / "formulas" / "agentic.toml").write_text('name = "agentic"\n')
    env, _ = dispatch(task, dispatcher, "agentic", [], [])
    result = run_runner(env)
    assert result.code == RunnerExit.MISCONFIGURED
    assert "RUNNER_AGENT_COMMAND is empty" in result.stderr


def test_missing_environment_is_misconfigured_and_named(task: Task, dispatcher: hvac.Client) -> None:
    env, _ = dispatch(task, dispatcher, "record", [], [])
    del env["VAULT_ADDR"], env["NOMAD_META_run_id"]
    env["NOMAD_META_timeout_seconds"] = "soon"
    result = run_runner(env)
    assert result.code == RunnerExit.MISCONFIGURED
    line = next(l for l in result.stderr.splitlines() if l.startswith("reconciler-runner: config:"))
    assert "VAULT_ADDR is not set" in line and "NOMAD_META_run_id is not set" in line
    assert "NOMAD_META_timeout_seconds must be a positive number" in line
    assert not task.payload.exists()


def test_unexpected_error_exits_internal_error_without_its_message(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    import reconciler.runner.entry as entry

    def broken(*args: object) -> tuple[int, str]:
        raise ValueError(f"something mentioning {GITHUB_TOKEN}")

    monkeypatch.setattr(entry, "run", broken)
    assert entry.main({}) == RunnerExit.INTERNAL_ERROR == 96
    err = capsysbinary.readouterr().err.decode()
    assert err == (
        "reconciler-runner: internal: unexpected ValueError\n"
        "reconciler-runner: exit=96 reason=internal_error\n"
    )


# -- the steps as functions ----------------------------------------------------------------


def _config(tmp_path: Path, **env: str) -> RunnerConfig:
    base = {
        "NOMAD_TASK_DIR": str(tmp_path),
        "NOMAD_SECRETS_DIR": str(tmp_path),
        "NOMAD_META_RUN_ID": "r",  # Nomad also exports meta upper-cased
        "NOMAD_META_attempt": "2",
        "NOMAD_META_action_id": "a",
        "NOMAD_META_formula": "f",
        "NOMAD_META_timeout_seconds": "90",
        "NOMAD_META_wrapped_accessor": "acc",
        "VAULT_ADDR": "http://127.0.0.1:8200",
        "FACTORY_ROOT": str(tmp_path),
    }
    base.update(env)
    return RunnerConfig.from_env(base)


def test_config_parses_lists_and_defaults(tmp_path: Path) -> None:
    config = _config(tmp_path, NOMAD_META_secrets=" GITHUB_TOKEN, NPM_TOKEN,,GITHUB_TOKEN", NOMAD_META_mounts="ssh")
    assert config.run_id == "r" and config.timeout_seconds == 90
    assert config.secrets == ("GITHUB_TOKEN", "NPM_TOKEN") and config.mounts == ("ssh",)
    assert config.token_role == "vault-runner" and config.kill_grace == 10
    assert config.secret_path("NPM_TOKEN") == "kv/data/disinto/runner/NPM_TOKEN"
    assert config.mount_path("ssh") == "kv/data/disinto/runner/mounts/ssh"
    assert _config(tmp_path).secrets == () and _config(tmp_path).mounts == ()


@pytest.mark.parametrize(
    "env",
    [
        {"NOMAD_META_secrets": "../x"},
        {"NOMAD_META_mounts": "../../etc"},
        {"NOMAD_META_formula": "../evil"},
        {"NOMAD_META_timeout_seconds": "0"},
    ],
)
def test_config_refuses_names_that_could_escape(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(RunnerError) as err:
        _config(tmp_path, **env)
    assert err.value.code == RunnerExit.MISCONFIGURED


def test_take_payload_deletes_the_file_before_returning(tmp_path: Path) -> None:
    (tmp_path / "claim.json").write_text('{"version": 1, "wrapping_token": "hvs.abc"}')
    assert take_payload(tmp_path) == "hvs.abc"
    assert not (tmp_path / "claim.json").exists()


def test_resolve_formula_prefers_the_shell_script(tmp_path: Path) -> None:
    (tmp_path / "formulas").mkdir()
    (tmp_path / "formulas" / "x.sh").write_text("")
    (tmp_path / "formulas" / "x.toml").write_text("")
    assert resolve_formula(tmp_path, "x", "agent --flag", "id") == ["bash", str(tmp_path / "formulas" / "x.sh"), "id"]
    (tmp_path / "formulas" / "x.sh").unlink()
    assert resolve_formula(tmp_path, "x", "agent --flag 'a b'", "id") == [
        "agent", "--flag", "a b", str(tmp_path / "formulas" / "x.toml"), "id",
    ]


def test_formula_env_strips_vault_and_nomad_tokens(tmp_path: Path) -> None:
    config = _config(tmp_path)
    base = {"PATH": "/bin", "VAULT_TOKEN": "t", "VAULT_ADDR": "a", "VAULT_NAMESPACE": "n", "NOMAD_TOKEN": "x",
            "NOMAD_ALLOC_ID": "alloc"}
    env = formula_env(base, config, {"GITHUB_TOKEN": "g"}, {"ssh": tmp_path / "ssh", "my-gpg": tmp_path / "g"})
    assert env == {
        "PATH": "/bin", "NOMAD_ALLOC_ID": "alloc", "ACTION_ID": "a", "RUN_ID": "r", "ATTEMPT": "2",
        "GITHUB_TOKEN": "g", "RUNNER_MOUNT_SSH": str(tmp_path / "ssh"), "RUNNER_MOUNT_MY_GPG": str(tmp_path / "g"),
    }
    assert mount_env_name("sops") == "RUNNER_MOUNT_SOPS"


def test_run_formula_redacts_both_streams_read_concurrently() -> None:
    secret = "concurrent-secret-value"
    # Enough output on stderr to fill a pipe while stdout is also written: a
    # runner reading one pipe after the other would deadlock.
    script = (
        f"for i in $(seq 1 2000); do echo \"err $i {secret}\" >&2; echo \"out $i {secret}\"; done"
    )
    out, err = io.BytesIO(), io.BytesIO()
    outcome = run_formula(
        ["bash", "-c", script], {"PATH": os.environ["PATH"]}, timeout=20,
        redactor=Redactor({"S": secret}), stdout=out, stderr=err,
    )
    assert outcome.exit_code == 0 and not outcome.timed_out
    stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    assert secret not in stdout and secret not in stderr
    assert stdout.count("[REDACTED:S]") == 2000 and stderr.count("[REDACTED:S]") == 2000
    assert stdout.splitlines()[-1] == "out 2000 [REDACTED:S]"


# -- conformance: what the runner relies on from Vault ---------------------------------------


def test_contract_response_wrapping_lookup_shows_creation_path_and_unwrap_is_single_use(
    vault: VaultDouble, dispatcher: hvac.Client
) -> None:
    """CONTRACTS.md, Vault, "Response wrapping": lookup without using it; unwrap once; again -> 400."""
    wrapping, accessor = mint_claim(dispatcher, ["GITHUB_TOKEN"], [])
    session = VaultSession(vault.address)
    info = session.wrapping_lookup(wrapping)
    assert info["creation_path"] == "auth/token/create/vault-runner"
    assert session.wrapping_lookup(wrapping)["creation_path"] == info["creation_path"]  # lookup does not use it
    reply = session.unwrap(wrapping)
    assert reply["auth"]["accessor"] == accessor
    with pytest.raises(VaultCallError) as again:
        session.unwrap(wrapping)
    assert again.value.status == 400 and any(INVALID_WRAPPING_TOKEN in e for e in again.value.errors)
    with pytest.raises(VaultCallError) as lookup_after:
        session.wrapping_lookup(wrapping)
    assert lookup_after.value.status == 400


def test_contract_denied_is_403_and_missing_path_is_404(vault: VaultDouble, dispatcher: hvac.Client) -> None:
    """CONTRACTS.md, Vault, first bullet: denied 403, missing path 404 - what SECRET_MISSING maps."""
    wrapping, _ = mint_claim(dispatcher, ["GITHUB_TOKEN"], [])
    session = VaultSession(vault.address)
    token = session.unwrap(wrapping)["auth"]["client_token"]
    assert session.kv_read(token, "kv/data/disinto/runner/GITHUB_TOKEN") == {"value": GITHUB_TOKEN}
    with pytest.raises(VaultCallError) as denied:
        session.kv_read(token, "kv/data/disinto/runner/NPM_TOKEN")
    assert denied.value.denied
    with pytest.raises(VaultCallError) as missing:
        session.kv_read(vault.root_token, "kv/data/disinto/runner/NOPE")
    assert missing.value.not_found
