"""reconciler doctor against a local factory: all good, Vault down, a runner policy widened, and more."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from reconciler.doctor import Check, granted_paths, run_doctor
from reconciler.local_cluster import LocalCluster
from reconciler.jobspecs import runner_policy_text


@pytest.fixture
def factory(tmp_path):
    c = LocalCluster(tmp_path / "factory", nomad_mode="simulate").start()
    yield c
    c.stop()


def doctor(settings) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = run_doctor(settings, out=out, git_timeout=10)
    return code, out.getvalue().splitlines()


def failures(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("FAIL")]


def test_a_healthy_factory_passes(factory):
    code, lines = doctor(factory.settings())
    assert code == 0, "\n".join(lines)
    assert failures(lines) == []
    text = "\n".join(lines)
    for expected in (
        f"ok   nomad reachable at {factory.nomad.address}",
        "ok   nomad parent job vault-runner in namespace runners is registered and parameterized",
        f"ok   vault reachable and unsealed at {factory.vault.address}",
        "ok   vault token valid",
        "ok   vault policy runner-GITHUB_TOKEN grants exactly kv/data/disinto/runner/GITHUB_TOKEN",
        "ok   forge token valid",
        "ok   forge repo factory/ops readable by reconciler",
        "ok   git ops remote",
    ):
        assert expected in text, f"missing {expected!r} in:\n{text}"
    assert factory.dispatcher_token not in text and factory.forge_token not in text


def test_vault_stopped_names_vault_and_its_address(factory):
    address = factory.vault.address
    factory.vault.stop()
    code, lines = doctor(factory.settings())
    assert code == 1
    vault_lines = [line for line in lines if line.startswith("FAIL vault")]
    assert len(vault_lines) == 1, lines
    assert address in vault_lines[0]
    assert "VAULT_ADDR" in vault_lines[0]
    # the other systems are still checked
    assert any(line.startswith("ok   nomad reachable") for line in lines)
    assert any(line.startswith("ok   forge token valid") for line in lines)


def test_runner_policy_widened_to_a_wildcard_is_reported(factory):
    factory.vault.put_policy(
        "runner-GITHUB_TOKEN",
        runner_policy_text("GITHUB_TOKEN") + 'path "kv/data/disinto/runner/*" {\n  capabilities = ["read"]\n}\n',
    )
    code, lines = doctor(factory.settings())
    assert code == 1
    bad = failures(lines)
    assert len(bad) == 1, lines
    assert "policy runner-GITHUB_TOKEN grants kv/data/disinto/runner/*" in bad[0]
    assert "it must grant exactly kv/data/disinto/runner/GITHUB_TOKEN" in bad[0]


def test_runner_policy_for_another_path_is_reported(factory):
    factory.vault.put_policy("runner-NPM_TOKEN", runner_policy_text("GITHUB_TOKEN"))
    code, lines = doctor(factory.settings())
    assert code == 1
    (bad,) = failures(lines)
    assert "policy runner-NPM_TOKEN grants kv/data/disinto/runner/GITHUB_TOKEN" in bad
    assert "exactly kv/data/disinto/runner/NPM_TOKEN" in bad


def test_missing_runner_policy_is_reported(factory):
    factory.vault.delete_policy("runner-DEPLOY_KEY")
    code, lines = doctor(factory.settings())
    assert code == 1
    (bad,) = failures(lines)
    assert "policy runner-DEPLOY_KEY does not exist" in bad and "RECONCILER_ALLOWED_SECRETS" in bad


def test_unknown_vault_token_is_refused(factory):
    settings = factory.settings()
    code, lines = doctor(replace(settings, vault=replace(settings.vault, token="hvs.not-a-real-token")))
    assert code == 1
    (bad,) = failures(lines)
    assert bad.startswith("FAIL vault") and "refused the token" in bad
    assert "hvs.not-a-real-token" not in "\n".join(lines)


def test_unregistered_parent_job_is_reported(factory):
    settings = factory.settings()
    code, lines = doctor(replace(settings, nomad=replace(settings.nomad, runner_job="no-such-runner")))
    assert code == 1
    (bad,) = failures(lines)
    assert "parent job no-such-runner in namespace runners is not registered" in bad
    assert "jobspecs apply" in bad


def test_sidecar_parent_checked_when_forge_repo_is_set(factory):
    settings = factory.settings(sidecars=True)
    code, lines = doctor(settings)
    assert code == 0, lines
    assert any("sidecar" in line for line in lines if line.startswith("ok"))
    factory.nomad.stop_behind_back("sidecar", purge=True)
    code, lines = doctor(settings)
    assert code == 1
    (bad,) = failures(lines)
    assert "parent job sidecar in namespace runners is not registered" in bad


def test_forge_token_refused_and_ops_remote_unreachable(factory, tmp_path):
    settings = factory.settings()
    broken = replace(
        settings,
        forge=replace(settings.forge, token="wrong-token"),
        ops=replace(settings.ops, remote=(tmp_path / "nowhere.git").as_uri()),
    )
    code, lines = doctor(broken)
    assert code == 1
    bad = failures(lines)
    assert any(line.startswith("FAIL forge") and factory.forge.address in line and "FORGE_TOKEN" in line for line in bad), bad
    assert any(line.startswith("FAIL git") and "nowhere.git" in line and "OPS_REPO_REMOTE" in line for line in bad), bad
    assert "wrong-token" not in "\n".join(lines)


def test_nomad_unreachable_names_its_address():
    from reconciler.settings import NomadSettings, Settings, VaultSettings

    settings = Settings(nomad=NomadSettings(addr="http://127.0.0.1:9", timeout=2), vault=VaultSettings(addr="http://127.0.0.1:9", timeout=2))
    code, lines = doctor(settings)
    assert code == 1
    assert any(line.startswith("FAIL nomad not reachable at http://127.0.0.1:9") and "NOMAD_ADDR" in line for line in lines)
    assert any(line.startswith("FAIL forge not configured") for line in lines)


def test_granted_paths_reads_hcl_and_json_and_ignores_deny():
    hcl = '# c\npath "a/b" {\n  capabilities = ["read", "list"]\n}\npath "a/*" { capabilities = ["deny"] }\n'
    assert granted_paths(hcl) == {"a/b": {"read", "list"}}
    js = '{"path": {"x/y": {"capabilities": ["read"]}, "x/*": {"capabilities": ["deny"]}}}'
    assert granted_paths(js) == {"x/y": {"read"}}


def test_check_lines_have_the_promised_shape():
    assert Check(True, "vault", "token valid").line() == "ok   vault token valid"
    assert Check(False, "git", "remote x unreachable", "fix it").line() == "FAIL git remote x unreachable \u2014 fix it"


def test_token_files_are_read_when_settings_name_them(factory, tmp_path):
    """Settings groups may carry ``token_file`` (``*_TOKEN_FILE``); doctor reads it like the service does."""
    token_file = tmp_path / "vault.token"
    token_file.write_text(factory.dispatcher_token + "\n")
    settings = factory.settings()
    vault = replace(settings.vault, token=None, token_file=token_file)
    code, lines = doctor(replace(settings, vault=vault))
    assert code == 0, "\n".join(lines)

    missing = replace(settings.vault, token=None, token_file=tmp_path / "absent")
    code, lines = doctor(replace(settings, vault=missing))
    assert code == 1
    assert any(line.startswith("FAIL vault token file unusable") and "VAULT_TOKEN_FILE" in line for line in lines), lines


def test_listed_admins_that_do_not_qualify_are_reported(factory):
    """FORGE_ADMIN_USERS names that are neither site admins nor repo admins, and the reconciler's own user."""
    factory.forge.add_user("vault-bot")  # anyone may register the name
    factory.forge.add_user("rita")
    factory.forge.add_collaborator("factory/ops", "rita", "admin")
    settings = factory.settings()
    settings = replace(settings, forge=replace(settings.forge, admin_users=("vault-bot", "rita", "reconciler", "ghost")))
    code, lines = doctor(settings)
    assert code == 1
    bad = failures(lines)
    assert any("FORGE_ADMIN_USERS lists vault-bot, who is neither a site admin nor an admin of factory/ops" in line for line in bad), bad
    assert any("FORGE_ADMIN_USERS lists ghost" in line for line in bad), bad
    assert any("reconciler, the reconciler's own user" in line for line in bad), bad
    assert "ok   forge rita is an admin of factory/ops (its approvals count)" in lines
    assert len(bad) == 3, bad


def test_missing_token_scopes_are_named_per_feature(factory):
    forge = factory.forge
    token = forge.new_token("reconciler", scopes=["read:user"])
    settings = factory.settings(sidecars=True)
    settings = replace(settings, forge=replace(settings.forge, token=token))
    code, lines = doctor(settings)
    assert code == 1
    bad = failures(lines)
    assert any("FORGE_TOKEN lacks scope read:repository, needed for the approval gate" in line for line in bad), bad
    assert any("FORGE_TOKEN lacks scope read:issue, needed for sidecars" in line for line in bad), bad
    assert any("FORGE_TOKEN lacks scope write:issue" in line for line in bad), bad
    assert token not in "\n".join(lines)
    # with every scope the same checks pass, and nothing was written by the write:issue probe
    full = replace(settings, forge=replace(settings.forge, token=forge.new_token("reconciler")))
    code, lines = doctor(full)
    assert "ok   forge FORGE_TOKEN has scope write:issue (sidecar failure comments)" in lines, lines


def test_doctor_proves_the_token_can_push_over_smart_http(factory):
    """The ops remote is the forge's smart HTTP URL (OPS_REPO_REMOTE unset): read and push probed with the token."""
    settings = factory.settings()
    assert settings.ops.remote is None
    code, lines = doctor(settings)
    assert code == 0, "\n".join(lines)
    text = "\n".join(lines)
    assert f"ok   git ops remote {factory.http_remote} accepts pushes" in text, text
    assert "ok   git version 2." in text
    assert factory.forge.head("factory/ops", "reconciler-doctor-probe") is None  # a dry run changes nothing


def test_doctor_names_the_missing_write_scope(factory):
    read_only = factory.forge.new_token("reconciler", scopes=["read:repository", "read:user", "read:issue"])
    settings = factory.settings()
    code, lines = doctor(replace(settings, forge=replace(settings.forge, token=read_only)))
    assert code == 1
    (bad,) = [line for line in failures(lines) if line.startswith("FAIL git")]
    assert "refuses pushes" in bad and "write:repository" in bad, bad
    assert read_only not in "\n".join(lines)


def test_doctor_names_a_revoked_token_for_git(factory):
    token = factory.forge.new_token("reconciler")
    factory.forge.revoke_token(token)
    settings = factory.settings()
    code, lines = doctor(replace(settings, forge=replace(settings.forge, token=token)))
    assert code == 1
    git_lines = [line for line in failures(lines) if line.startswith("FAIL git")]
    assert git_lines and "did not accept the token" in git_lines[0] and "read:repository" in git_lines[0], lines
    assert token not in "\n".join(lines)


def test_doctor_refuses_a_git_older_than_the_minimum(factory, tmp_path, monkeypatch):
    """A `git` on PATH that says it is 2.30 (Debian bullseye): doctor names the minimum, 2.32."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "git").write_text("#!/bin/sh\necho 'git version 2.30.2'\n")
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    code, lines = doctor(factory.settings())
    assert code == 1
    assert any(line.startswith("FAIL git version 2.30.2 is older than 2.32") for line in lines), lines


def test_doctor_names_a_user_who_may_read_but_not_push_the_ops_repo(factory):
    factory.forge.add_collaborator("factory/ops", "reconciler", "read")
    try:
        code, lines = doctor(factory.settings())
        assert code == 1
        bad = failures(lines)
        assert any(line.startswith("FAIL forge repo factory/ops readable by reconciler, who may not push") for line in bad), bad
        assert any(line.startswith("FAIL git") and "refuses pushes" in line and "write permission" in line for line in bad), bad
    finally:
        factory.forge.add_collaborator("factory/ops", "reconciler", "write")


def test_doctor_flags_a_token_in_the_ops_remote_url(factory):
    settings = factory.settings()
    leaky = factory.http_remote.replace("http://", f"http://reconciler:{factory.forge_token}@")
    code, lines = doctor(replace(settings, ops=replace(settings.ops, remote=leaky)))
    assert code == 1
    assert any(line.startswith("FAIL git") and "carries a password in its URL" in line for line in lines), lines
    assert factory.forge_token not in "\n".join(lines)
def test_a_dispatcher_token_without_default_passes_and_no_secret_value_is_read(factory):
    """Only ``default`` grants lookup-self and sys/capabilities-self (vault/policy.go default policy): a
    dispatcher token without it is still checked, by probes, and never by reading a real secret value."""
    from reconciler.jobspecs import DISPATCHER_POLICY

    token = factory.vault.create_token([DISPATCHER_POLICY], no_default_policy=True, display_name="reconciler")
    settings = factory.settings()
    before = len(factory.vault.calls)
    code, lines = doctor(replace(settings, vault=replace(settings.vault, token=token)))
    assert code == 0, "\n".join(lines)
    text = "\n".join(lines)
    assert "ok   vault token valid (no default policy" in text
    assert "ok   vault token role vault-runner holds what the jobspecs write" in text
    assert "sys/wrapping/lookup" not in text  # unauthenticated: no capability to ask for
    reads = [c.path for c in factory.vault.calls[before:] if c.method == "GET" and c.path.startswith("/v1/kv/data/")]
    assert reads and all(p.endswith("/doctor-probe-absent") for p in reads), reads


def test_a_token_role_without_its_globs_is_reported(factory):
    """A Vault < 1.9 drops allowed_policies_glob: the role then allows any non-root policy."""
    role = factory.vault.role("vault-runner")
    factory.vault.put_role("vault-runner", allowed_policies_glob=[], disallowed_policies_glob=[])
    try:
        code, lines = doctor(factory.settings())
    finally:
        factory.vault.put_role("vault-runner", **{k: role[k] for k in ("allowed_policies_glob", "disallowed_policies_glob")})
    assert code == 1
    (bad,) = failures(lines)
    assert "token role vault-runner differs from the jobspecs" in bad and "allowed_policies_glob" in bad
