"""Conformance of the Vault double with the Vault facts of CONTRACTS.md, through hvac.

One test (or a few) per bullet of the "Vault" section, named after it, plus the
double's own promises the reconciler and runner rely on: ACL evaluation, role
enforcement, single-use wrapping, expiry by the injected clock.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import hvac
import hvac.exceptions as hvac_exc
import pytest
import requests

from doubles.vault import DEFAULT_TTL, INVALID_WRAPPING_TOKEN, PERMISSION_DENIED, VaultDouble
from reconciler.local_cluster import configure_factory


@pytest.fixture
def vault() -> Iterator[VaultDouble]:
    double = VaultDouble(root_token="root-token", clock=lambda: 1_800_000_000.0)  # time moves by advance()
    double.start()
    yield double
    double.stop()


def client(vault: VaultDouble, token: str | None = "root-token") -> hvac.Client:
    return hvac.Client(url=vault.address, token=token or "", timeout=5)


def raw(vault: VaultDouble, method: str, path: str, token: str | None = "root-token", **kw: Any) -> requests.Response:
    headers = dict(kw.pop("headers", {}))
    if token:
        headers["X-Vault-Token"] = token
    return requests.request(method, f"{vault.address}/v1/{path}", headers=headers, timeout=5, **kw)


def put_role(c: hvac.Client, name: str, **fields: Any) -> None:
    """hvac's create_or_update_role lacks allowed_policies_glob/token_type/...: post the fields directly."""
    c.adapter.post(f"/v1/auth/token/roles/{name}", json=fields)


# --------------------------------------------------------------------------- auth, sealed, denied, missing


def test_auth_header_is_x_vault_token(vault: VaultDouble) -> None:
    me = client(vault).auth.token.lookup_self()["data"]
    assert me["policies"] == ["root"]
    call = vault.calls_to("GET", r"/v1/auth/token/lookup-self")[-1]
    assert call.header("X-Vault-Token") == "root-token"
    with pytest.raises(hvac_exc.Forbidden):
        client(vault, "not-a-token").auth.token.lookup_self()
    with pytest.raises(hvac_exc.Forbidden):
        client(vault, None).sys.list_acl_policies()


def test_sealed_is_503_vault_is_sealed(vault: VaultDouble) -> None:
    vault.put_secret("app/x", {"value": "v"})
    vault.sealed = True
    resp = raw(vault, "GET", "kv/data/app/x")
    assert resp.status_code == 503
    assert resp.json() == {"errors": ["Vault is sealed"]}
    with pytest.raises(hvac_exc.VaultDown, match="Vault is sealed"):
        client(vault).secrets.kv.v2.read_secret_version("app/x", mount_point="kv", raise_on_deleted_version=True)
    health = client(vault).sys.read_health_status(method="GET")
    assert health.status_code == 503 and health.json()["sealed"] is True
    assert client(vault).seal_status["sealed"] is True
    vault.sealed = False
    assert client(vault).sys.read_health_status(method="GET")["sealed"] is False


def test_denied_is_403_with_vaults_permission_denied_body(vault: VaultDouble) -> None:
    weak = vault.create_token(["nothing-here"])
    resp = raw(vault, "GET", "kv/data/app/x", token=weak)
    assert resp.status_code == 403
    assert resp.json() == {"errors": [PERMISSION_DENIED]}
    assert PERMISSION_DENIED == "1 error occurred:\n\t* permission denied\n\n"
    for bad in ("unknown-token", ""):
        resp = raw(vault, "GET", "sys/policies/acl", token=bad, params={"list": "true"})
        assert resp.status_code == 403 and resp.json() == {"errors": [PERMISSION_DENIED]}


def test_denied_for_revoked_and_expired_tokens(vault: VaultDouble) -> None:
    revoked = vault.create_token(["default"])
    client(vault, revoked).auth.token.revoke_self()
    expiring = vault.create_token(["default"], ttl=60)
    assert client(vault, expiring).auth.token.lookup_self()["data"]["ttl"] == 60
    vault.advance(61)
    for token in (revoked, expiring):
        resp = raw(vault, "GET", "auth/token/lookup-self", token=token)
        assert resp.status_code == 403 and resp.json() == {"errors": [PERMISSION_DENIED]}


def test_missing_path_is_404_with_empty_errors(vault: VaultDouble) -> None:
    for path in ("kv/data/nope", "kv/metadata/nope", "sys/policies/acl/nope"):
        resp = raw(vault, "GET", path)
        assert resp.status_code == 404, path
        assert resp.json() == {"errors": []}, path
    with pytest.raises(hvac_exc.InvalidPath):
        client(vault).secrets.kv.v2.read_secret_metadata("nope", mount_point="kv")


# --------------------------------------------------------------------------- KV v2


def test_kv_v2_data_holds_data_and_metadata(vault: VaultDouble) -> None:
    c = client(vault)
    written = c.secrets.kv.v2.create_or_update_secret("app/db", secret={"user": "u", "pw": "p"}, mount_point="kv")
    assert written["data"]["version"] == 1
    c.secrets.kv.v2.create_or_update_secret("app/db", secret={"user": "u2"}, mount_point="kv")
    got = c.secrets.kv.v2.read_secret_version("app/db", mount_point="kv", raise_on_deleted_version=True)["data"]
    assert got["data"] == {"user": "u2"}
    assert got["metadata"]["version"] == 2
    assert got["metadata"]["deletion_time"] == "" and got["metadata"]["destroyed"] is False
    first = c.secrets.kv.v2.read_secret_version("app/db", version=1, mount_point="kv", raise_on_deleted_version=True)
    assert first["data"]["data"] == {"user": "u", "pw": "p"}


def test_kv_v2_metadata_lists_with_LIST_or_get_list_true(vault: VaultDouble) -> None:
    for path in ("disinto/runner/GITHUB_TOKEN", "disinto/runner/NPM_TOKEN", "disinto/runner/mounts/ssh"):
        vault.put_secret(path, {"value": "x"})
    c = client(vault)
    by_list = c.secrets.kv.v2.list_secrets("disinto/runner", mount_point="kv")["data"]["keys"]
    by_get = c.list("kv/metadata/disinto/runner")["data"]["keys"]
    assert by_list == by_get == ["GITHUB_TOKEN", "NPM_TOKEN", "mounts/"]
    assert vault.calls_to("LIST", r"/v1/kv/metadata/disinto/runner/?")
    get_calls = vault.calls_to("GET", r"/v1/kv/metadata/disinto/runner/?")
    assert get_calls and get_calls[-1].arg("list", "").lower() == "true"
    assert c.list("kv/metadata/nothing-here") is None  # 404


def test_kv_v2_metadata_survives_deletion(vault: VaultDouble) -> None:
    c = client(vault)
    c.secrets.kv.v2.create_or_update_secret("app/key", secret={"value": "v"}, mount_point="kv")
    c.secrets.kv.v2.delete_latest_version_of_secret("app/key", mount_point="kv")
    meta = c.secrets.kv.v2.read_secret_metadata("app/key", mount_point="kv")["data"]
    assert meta["current_version"] == 1
    assert meta["versions"]["1"]["deletion_time"] != ""
    # The data read is a 404 that still carries the version's metadata, as Vault does.
    resp = raw(vault, "GET", "kv/data/app/key")
    assert resp.status_code == 404
    body = resp.json()
    assert body["data"]["data"] is None and body["data"]["metadata"]["deletion_time"] != ""
    shown = c.secrets.kv.v2.read_secret_version("app/key", mount_point="kv", raise_on_deleted_version=False)
    assert shown["data"]["metadata"]["version"] == 1
    with pytest.raises(hvac_exc.InvalidPath):
        c.secrets.kv.v2.read_secret_version("app/key", mount_point="kv", raise_on_deleted_version=True)


def _current_is_live(c: hvac.Client, path: str) -> bool:
    meta = c.secrets.kv.v2.read_secret_metadata(path, mount_point="kv")["data"]
    version = meta["versions"][str(meta["current_version"])]
    return version["deletion_time"] == "" and not version["destroyed"]


def test_kv_v2_secret_exists_only_if_current_version_not_deleted_nor_destroyed(vault: VaultDouble) -> None:
    c = client(vault)
    c.secrets.kv.v2.create_or_update_secret("s", secret={"value": "1"}, mount_point="kv")
    c.secrets.kv.v2.create_or_update_secret("s", secret={"value": "2"}, mount_point="kv")
    assert _current_is_live(c, "s")
    c.secrets.kv.v2.delete_secret_versions("s", versions=[2], mount_point="kv")
    assert not _current_is_live(c, "s")  # version 1 still live, but it is not current
    c.secrets.kv.v2.undelete_secret_versions("s", versions=[2], mount_point="kv")
    assert _current_is_live(c, "s")
    c.secrets.kv.v2.destroy_secret_versions("s", versions=[2], mount_point="kv")
    meta = c.secrets.kv.v2.read_secret_metadata("s", mount_point="kv")["data"]
    assert meta["versions"]["2"]["destroyed"] is True and meta["versions"]["2"]["deletion_time"] == ""
    assert not _current_is_live(c, "s")
    resp = raw(vault, "GET", "kv/data/s")
    assert resp.status_code == 404 and resp.json()["data"]["metadata"]["destroyed"] is True
    c.secrets.kv.v2.create_or_update_secret("s", secret={"value": "3"}, mount_point="kv")
    assert _current_is_live(c, "s")
    c.secrets.kv.v2.delete_metadata_and_all_versions("s", mount_point="kv")
    with pytest.raises(hvac_exc.InvalidPath):
        c.secrets.kv.v2.read_secret_metadata("s", mount_point="kv")


def test_kv_v2_factory_keeps_runner_secret_in_field_value(vault: VaultDouble) -> None:
    configure_factory(vault, {"GITHUB_TOKEN": "ghp_secret"}, {"ssh": {"id_ed25519": "KEY"}})
    got = client(vault).secrets.kv.v2.read_secret_version(
        "disinto/runner/GITHUB_TOKEN", mount_point="kv", raise_on_deleted_version=True
    )
    assert got["data"]["data"] == {"value": "ghp_secret"}
    mount = client(vault).secrets.kv.v2.read_secret_version(
        "disinto/runner/mounts/ssh", mount_point="kv", raise_on_deleted_version=True
    )
    assert mount["data"]["data"] == {"id_ed25519": "KEY"}


def test_kv_v2_check_and_set(vault: VaultDouble) -> None:
    c = client(vault)
    c.secrets.kv.v2.create_or_update_secret("cas", secret={"a": "1"}, cas=0, mount_point="kv")
    with pytest.raises(hvac_exc.InvalidRequest, match="check-and-set"):
        c.secrets.kv.v2.create_or_update_secret("cas", secret={"a": "2"}, cas=0, mount_point="kv")
    assert c.secrets.kv.v2.create_or_update_secret("cas", secret={"a": "2"}, cas=1, mount_point="kv")["data"][
        "version"
    ] == 2


# --------------------------------------------------------------------------- ACL policies


def test_acl_policy_get_is_404_when_missing_and_holds_the_text(vault: VaultDouble) -> None:
    c = client(vault)
    with pytest.raises(hvac_exc.InvalidPath):
        c.sys.read_acl_policy("runner-nope")
    text = 'path "kv/data/app/*" {\n  capabilities = ["read"]\n}\n'
    c.sys.create_or_update_acl_policy("app-read", text)
    got = c.sys.read_acl_policy("app-read")
    assert got["data"] == {"name": "app-read", "policy": text}
    assert got["policy"] == text  # sys endpoints repeat data at the top level
    assert "app-read" in c.sys.list_acl_policies()["data"]["keys"]
    c.sys.delete_acl_policy("app-read")
    with pytest.raises(hvac_exc.InvalidPath):
        c.sys.read_acl_policy("app-read")


def test_acl_policy_text_must_parse(vault: VaultDouble) -> None:
    c = client(vault)
    with pytest.raises(hvac_exc.InvalidRequest, match="failed to parse policy"):
        c.sys.create_or_update_acl_policy("broken", 'path "x" { capabilities = ["read"] ')
    with pytest.raises(hvac_exc.InvalidRequest, match="invalid capability"):
        c.sys.create_or_update_acl_policy("bad-cap", 'path "x" { capabilities = ["reed"] }')
    with pytest.raises(hvac_exc.InvalidRequest):
        c.sys.create_or_update_acl_policy("root", 'path "x" { capabilities = ["read"] }')


def test_vault_lower_cases_policy_names(vault: VaultDouble) -> None:
    c = client(vault)
    c.sys.create_or_update_acl_policy("runner-GITHUB_TOKEN", 'path "kv/data/x" { capabilities = ["read"] }')
    keys = c.sys.list_acl_policies()["data"]["keys"]
    assert "runner-github_token" in keys and "runner-GITHUB_TOKEN" not in keys
    assert c.sys.read_acl_policy("runner-GITHUB_TOKEN")["data"]["name"] == "runner-github_token"
    created = c.auth.token.create(policies=["runner-GITHUB_TOKEN"], no_default_policy=True)
    assert created["auth"]["policies"] == ["runner-github_token"]


def test_factory_has_one_policy_per_runner_secret_reading_exactly_that_path(vault: VaultDouble) -> None:
    configure_factory(vault, {"GITHUB_TOKEN": "ghp_1", "GITHUB_TOKEN2": "ghp_2", "NPM_TOKEN": "npm"})
    text = client(vault).sys.read_acl_policy("runner-GITHUB_TOKEN")["data"]["policy"]
    assert 'path "kv/data/disinto/runner/GITHUB_TOKEN"' in text
    runner = client(vault, vault.create_token(["runner-GITHUB_TOKEN"], no_default_policy=True))
    kv = runner.secrets.kv.v2
    assert kv.read_secret_version("disinto/runner/GITHUB_TOKEN", mount_point="kv", raise_on_deleted_version=True)[
        "data"
    ]["data"]["value"] == "ghp_1"
    for other in ("disinto/runner/GITHUB_TOKEN2", "disinto/runner/NPM_TOKEN"):
        with pytest.raises(hvac_exc.Forbidden):
            kv.read_secret_version(other, mount_point="kv", raise_on_deleted_version=True)
    with pytest.raises(hvac_exc.Forbidden):
        kv.read_secret_metadata("disinto/runner/GITHUB_TOKEN", mount_point="kv")
    with pytest.raises(hvac_exc.Forbidden):
        kv.list_secrets("disinto/runner", mount_point="kv")
    with pytest.raises(hvac_exc.Forbidden):
        kv.create_or_update_secret("disinto/runner/GITHUB_TOKEN", secret={"value": "evil"}, mount_point="kv")
    with pytest.raises(hvac_exc.Forbidden):
        runner.auth.token.lookup_self()  # no default policy either


# --------------------------------------------------------------------------- ACL evaluation


def test_acl_most_specific_rule_wins_with_globs_plus_and_deny(vault: VaultDouble) -> None:
    vault.put_policy(
        "mixed",
        """
        # comments are fine
        path "kv/data/team/*" { capabilities = ["read"] }
        path "kv/data/team/secret" { capabilities = ["deny"] }
        path "kv/data/+/shared" { capabilities = ["read", "create", "update"] }
        path "kv/data/team/admin*" { capabilities = ["create", "update"] }
        """,
    )
    for path in ("team/a", "team/secret", "team/admin-x", "other/shared", "team/shared", "other/private"):
        vault.put_secret(path, {"v": path})
    c = client(vault, vault.create_token(["mixed"]))
    kv = c.secrets.kv.v2

    def readable(path: str) -> bool:
        try:
            kv.read_secret_version(path, mount_point="kv", raise_on_deleted_version=True)
            return True
        except hvac_exc.Forbidden:
            return False

    assert readable("team/a")
    assert not readable("team/secret")  # exact deny beats the glob
    assert not readable("team/admin-x")  # the longer glob wins and grants no read
    assert readable("other/shared")  # + matches one segment
    assert readable("team/shared")
    assert not readable("other/private")
    kv.create_or_update_secret("other/shared", secret={"v": "new"}, mount_point="kv")
    with pytest.raises(hvac_exc.Forbidden):
        kv.create_or_update_secret("team/a", secret={"v": "new"}, mount_point="kv")


def test_acl_create_versus_update_follows_existence(vault: VaultDouble) -> None:
    vault.put_policy("create-only", 'path "kv/data/drop/*" { capabilities = ["create"] }')
    c = client(vault, vault.create_token(["create-only"]))
    c.secrets.kv.v2.create_or_update_secret("drop/a", secret={"v": "1"}, mount_point="kv")
    with pytest.raises(hvac_exc.Forbidden):
        c.secrets.kv.v2.create_or_update_secret("drop/a", secret={"v": "2"}, mount_point="kv")


def test_default_policy_allows_self_service_only(vault: VaultDouble) -> None:
    token = vault.create_token([])
    c = client(vault, token)
    me = c.auth.token.lookup_self()["data"]
    assert me["policies"] == ["default"]
    with pytest.raises(hvac_exc.Forbidden):
        c.sys.list_acl_policies()
    with pytest.raises(hvac_exc.Forbidden):
        c.auth.token.create(policies=["default"])
    c.auth.token.revoke_self()
    assert vault.token_record(token)["revoked"] is True


# --------------------------------------------------------------------------- token roles


ALL_ROLE_FIELDS = {
    "allowed_policies": ["runner-claim"],
    "allowed_policies_glob": ["runner-*"],
    "disallowed_policies": ["runner-forbidden"],
    "orphan": True,
    "renewable": False,
    "token_type": "service",
    "token_no_default_policy": True,
    "token_explicit_max_ttl": "2h",
    "token_num_uses": 0,
}


def test_token_role_accepts_the_contract_fields(vault: VaultDouble) -> None:
    c = client(vault)
    put_role(c, "vault-runner", **ALL_ROLE_FIELDS)
    role = c.auth.token.read_role("vault-runner")["data"]
    assert role["allowed_policies"] == ["runner-claim"]
    assert role["allowed_policies_glob"] == ["runner-*"]
    assert role["disallowed_policies"] == ["runner-forbidden"]
    assert role["orphan"] is True and role["renewable"] is False
    assert role["token_type"] == "service" and role["token_no_default_policy"] is True
    assert role["token_explicit_max_ttl"] == 7200 and role["token_num_uses"] == 0


def test_token_role_create_400_when_a_policy_is_outside_the_allowed_set(vault: VaultDouble) -> None:
    c = client(vault)
    put_role(c, "vault-runner", **ALL_ROLE_FIELDS)
    ok = c.auth.token.create(role_name="vault-runner", policies=["runner-GITHUB_TOKEN", "runner-claim"])
    assert ok["auth"]["policies"] == ["runner-claim", "runner-github_token"]
    with pytest.raises(hvac_exc.InvalidRequest, match="must be subset of the role's allowed policies"):
        c.auth.token.create(role_name="vault-runner", policies=["runner-GITHUB_TOKEN", "admin"])
    with pytest.raises(hvac_exc.InvalidRequest, match='token policy "runner-forbidden" is disallowed by this role'):
        c.auth.token.create(role_name="vault-runner", policies=["runner-forbidden"])
    with pytest.raises(hvac_exc.InvalidRequest, match="unknown role"):
        c.auth.token.create(role_name="no-such-role", policies=["runner-x"])
    assert not [t for t in vault.live_tokens() if t["role"] == "vault-runner" and "admin" in t["policies"]]


def test_token_role_caller_needs_update_on_create_role_path(vault: VaultDouble) -> None:
    put_role(client(vault), "vault-runner", **ALL_ROLE_FIELDS)
    put_role(client(vault), "other-role", allowed_policies_glob=["*"])
    vault.put_policy("read-only-create", 'path "auth/token/create/vault-runner" { capabilities = ["read"] }')
    vault.put_policy("may-mint", 'path "auth/token/create/vault-runner" { capabilities = ["update"] }')
    weak = client(vault, vault.create_token(["read-only-create"]))
    with pytest.raises(hvac_exc.Forbidden):
        weak.auth.token.create(role_name="vault-runner", policies=["runner-x"])
    minter = client(vault, vault.create_token(["may-mint"]))
    # The role, not the caller's own policies, bounds the new token's policies.
    made = minter.auth.token.create(role_name="vault-runner", policies=["runner-x"])
    assert made["auth"]["policies"] == ["runner-x"]
    with pytest.raises(hvac_exc.Forbidden):
        minter.auth.token.create(role_name="other-role", policies=["anything"])
    with pytest.raises(hvac_exc.Forbidden):
        minter.auth.token.create(policies=["runner-x"])  # auth/token/create itself is not granted


def test_tokens_get_default_policy_unless_role_or_request_says_no(vault: VaultDouble) -> None:
    c = client(vault)
    put_role(c, "plain", allowed_policies_glob=["runner-*"])
    put_role(c, "strict", allowed_policies_glob=["runner-*"], token_no_default_policy=True)
    assert c.auth.token.create(role_name="plain", policies=["runner-a"])["auth"]["policies"] == [
        "default",
        "runner-a",
    ]
    assert c.auth.token.create(role_name="plain", policies=["runner-a"], no_default_policy=True)["auth"][
        "policies"
    ] == ["runner-a"]
    assert c.auth.token.create(role_name="strict", policies=["runner-a"])["auth"]["policies"] == ["runner-a"]
    assert c.auth.token.create(policies=["runner-a"])["auth"]["policies"] == ["default", "runner-a"]


def test_hvac_create_sends_renewable_true_and_no_default_policy_false_by_default(vault: VaultDouble) -> None:
    c = client(vault)
    put_role(c, "plain", allowed_policies_glob=["runner-*"])
    made = c.auth.token.create(role_name="plain", policies=["runner-a"])
    body = json.loads(vault.calls_to("POST", r"/v1/auth/token/create/plain")[-1].body)
    assert body["renewable"] is True and body["no_default_policy"] is False
    info = c.auth.token.lookup_accessor(made["auth"]["accessor"])["data"]
    assert info["renewable"] is True
    assert info["explicit_max_ttl"] == 0
    assert info["creation_ttl"] == DEFAULT_TTL == 32 * 24 * 3600  # up to the mount's maximum
    assert "default" in info["policies"]


def test_token_role_forces_orphan_non_renewable_and_caps_ttl(vault: VaultDouble) -> None:
    c = client(vault)
    put_role(c, "vault-runner", **ALL_ROLE_FIELDS)
    made = c.auth.token.create(
        role_name="vault-runner", policies=["runner-a"], ttl="10h", explicit_max_ttl="5h", renewable=True
    )
    info = c.auth.token.lookup_accessor(made["auth"]["accessor"])["data"]
    assert info["orphan"] is True and info["renewable"] is False and info["type"] == "service"
    assert info["explicit_max_ttl"] == 7200  # the lesser of the role's 2h and the request's 5h
    assert info["creation_ttl"] == 7200
    assert info["path"] == "auth/token/create/vault-runner"


def test_token_role_type_and_num_uses(vault: VaultDouble) -> None:
    c = client(vault)
    put_role(c, "limited", allowed_policies_glob=["runner-*"], token_num_uses=2)
    token = c.auth.token.create(role_name="limited", policies=["runner-a"])["auth"]["client_token"]
    user = client(vault, token)
    assert user.auth.token.lookup_self()["data"]["num_uses"] == 1  # this lookup used one
    user.auth.token.lookup_self()
    with pytest.raises(hvac_exc.Forbidden):
        user.auth.token.lookup_self()
    put_role(c, "service-only", allowed_policies_glob=["runner-*"], token_type="service")
    with pytest.raises(hvac_exc.InvalidRequest):
        c.auth.token.create(role_name="service-only", policies=["runner-a"], type="batch")


def test_batch_tokens_have_no_accessor(vault: VaultDouble) -> None:
    c = client(vault)
    put_role(c, "batchy", allowed_policies_glob=["runner-*"], token_type="batch")
    made = c.auth.token.create(role_name="batchy", policies=["runner-a"])["auth"]
    assert made["accessor"] == "" and made["token_type"] == "batch"
    assert made["client_token"].startswith("hvb.") and made["renewable"] is False
    with pytest.raises(hvac_exc.InvalidRequest):
        c.auth.token.lookup_accessor(made["accessor"])
    with pytest.raises(hvac_exc.InvalidRequest):
        c.auth.token.revoke_accessor(made["accessor"])
    service = c.auth.token.create(policies=["runner-a"])["auth"]
    assert service["accessor"] and service["token_type"] == "service"
    assert c.auth.token.lookup_accessor(service["accessor"])["data"]["type"] == "service"


def test_child_token_policies_must_be_subset_of_parent(vault: VaultDouble) -> None:
    vault.put_policy("minter", 'path "auth/token/create" { capabilities = ["update"] }')
    parent = client(vault, vault.create_token(["minter", "app"]))
    child = parent.auth.token.create(policies=["app"])["auth"]
    assert child["policies"] == ["app", "default"] and child["orphan"] is False
    with pytest.raises(hvac_exc.InvalidRequest, match="child policies must be subset of parent"):
        parent.auth.token.create(policies=["admin"])
    with pytest.raises(hvac_exc.InvalidRequest, match="orphan"):
        parent.auth.token.create(policies=["app"], no_parent=True)


def test_revoking_a_parent_revokes_its_children_not_orphans(vault: VaultDouble) -> None:
    c = client(vault)
    put_role(c, "orphans", allowed_policies_glob=["*"], orphan=True)
    parent_token = c.auth.token.create(policies=["minter"])["auth"]["client_token"]
    vault.put_policy("minter", 'path "auth/token/create*" { capabilities = ["update"] }')
    parent = client(vault, parent_token)
    child = parent.auth.token.create(policies=["minter"])["auth"]
    orphan = parent.auth.token.create(role_name="orphans", policies=["x"])["auth"]
    parent.auth.token.revoke_self()
    assert vault.token_by_accessor(child["accessor"])["revoked"] is True
    assert vault.token_by_accessor(orphan["accessor"])["revoked"] is False


# --------------------------------------------------------------------------- response wrapping


def _runner_role(vault: VaultDouble) -> hvac.Client:
    c = client(vault)
    put_role(c, "vault-runner", **ALL_ROLE_FIELDS)
    return c


def test_wrap_ttl_header_returns_wrap_info_instead_of_the_token(vault: VaultDouble) -> None:
    c = _runner_role(vault)
    reply = c.auth.token.create(role_name="vault-runner", policies=["runner-a"], ttl="10m", wrap_ttl="300s")
    assert reply["auth"] is None and reply["data"] is None
    info = reply["wrap_info"]
    assert set(info) == {"token", "accessor", "ttl", "creation_time", "creation_path", "wrapped_accessor"}
    assert info["ttl"] == 300
    assert info["creation_path"] == "auth/token/create/vault-runner"
    assert vault.calls_to("POST", r"/v1/auth/token/create/vault-runner")[-1].header("X-Vault-Wrap-TTL") == "300s"
    inner = vault.token_by_accessor(info["wrapped_accessor"])
    assert inner is not None and inner["policies"] == ["runner-a"] and inner["live"]
    # A bare number of seconds works too.
    resp = raw(vault, "POST", "auth/token/create/vault-runner", json={"policies": ["runner-a"]},
               headers={"X-Vault-Wrap-TTL": "120"})
    assert resp.json()["wrap_info"]["ttl"] == 120


def test_wrapping_lookup_shows_creation_path_and_ttl_without_using_it(vault: VaultDouble) -> None:
    c = _runner_role(vault)
    info = c.auth.token.create(role_name="vault-runner", policies=["runner-a"], wrap_ttl="300s")["wrap_info"]
    for _ in range(2):
        looked = c.adapter.post("/v1/sys/wrapping/lookup", json={"token": info["token"]})["data"]
        assert looked["creation_path"] == "auth/token/create/vault-runner"
        assert looked["creation_ttl"] == 300 and looked["creation_time"]
    # The runner can look up its own wrapping token without any other token.
    looked = client(vault, info["token"]).adapter.post("/v1/sys/wrapping/lookup", json={})["data"]
    assert looked["creation_path"] == "auth/token/create/vault-runner"
    unwrapped = client(vault, info["token"]).sys.unwrap()
    assert unwrapped["auth"]["accessor"] == info["wrapped_accessor"]


def test_unwrap_returns_the_inner_response_once_then_400(vault: VaultDouble) -> None:
    c = _runner_role(vault)
    info = c.auth.token.create(role_name="vault-runner", policies=["runner-a"], wrap_ttl="300s")["wrap_info"]
    runner = client(vault, info["token"])
    inner = runner.sys.unwrap()["auth"]
    assert inner["policies"] == ["runner-a"] and inner["accessor"] == info["wrapped_accessor"]
    assert inner["client_token"].startswith("hvs.")
    assert vault.token_record(inner["client_token"])["live"] is True
    with pytest.raises(hvac_exc.InvalidRequest, match=INVALID_WRAPPING_TOKEN):
        runner.sys.unwrap()
    with pytest.raises(hvac_exc.InvalidRequest, match=INVALID_WRAPPING_TOKEN):
        c.sys.unwrap(info["token"])  # the body form, with another token
    with pytest.raises(hvac_exc.InvalidRequest, match=INVALID_WRAPPING_TOKEN):
        c.adapter.post("/v1/sys/wrapping/lookup", json={"token": info["token"]})
    assert [w["used"] for w in vault.wrapping_tokens()] == [True]


def test_unwrap_with_body_token_by_another_token(vault: VaultDouble) -> None:
    c = _runner_role(vault)
    info = c.auth.token.create(role_name="vault-runner", policies=["runner-a"], wrap_ttl=60)["wrap_info"]
    other = client(vault, vault.create_token([]))  # default policy allows sys/wrapping/unwrap
    assert other.sys.unwrap(info["token"])["auth"]["accessor"] == info["wrapped_accessor"]


def test_wrapping_token_expires_after_its_ttl(vault: VaultDouble) -> None:
    c = _runner_role(vault)
    info = c.auth.token.create(role_name="vault-runner", policies=["runner-a"], wrap_ttl="30s")["wrap_info"]
    vault.advance(31)
    with pytest.raises(hvac_exc.InvalidRequest, match=INVALID_WRAPPING_TOKEN):
        client(vault, info["token"]).sys.unwrap()
    assert vault.wrapping_tokens()[0]["expired"] is True and vault.wrapping_tokens()[0]["used"] is False
    # The inner token is independent of its wrapping: it lives until its own TTL.
    assert vault.token_by_accessor(info["wrapped_accessor"])["live"] is True


def test_wrapping_token_is_good_for_nothing_else(vault: VaultDouble) -> None:
    c = _runner_role(vault)
    info = c.auth.token.create(role_name="vault-runner", policies=["runner-a"], wrap_ttl="30s")["wrap_info"]
    with pytest.raises(hvac_exc.Forbidden):
        client(vault, info["token"]).auth.token.lookup_self()


# --------------------------------------------------------------------------- accessors


def test_lookup_accessor_shows_policies_ttl_meta_num_uses(vault: VaultDouble) -> None:
    c = _runner_role(vault)
    made = c.auth.token.create(
        role_name="vault-runner",
        policies=["runner-a"],
        ttl="600s",
        meta={"run_id": "r-1"},
        num_uses=3,
        display_name="run r-1",
    )["auth"]
    data = c.auth.token.lookup_accessor(made["accessor"])["data"]
    assert data["policies"] == ["runner-a"]
    assert data["ttl"] == 600
    assert data["meta"] == {"run_id": "r-1"}
    assert data["num_uses"] == 3
    assert data["id"] == ""  # the token itself is not shown
    assert data["display_name"] == "token-run-r-1"
    assert data["accessor"] == made["accessor"]
    vault.advance(100)
    assert c.auth.token.lookup_accessor(made["accessor"])["data"]["ttl"] == 500
    with pytest.raises(hvac_exc.InvalidRequest, match="invalid accessor"):
        c.auth.token.lookup_accessor("no-such-accessor")


def test_revoke_accessor_is_204(vault: VaultDouble) -> None:
    made = client(vault).auth.token.create(policies=["x"])["auth"]
    resp = raw(vault, "POST", "auth/token/revoke-accessor", json={"accessor": made["accessor"]})
    assert resp.status_code == 204 and resp.content == b""
    record = vault.token_by_accessor(made["accessor"])
    assert record["revoked"] is True and record["live"] is False
    with pytest.raises(hvac_exc.Forbidden):
        client(vault, made["client_token"]).auth.token.lookup_self()
    # A gone token is unknown: current Vault answers 200 with a warning (vault/token_store.go
    # handleUpdateRevokeAccessor), not an error.
    again = raw(vault, "POST", "auth/token/revoke-accessor", json={"accessor": made["accessor"]})
    assert again.status_code == 200 and again.json()["warnings"] == ["No token found with this accessor"]
    assert again.json()["data"] is None
    unknown = raw(vault, "POST", "auth/token/revoke-accessor", json={"accessor": "no-such-accessor"})
    assert unknown.status_code == 200 and unknown.json()["warnings"] == ["No token found with this accessor"]


def test_revoke_accessor_of_an_expired_unreaped_token_is_400_token_not_found(vault: VaultDouble) -> None:
    """vault/token_store.go handleUpdateRevokeAccessor: lookupByAccessor(tainted=true) finds the entry,
    then revocation of an expired token fails "token not found" until the expiration manager reaps it."""
    vault.reap_delay = 30
    made = client(vault).auth.token.create(policies=["x"], ttl="60s")["auth"]
    vault.advance(61)
    resp = raw(vault, "POST", "auth/token/revoke-accessor", json={"accessor": made["accessor"]})
    assert resp.status_code == 400 and resp.json() == {"errors": ["token not found"]}
    vault.advance(30)  # reaped
    resp = raw(vault, "POST", "auth/token/revoke-accessor", json={"accessor": made["accessor"]})
    assert resp.status_code == 200 and resp.json()["warnings"] == ["No token found with this accessor"]


def test_lookup_accessor_answers_for_a_tainted_wrapping_token(vault: VaultDouble) -> None:
    """vault/token_store.go lookupInternal(..., tainted=true), vault/wrapping.go: a just-unwrapped
    wrapping token awaits lazy revocation and lookup-accessor shows it with num_uses -1."""
    vault.reap_delay = 5
    c = client(vault)
    wrapped = c.auth.token.create(policies=["x"], wrap_ttl="300s")["wrap_info"]
    assert c.auth.token.lookup_accessor(wrapped["accessor"])["data"]["num_uses"] == 1
    unwrap = raw(vault, "POST", "sys/wrapping/unwrap", token=wrapped["token"])
    assert unwrap.status_code == 200
    tainted = c.auth.token.lookup_accessor(wrapped["accessor"])["data"]
    assert tainted["num_uses"] == -1 and tainted["ttl"] > 0
    again = raw(vault, "POST", "sys/wrapping/unwrap", token=wrapped["token"])
    assert again.status_code == 400 and again.json() == {"errors": [INVALID_WRAPPING_TOKEN]}
    vault.advance(5)
    with pytest.raises(hvac_exc.InvalidRequest, match="invalid accessor"):
        c.auth.token.lookup_accessor(wrapped["accessor"])


def test_lookup_accessor_answers_for_an_expired_unreaped_token_with_ttl_not_positive(vault: VaultDouble) -> None:
    """vault/token_store.go lookupInternal(..., tainted=true): an expired token not yet reaped shows ttl <= 0."""
    vault.reap_delay = 10
    c = client(vault)
    wrapped = c.auth.token.create(policies=["x"], wrap_ttl="60s")["wrap_info"]
    vault.advance(62)
    data = c.auth.token.lookup_accessor(wrapped["accessor"])["data"]
    assert data["ttl"] <= 0
    vault.advance(10)
    with pytest.raises(hvac_exc.InvalidRequest, match="invalid accessor"):
        c.auth.token.lookup_accessor(wrapped["accessor"])


def test_losing_concurrent_unwrap_may_get_500_under_the_switch(vault: VaultDouble) -> None:
    """vault/wrapping.go: the loser of two concurrent unwraps may see 500 "internal error" (switch on)."""
    vault.racing_unwrap_500 = True
    wrapped = client(vault).auth.token.create(policies=["x"], wrap_ttl="300s")["wrap_info"]
    assert raw(vault, "POST", "sys/wrapping/unwrap", token=wrapped["token"]).status_code == 200
    loser = raw(vault, "POST", "sys/wrapping/unwrap", token=wrapped["token"])
    assert loser.status_code == 500 and loser.json() == {"errors": ["internal error"]}
    vault.racing_unwrap_500 = False
    late = raw(vault, "POST", "sys/wrapping/unwrap", token=wrapped["token"])
    assert late.status_code == 400 and late.json() == {"errors": [INVALID_WRAPPING_TOKEN]}


def test_expired_tokens_are_gone_by_accessor(vault: VaultDouble) -> None:
    made = client(vault).auth.token.create(policies=["x"], ttl="60s")["auth"]
    vault.advance(60)
    with pytest.raises(hvac_exc.InvalidRequest, match="invalid accessor"):
        client(vault).auth.token.lookup_accessor(made["accessor"])
    record = vault.token_by_accessor(made["accessor"])
    assert record["expired"] is True and record["revoked"] is False


# --------------------------------------------------------------------------- factory bootstrap


def test_configure_factory_dispatcher_can_do_its_job_and_no_more(vault: VaultDouble) -> None:
    token = configure_factory(vault, {"GITHUB_TOKEN": "ghp"}, {"ssh": {"id": "k"}})
    d = client(vault, token)
    assert d.secrets.kv.v2.read_secret_metadata("disinto/runner/GITHUB_TOKEN", mount_point="kv")["data"][
        "current_version"
    ] == 1
    with pytest.raises(hvac.exceptions.Forbidden):  # the dispatcher never lists: it asks for named secrets
        d.secrets.kv.v2.list_secrets("disinto/runner", mount_point="kv")
    assert d.sys.read_acl_policy("runner-mount-ssh")["data"]["name"] == "runner-mount-ssh"
    made = d.auth.token.create(role_name="vault-runner", policies=["runner-GITHUB_TOKEN"], wrap_ttl="60s")
    accessor = made["wrap_info"]["wrapped_accessor"]
    assert d.auth.token.lookup_accessor(accessor)["data"]["policies"] == ["runner-github_token"]
    d.auth.token.revoke_accessor(accessor)
    with pytest.raises(hvac_exc.Forbidden):
        d.auth.token.create(policies=["runner-GITHUB_TOKEN"])
    with pytest.raises(hvac_exc.Forbidden):
        d.sys.read_acl_policy("reconciler-dispatcher")
    with pytest.raises(hvac_exc.Forbidden):
        d.secrets.kv.v2.create_or_update_secret("disinto/runner/GITHUB_TOKEN", secret={"value": "x"}, mount_point="kv")
    with pytest.raises(hvac_exc.InvalidRequest, match="must be subset"):
        d.auth.token.create(role_name="vault-runner", policies=["reconciler-dispatcher"])


def test_configure_factory_claim_and_mount_policies(vault: VaultDouble) -> None:
    configure_factory(vault, {"GITHUB_TOKEN": "ghp"}, {"ssh": {"id_ed25519": "k"}})
    claim = client(vault, vault.create_token(["runner-claim"], no_default_policy=True)).secrets.kv.v2
    with pytest.raises(hvac_exc.Forbidden):
        claim.read_secret_version("disinto/runner/GITHUB_TOKEN", mount_point="kv", raise_on_deleted_version=True)
    with pytest.raises(hvac_exc.Forbidden):
        claim.read_secret_version("disinto/runner/mounts/ssh", mount_point="kv", raise_on_deleted_version=True)
    ssh = client(vault, vault.create_token(["runner-mount-ssh"], no_default_policy=True)).secrets.kv.v2
    assert ssh.read_secret_version("disinto/runner/mounts/ssh", mount_point="kv", raise_on_deleted_version=True)[
        "data"
    ]["data"] == {"id_ed25519": "k"}
    with pytest.raises(hvac_exc.Forbidden):
        ssh.read_secret_version("disinto/runner/GITHUB_TOKEN", mount_point="kv", raise_on_deleted_version=True)
    role = vault.role("vault-runner")
    assert role is not None
    assert role["allowed_policies_glob"] == ["runner-*"] and role["orphan"] is True
    assert role["renewable"] is False and role["token_type"] == "service" and role["token_no_default_policy"] is True


# --------------------------------------------------------------------------- KV delete_version_after (rev. 2)


def test_kv_config_delete_version_after_stamps_a_future_deletion_time_and_the_data_still_reads(vault: VaultDouble) -> None:
    """vault-plugin-secrets-kv path_config.go (kv/config), path_data.go (write stamps deletion_time =
    creation + delete_version_after; a version reads until that time), delete_version_after.go."""
    c = client(vault)
    resp = raw(vault, "POST", "kv/config", json={"delete_version_after": "720h"})
    assert resp.status_code == 204
    assert raw(vault, "GET", "kv/config").json()["data"]["delete_version_after"] == "720h0m0s"
    c.secrets.kv.v2.create_or_update_secret("disinto/runner/A", secret={"value": "a"}, mount_point="kv")
    read = c.secrets.kv.v2.read_secret_version("disinto/runner/A", mount_point="kv", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"value": "a"}
    assert read["data"]["metadata"]["deletion_time"] != ""  # in the future, yet readable
    meta = c.secrets.kv.v2.read_secret_metadata("disinto/runner/A", mount_point="kv")["data"]
    assert meta["versions"]["1"]["deletion_time"] == read["data"]["metadata"]["deletion_time"]
    vault.advance(720 * 3600)
    gone = raw(vault, "GET", "kv/data/disinto/runner/A")
    assert gone.status_code == 404 and gone.json()["data"]["metadata"]["deletion_time"] != ""


def test_kv_key_delete_version_after_takes_the_smaller_non_zero_of_mount_and_key(vault: VaultDouble) -> None:
    """vault-plugin-secrets-kv delete_version_after.go deletionTime: the minimum non-zero of mount and key."""
    c = client(vault)
    raw(vault, "POST", "kv/config", json={"delete_version_after": "720h"})
    raw(vault, "POST", "kv/metadata/disinto/runner/B", json={"delete_version_after": "1h"})
    assert c.secrets.kv.v2.read_secret_metadata("disinto/runner/B", mount_point="kv")["data"]["delete_version_after"] == "1h0m0s"
    c.secrets.kv.v2.create_or_update_secret("disinto/runner/B", secret={"value": "b"}, mount_point="kv")
    vault.advance(3599)
    assert raw(vault, "GET", "kv/data/disinto/runner/B").status_code == 200
    vault.advance(1)
    assert raw(vault, "GET", "kv/data/disinto/runner/B").status_code == 404


# --------------------------------------------------------------------------- token roles (rev. 2)


def test_role_default_policy_rules_apply_only_to_roles_with_lists(vault: VaultDouble) -> None:
    """vault/token_store.go handleCreateCommon: default is added unless the request says
    no_default_policy or - only for a role with allowed/disallowed lists - the role says
    token_no_default_policy or disallows default (literally or by glob)."""
    c = client(vault)
    put_role(c, "plain", token_no_default_policy=True)  # no lists: the role's setting does not drop default
    assert c.auth.token.create(role_name="plain", policies=["x"])["auth"]["policies"] == ["default", "x"]
    assert c.auth.token.create(role_name="plain", policies=["x"], no_default_policy=True)["auth"]["policies"] == ["x"]
    put_role(c, "listed", allowed_policies_glob=["x*"], token_no_default_policy=True)
    assert c.auth.token.create(role_name="listed", policies=["x"])["auth"]["policies"] == ["x"]
    put_role(c, "globbed", allowed_policies_glob=["x*"], disallowed_policies_glob=["default"])
    assert c.auth.token.create(role_name="globbed", policies=["x"])["auth"]["policies"] == ["x"]
    put_role(c, "listed-default", allowed_policies_glob=["x*"])
    assert c.auth.token.create(role_name="listed-default", policies=["x"])["auth"]["policies"] == ["default", "x"]


def test_token_roles_have_no_token_ttl_and_ignore_unknown_fields_with_a_warning(vault: VaultDouble) -> None:
    """vault/token_store.go: token roles take only token_bound_cidrs, token_explicit_max_ttl, token_period,
    token_type, token_no_default_policy, token_num_uses of the tokenutil fields; others are ignored (warning)."""
    resp = raw(vault, "POST", "auth/token/roles/r", json={"allowed_policies": ["x"], "token_ttl": "1h", "token_max_ttl": "2h", "bogus": 1})
    assert resp.status_code == 200
    assert resp.json()["warnings"] == ["Endpoint ignored these unrecognized parameters: [bogus token_max_ttl token_ttl]"]
    role = client(vault).adapter.get("/v1/auth/token/roles/r")["data"]
    assert "token_ttl" not in role and "token_max_ttl" not in role and "bogus" not in role
    assert raw(vault, "POST", "auth/token/roles/r2", json={"allowed_policies": ["x"]}).status_code == 204


def test_wrapping_lookup_is_unauthenticated(vault: VaultDouble) -> None:
    """vault/logical_system.go PathsSpecial Unauthenticated, vault/wrapping.go: sys/wrapping/lookup needs no token at all."""
    info = client(vault).auth.token.create(policies=["x"], wrap_ttl="300s")["wrap_info"]
    resp = raw(vault, "POST", "sys/wrapping/lookup", token=None, json={"token": info["token"]})
    assert resp.status_code == 200 and resp.json()["data"]["creation_ttl"] == 300
    bad = raw(vault, "POST", "sys/wrapping/lookup", token=None, json={"token": "hvs.nothing"})
    assert bad.status_code == 400 and bad.json() == {"errors": [INVALID_WRAPPING_TOKEN]}
