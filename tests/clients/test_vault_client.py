"""VaultClient against the Vault double: the verbs the reconciler uses, and its errors."""

from __future__ import annotations

import json
import socket
from typing import Iterator

import hvac
import hvac.exceptions as hvac_exc
import pytest

from reconciler.clients.errors import NotFoundError, PermanentError, TransientError
from reconciler.clients.vault import VaultClient, WrappedClaim
from doubles.vault import VaultDouble
from reconciler.local_cluster import configure_factory
from reconciler.settings import VaultSettings

SECRETS = {"GITHUB_TOKEN": "ghp_live_value", "NPM_TOKEN": "npm_live_value"}
NOW = 1_800_000_000.0


@pytest.fixture
def vault() -> Iterator[VaultDouble]:
    double = VaultDouble(root_token="root-token", clock=lambda: NOW)
    double.start()
    yield double
    double.stop()


@pytest.fixture
def dispatcher_token(vault: VaultDouble) -> str:
    return configure_factory(vault, SECRETS, {"ssh": {"id_ed25519": "PRIVATE KEY"}})


def make_client(vault: VaultDouble, token: str | None, **kw: float) -> VaultClient:
    settings = VaultSettings(addr=vault.address, token=token, timeout=float(kw.pop("timeout", 5.0)))
    kw.setdefault("clock", vault.now)  # type: ignore[arg-type]  # KV deletion times are compared on the double's clock
    return VaultClient(settings, backoff=0.01, **kw)  # type: ignore[arg-type]


@pytest.fixture
def vc(vault: VaultDouble, dispatcher_token: str) -> VaultClient:
    return make_client(vault, dispatcher_token)


def mint(vc: VaultClient, policies: list[str], **kw: object) -> WrappedClaim:
    args: dict[str, object] = dict(
        ttl=900, explicit_max_ttl=4500, wrap_ttl=600, meta={"run_id": "run-1", "attempt": "1"}, display_name="run-1"
    )
    args.update(kw)
    return vc.mint_claim(policies, **args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- policies and secrets


def test_policy_exists_is_case_insensitive(vc: VaultClient) -> None:
    assert vc.policy_exists("runner-GITHUB_TOKEN")
    assert vc.policy_exists("runner-github_token")
    assert vc.policy_exists("runner-claim")
    assert not vc.policy_exists("runner-DOCKER_HUB_TOKEN")


def test_policy_text(vc: VaultClient) -> None:
    text = vc.policy_text("runner-NPM_TOKEN")
    assert text is not None and 'path "kv/data/disinto/runner/NPM_TOKEN"' in text
    assert vc.policy_text("runner-missing") is None


def test_secret_present_reads_metadata_only(vault: VaultDouble, vc: VaultClient) -> None:
    assert vc.secret_present("GITHUB_TOKEN")
    assert not vc.secret_present("DOCKER_HUB_TOKEN")
    assert not vault.calls_to("GET", r"/v1/kv/data/.*")  # no secret value crossed the wire
    assert vault.calls_to("GET", r"/v1/kv/metadata/disinto/runner/GITHUB_TOKEN")


def test_secret_present_false_when_current_version_deleted_or_destroyed(vault: VaultDouble, vc: VaultClient) -> None:
    vault.delete_secret("disinto/runner/GITHUB_TOKEN")
    assert not vc.secret_present("GITHUB_TOKEN")
    vault.put_secret("disinto/runner/GITHUB_TOKEN", {"value": "v2"})
    assert vc.secret_present("GITHUB_TOKEN")
    vault.destroy_secret("disinto/runner/GITHUB_TOKEN")
    assert not vc.secret_present("GITHUB_TOKEN")


def test_mount_present(vault: VaultDouble, vc: VaultClient) -> None:
    assert vc.mount_present("ssh")
    assert not vc.mount_present("gpg")
    vault.delete_secret("disinto/runner/mounts/ssh")
    assert not vc.mount_present("ssh")


def test_invalid_names_are_refused_before_any_call(vault: VaultDouble, vc: VaultClient) -> None:
    before = len(vault.calls)
    for bad in ("", "../x", "a/b", ".."):
        with pytest.raises(PermanentError):
            vc.secret_present(bad)
    assert len(vault.calls) == before


def test_secret_values_for_redaction(vault: VaultDouble, vc: VaultClient) -> None:
    assert vc.secret_values(["GITHUB_TOKEN", "NPM_TOKEN"]) == SECRETS
    assert vc.secret_values([]) == {}
    vault.delete_secret("disinto/runner/NPM_TOKEN")
    with pytest.raises(NotFoundError) as err:
        vc.secret_values(["GITHUB_TOKEN", "NPM_TOKEN"])
    assert "NPM_TOKEN" in str(err.value) and "ghp_live_value" not in str(err.value)
    vault.put_secret("disinto/runner/NPM_TOKEN", {"token": "wrong field"})
    with pytest.raises(PermanentError, match="field 'value'"):
        vc.secret_values(["NPM_TOKEN"])


# --------------------------------------------------------------------------- minting claims


def test_mint_claim_through_the_role(vault: VaultDouble, vc: VaultClient) -> None:
    claim = mint(vc, ["runner-GITHUB_TOKEN", "runner-NPM_TOKEN"])
    assert claim.creation_path == "auth/token/create/vault-runner"
    assert claim.ttl == 600
    assert claim.created_at == "2027-01-15T08:00:00Z"
    token = vault.token_by_accessor(claim.token_accessor)
    assert token is not None
    assert token["policies"] == ["runner-github_token", "runner-npm_token"]  # exactly these, lower-cased
    assert "default" not in token["policies"]
    assert token["renewable"] is False
    assert token["orphan"] is True
    assert token["type"] == "service"
    assert token["explicit_max_ttl"] == 4500
    assert token["ttl"] == 900
    assert token["role"] == "vault-runner"
    assert token["meta"] == {"run_id": "run-1", "attempt": "1"}
    assert token["display_name"] == "token-run-1"
    wrapping = vault.wrapping_tokens()
    assert [w["token"] for w in wrapping] == [claim.wrapping_token]
    assert wrapping[0]["accessor"] == claim.wrapping_accessor and wrapping[0]["used"] is False


def test_mint_claim_overrides_hvacs_defaults_on_the_wire(vault: VaultDouble, vc: VaultClient) -> None:
    mint(vc, ["runner-claim"])
    call = vault.calls_to("POST", r"/v1/auth/token/create/vault-runner")[-1]
    body = json.loads(call.body)
    assert body["renewable"] is False
    assert body["no_default_policy"] is True
    assert body["explicit_max_ttl"] == "4500s" and body["ttl"] == "900s"
    assert body["policies"] == ["runner-claim"]
    assert call.header("X-Vault-Wrap-TTL") == "600s"


def test_mint_claim_runner_claim_only(vault: VaultDouble, vc: VaultClient) -> None:
    claim = mint(vc, ["runner-claim"])
    token = vault.token_by_accessor(claim.token_accessor)
    assert token is not None and token["policies"] == ["runner-claim"]


def test_claim_as_the_runner_sees_it(vault: VaultDouble, vc: VaultClient) -> None:
    claim = mint(vc, ["runner-GITHUB_TOKEN"])
    runner = hvac.Client(url=vault.address, token=claim.wrapping_token)
    assert vc.wrapping_lookup(claim.wrapping_token)["creation_path"] == "auth/token/create/vault-runner"
    inner = runner.sys.unwrap()["auth"]
    assert inner["accessor"] == claim.token_accessor
    worker = hvac.Client(url=vault.address, token=inner["client_token"]).secrets.kv.v2
    assert worker.read_secret_version("disinto/runner/GITHUB_TOKEN", mount_point="kv", raise_on_deleted_version=True)[
        "data"
    ]["data"]["value"] == SECRETS["GITHUB_TOKEN"]
    with pytest.raises(hvac_exc.Forbidden):
        worker.read_secret_version("disinto/runner/NPM_TOKEN", mount_point="kv", raise_on_deleted_version=True)
    with pytest.raises(hvac_exc.InvalidRequest):
        runner.sys.unwrap()  # a second copy finds the claim taken
    assert vc.wrapping_lookup(claim.wrapping_token) is None


def test_mint_claim_outside_the_role_is_permanent_with_vaults_message(vault: VaultDouble, vc: VaultClient) -> None:
    with pytest.raises(PermanentError) as err:
        mint(vc, ["reconciler-dispatcher"])
    assert not isinstance(err.value, TransientError)
    assert "must be subset of the role's allowed policies" in str(err.value)
    assert err.value.system == "vault"
    assert not [t for t in vault.tokens() if t["role"] == "vault-runner"]  # nothing was minted


def test_mint_claim_without_permission_names_the_path(vault: VaultDouble) -> None:
    weak_token = vault.create_token(["nothing"])
    weak = make_client(vault, weak_token)
    with pytest.raises(PermanentError) as err:
        mint(weak, ["runner-claim"])
    message = str(err.value)
    assert "auth/token/create/vault-runner" in message and "check VAULT_TOKEN's policy" in message
    assert weak_token not in message and "root-token" not in message


def test_mint_claim_is_not_retried(vault: VaultDouble, vc: VaultClient) -> None:
    is_create = lambda r: r.path.startswith("/v1/auth/token/create/")  # noqa: E731
    vault.faults.fail_next(1, "error", match=is_create)
    with pytest.raises(TransientError):
        mint(vc, ["runner-claim"])
    assert len(vault.calls_to("POST", r"/v1/auth/token/create/.*")) == 1
    # Applied, then the reply was lost: one token exists, and nothing minted a second one.
    vault.faults.fail_next(1, "apply-then-drop", match=is_create)
    with pytest.raises(TransientError):
        mint(vc, ["runner-claim"])
    assert len(vault.calls_to("POST", r"/v1/auth/token/create/.*")) == 2
    assert len([t for t in vault.live_tokens() if t["role"] == "vault-runner"]) == 1


def test_unwrapped_reply_is_revoked_and_refused(vault: VaultDouble, vc: VaultClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vault, "_wrap_ttl", lambda req: 0)  # a Vault (or proxy) that ignores the wrap header
    with pytest.raises(PermanentError, match="unwrapped"):
        mint(vc, ["runner-claim"])
    runner_tokens = [t for t in vault.tokens() if t["role"] == "vault-runner"]
    assert len(runner_tokens) == 1 and runner_tokens[0]["revoked"] is True


def test_claim_repr_hides_the_wrapping_token(vc: VaultClient) -> None:
    claim = mint(vc, ["runner-claim"])
    assert claim.wrapping_token not in repr(claim)
    assert claim.token_accessor in repr(claim)


# --------------------------------------------------------------------------- accessors and wrapping lookups


def test_lookup_accessor(vault: VaultDouble, vc: VaultClient) -> None:
    claim = mint(vc, ["runner-NPM_TOKEN"])
    info = vc.lookup_accessor(claim.token_accessor)
    assert info is not None
    assert info["policies"] == ["runner-npm_token"] and info["ttl"] == 900
    assert info["meta"] == {"run_id": "run-1", "attempt": "1"} and info["num_uses"] == 0
    assert vc.lookup_accessor("no-such-accessor") is None
    vault.advance(900)
    assert vc.lookup_accessor(claim.token_accessor) is None  # expired tokens are gone


def test_revoke_accessor_is_idempotent(vault: VaultDouble, vc: VaultClient) -> None:
    claim = mint(vc, ["runner-GITHUB_TOKEN"])
    vc.revoke_accessor(claim.token_accessor)
    record = vault.token_by_accessor(claim.token_accessor)
    assert record is not None and record["revoked"] is True
    vc.revoke_accessor(claim.token_accessor)
    vc.revoke_accessor("never-existed")
    expiring = mint(vc, ["runner-claim"], ttl=60)
    vault.advance(61)
    vc.revoke_accessor(expiring.token_accessor)
    assert vc.lookup_accessor(claim.token_accessor) is None


def test_revoking_the_wrapping_accessor_voids_the_claim(vault: VaultDouble, vc: VaultClient) -> None:
    claim = mint(vc, ["runner-claim"])
    vc.revoke_accessor(claim.wrapping_accessor)
    assert vc.wrapping_lookup(claim.wrapping_token) is None
    with pytest.raises(hvac_exc.InvalidRequest):
        hvac.Client(url=vault.address, token=claim.wrapping_token).sys.unwrap()
    vc.revoke_accessor(claim.wrapping_accessor)  # again: already gone, fine
    used = mint(vc, ["runner-claim"])
    hvac.Client(url=vault.address, token=used.wrapping_token).sys.unwrap()
    vc.revoke_accessor(used.wrapping_accessor)  # a used wrapping token is gone too
    vc.revoke_accessor(used.token_accessor)
    assert vault.token_by_accessor(used.token_accessor)["revoked"] is True


def test_revoke_accessor_without_permission_is_permanent(vault: VaultDouble, vc: VaultClient) -> None:
    claim = mint(vc, ["runner-claim"])
    weak = make_client(vault, vault.create_token(["nothing"]))
    with pytest.raises(PermanentError, match="auth/token/revoke-accessor"):
        weak.revoke_accessor(claim.token_accessor)
    assert vault.token_by_accessor(claim.token_accessor)["live"] is True


def test_wrapping_lookup(vault: VaultDouble, vc: VaultClient) -> None:
    claim = mint(vc, ["runner-claim"], wrap_ttl=120)
    info = vc.wrapping_lookup(claim.wrapping_token)
    assert info == {
        "creation_path": "auth/token/create/vault-runner",
        "creation_ttl": 120,
        "creation_time": "2027-01-15T08:00:00Z",
    }
    assert vault.wrapping_tokens()[0]["used"] is False  # looking did not use it
    vault.advance(121)
    assert vc.wrapping_lookup(claim.wrapping_token) is None


# --------------------------------------------------------------------------- health and failures


def test_health(vault: VaultDouble, vc: VaultClient) -> None:
    health = vc.health()
    assert health["initialized"] is True and health["sealed"] is False


def test_sealed_vault_is_a_transient_error_for_every_verb(vault: VaultDouble, vc: VaultClient) -> None:
    claim = mint(vc, ["runner-claim"])
    vault.sealed = True
    calls = [
        lambda: vc.policy_exists("runner-GITHUB_TOKEN"),
        lambda: vc.policy_text("runner-GITHUB_TOKEN"),
        lambda: vc.secret_present("GITHUB_TOKEN"),
        lambda: vc.mount_present("ssh"),
        lambda: vc.secret_values(["GITHUB_TOKEN"]),
        lambda: mint(vc, ["runner-claim"]),
        lambda: vc.lookup_accessor(claim.token_accessor),
        lambda: vc.revoke_accessor(claim.token_accessor),
        lambda: vc.wrapping_lookup(claim.wrapping_token),
        vc.health,
    ]
    for call in calls:
        with pytest.raises(TransientError, match=r"is sealed; unseal it") as err:
            call()
        assert err.value.system == "vault"
    vault.sealed = False
    assert vc.secret_present("GITHUB_TOKEN")


def test_reads_are_retried_on_transient_errors(vault: VaultDouble, vc: VaultClient) -> None:
    vault.faults.fail_next(2, "error")
    assert vc.policy_exists("runner-GITHUB_TOKEN")
    assert len(vault.calls_to("GET", r"/v1/sys/policies/acl/runner-github_token")) == 3
    vault.faults.fail_next(3, "drop")
    with pytest.raises(TransientError):
        vc.secret_present("GITHUB_TOKEN")


def test_connection_refused_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vc = VaultClient(VaultSettings(addr=f"http://127.0.0.1:{port}", token="t", timeout=1.0), attempts=2, backoff=0.01)
    with pytest.raises(TransientError, match="unreachable") as err:
        vc.secret_present("GITHUB_TOKEN")
    assert err.value.system == "vault" and err.value.__cause__ is not None


def test_timeout_is_transient(vault: VaultDouble, dispatcher_token: str) -> None:
    vc = VaultClient(VaultSettings(addr=vault.address, token=dispatcher_token, timeout=0.2), attempts=1)
    vault.faults.hold(lambda r: True)
    try:
        with pytest.raises(TransientError, match="timed out"):
            vc.policy_exists("runner-GITHUB_TOKEN")
    finally:
        vault.faults.release()


def test_denied_read_is_permanent_and_never_shows_the_token(vault: VaultDouble) -> None:
    token = vault.create_token(["nothing"])
    vc = make_client(vault, token)
    with pytest.raises(PermanentError) as err:
        vc.policy_exists("runner-GITHUB_TOKEN")
    message = str(err.value)
    assert "sys/policies/acl/runner-github_token" in message and "check VAULT_TOKEN's policy" in message
    assert token not in message
    assert not isinstance(err.value, (TransientError, NotFoundError))


def test_no_token_configured_is_a_permanent_error(vault: VaultDouble) -> None:
    vc = make_client(vault, None)
    with pytest.raises(PermanentError, match="VAULT_TOKEN"):
        vc.secret_present("GITHUB_TOKEN")


def test_secret_with_a_future_deletion_time_is_present(vault: VaultDouble, dispatcher_token: str) -> None:
    """delete_version_after on the mount stamps a future deletion_time: still live (vault-plugin-secrets-kv path_data.go)."""
    vc = make_client(vault, dispatcher_token)
    vault.configure_kv(delete_version_after="720h")
    vault.put_secret("disinto/runner/FUTURE", {"value": "v"})
    assert vc.secret_present("FUTURE")
    vault.delete_secret("disinto/runner/FUTURE")  # deleted now: the deletion time has passed
    assert not vc.secret_present("FUTURE")


@pytest.mark.parametrize("status", [412, 429])
def test_412_and_429_are_retried_with_backoff(status: int) -> None:
    """Vault's own client retries 412 (performance standby lacking state) and 429 (rate-limit quota)."""
    import json as _json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from reconciler.runner.vault_session import VaultSession

    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            first = len(hits) % 2 == 1
            body = _json.dumps({"errors": ["slow down"]} if first else {"data": {"policy": "x", "data": {"value": "v"}}}).encode()
            self.send_response(status if first else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    addr = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        vc = VaultClient(VaultSettings(addr=addr, token="t", timeout=2.0), attempts=3, backoff=0.01)
        assert vc.policy_text("x") == "x"
        assert len(hits) == 2
        slept: list[float] = []
        session = VaultSession(addr, attempts=3, backoff=0.1, sleep=slept.append)
        assert session.kv_read("t", "kv/data/a") == {"value": "v"}
        assert len(hits) == 4 and slept == [0.1]
    finally:
        server.shutdown()
