"""The same contract against a real Nomad and Vault, when their addresses are given.

Skipped unless set (see README, "Against a real Nomad and Vault"):

    nomad agent -dev            # raw_exec is enabled in dev mode
    vault server -dev -dev-root-token-id=root
    RECONCILER_TEST_NOMAD_ADDR=http://127.0.0.1:4646 \\
    RECONCILER_TEST_VAULT_ADDR=http://127.0.0.1:8200 RECONCILER_TEST_VAULT_TOKEN=root \\
    python -m pytest tests/real

The Vault tests write a KV v2 mount ``kv`` (if absent), the runner policies, the
``vault-runner`` token role and two test secrets. The Nomad tests register a
parameterized ``raw_exec`` job ``reconciler-test-runner`` in the default
namespace whose task runs this interpreter's ``python -m reconciler.runner``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

import pytest

from reconciler.clients.errors import TransientError
from reconciler.settings import NomadSettings, VaultSettings

NOMAD_ADDR = os.environ.get("RECONCILER_TEST_NOMAD_ADDR")
VAULT_ADDR = os.environ.get("RECONCILER_TEST_VAULT_ADDR")
VAULT_TOKEN = os.environ.get("RECONCILER_TEST_VAULT_TOKEN", "root")

needs_vault = pytest.mark.skipif(not VAULT_ADDR, reason="set RECONCILER_TEST_VAULT_ADDR (vault server -dev) to run")
needs_both = pytest.mark.skipif(
    not (VAULT_ADDR and NOMAD_ADDR), reason="set RECONCILER_TEST_NOMAD_ADDR and RECONCILER_TEST_VAULT_ADDR to run"
)

SECRET = "GITHUB_TOKEN"
SECRET_VALUE = "ghp_realTestRealTestRealTestRealTest0001"


@pytest.fixture(scope="module")
def vault_admin():
    import hvac

    from reconciler.local_cluster import (
        RUNNER_CLAIM_POLICY,
        RUNNER_CLAIM_POLICY_TEXT,
        RUNNER_ROLE_FIELDS,
        runner_policy_name,
        runner_policy_text,
    )

    client = hvac.Client(url=VAULT_ADDR, token=VAULT_TOKEN)
    mounts = client.sys.list_mounted_secrets_engines()
    mounts = mounts.get("data", mounts)
    if "kv/" not in mounts:
        client.sys.enable_secrets_engine("kv", path="kv", options={"version": "2"})
    client.sys.create_or_update_policy(runner_policy_name(SECRET), runner_policy_text(SECRET))
    client.sys.create_or_update_policy(RUNNER_CLAIM_POLICY, RUNNER_CLAIM_POLICY_TEXT)
    client.adapter.post("/v1/auth/token/roles/vault-runner", json=RUNNER_ROLE_FIELDS)
    client.secrets.kv.v2.create_or_update_secret(path=f"disinto/runner/{SECRET}", secret={"value": SECRET_VALUE}, mount_point="kv")
    return client


@needs_vault
def test_real_vault_claim_is_exactly_the_declared_policies(vault_admin):
    from reconciler.clients.vault import VaultClient

    client = VaultClient(VaultSettings(addr=VAULT_ADDR or "", token=VAULT_TOKEN))
    assert client.policy_exists(f"runner-{SECRET}")
    assert client.secret_present(SECRET)
    claim = client.mint_claim(
        [f"runner-{SECRET}"], ttl=900, explicit_max_ttl=900, wrap_ttl=300,
        meta={"run_id": "real-test", "attempt": "1", "action_id": "real-test"}, display_name="run-real-test-1",
    )
    info = client.lookup_accessor(claim.token_accessor)
    assert set(info["policies"]) == {f"runner-{SECRET}".lower()}
    assert info["renewable"] is False
    assert claim.creation_path == "auth/token/create/vault-runner"
    # Unwrapping is single use.
    import hvac

    unwrapped = hvac.Client(url=VAULT_ADDR, token=claim.wrapping_token).sys.unwrap()
    assert unwrapped["auth"]["accessor"] == claim.token_accessor
    with pytest.raises(Exception):
        hvac.Client(url=VAULT_ADDR, token=claim.wrapping_token).sys.unwrap()
    client.revoke_accessor(claim.token_accessor)
    assert client.lookup_accessor(claim.token_accessor) is None
    client.revoke_accessor(claim.token_accessor)  # idempotent


@needs_both
def test_real_nomad_dispatch_is_idempotent_and_the_runner_takes_its_claim_once(vault_admin, tmp_path):
    from reconciler.clients.nomad import NomadClient
    from reconciler.clients.vault import VaultClient

    nomad = NomadClient(NomadSettings(addr=NOMAD_ADDR or "", namespace="default"))
    factory = tmp_path / "factory"
    (factory / "formulas").mkdir(parents=True)
    (factory / "formulas" / "real-test.sh").write_text('echo "token is $GITHUB_TOKEN"\n')
    job = {
        "ID": "reconciler-test-runner",
        "Name": "reconciler-test-runner",
        "Type": "batch",
        "Datacenters": ["*"],
        "ParameterizedJob": {
            "Payload": "required",
            "MetaRequired": ["run_id", "attempt", "action_id", "formula", "timeout_seconds", "wrapped_accessor"],
            "MetaOptional": ["secrets", "mounts"],
        },
        "TaskGroups": [{
            "Name": "runner", "Count": 1,
            "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
            "ReschedulePolicy": {"Attempts": 0, "Unlimited": False},
            "Tasks": [{
                "Name": "runner", "Driver": "raw_exec",
                "Config": {"command": sys.executable, "args": ["-m", "reconciler.runner"]},
                "DispatchPayload": {"File": "claim.json"},
                "Env": {"VAULT_ADDR": VAULT_ADDR, "FACTORY_ROOT": str(factory), "PYTHONPATH": os.pathsep.join(sys.path)},
            }],
        }],
    }
    nomad.register(job)
    vault = VaultClient(VaultSettings(addr=VAULT_ADDR or "", token=VAULT_TOKEN))
    run_id = f"real-{uuid.uuid4().hex[:8]}"
    claim = vault.mint_claim([f"runner-{SECRET}"], ttl=900, explicit_max_ttl=900, wrap_ttl=300,
                             meta={"run_id": run_id, "attempt": "1", "action_id": run_id}, display_name=f"run-{run_id}")
    meta = {"run_id": run_id, "attempt": "1", "action_id": run_id, "formula": "real-test", "timeout_seconds": "60",
            "wrapped_accessor": claim.token_accessor, "secrets": SECRET, "mounts": ""}
    payload = json.dumps({"version": 1, "wrapping_token": claim.wrapping_token}).encode()
    first = nomad.dispatch("reconciler-test-runner", meta=meta, payload=payload, idempotency_token=f"{run_id}/1", id_prefix_template=run_id)
    again = nomad.dispatch("reconciler-test-runner", meta=meta, payload=payload, idempotency_token=f"{run_id}/1", id_prefix_template=run_id)
    assert again.job_id == first.job_id, "the idempotency token (query parameter) protects a repeated dispatch"
    deadline = time.time() + 120
    allocs = []
    while time.time() < deadline:
        allocs = nomad.allocations(first.job_id)
        if allocs and allocs[0].get("ClientStatus") in ("complete", "failed"):
            break
        time.sleep(1)
    assert allocs, "the child never got an allocation"
    events = allocs[0]["TaskStates"]["runner"]["Events"]
    codes = [e.get("ExitCode") for e in events if e.get("Type") == "Terminated"]
    assert codes == [0], events
    out = nomad.log_tail(allocs[0]["ID"], "runner", type="stdout")
    assert "token is" in out and SECRET_VALUE not in out, "the runner redacts at the source"
    try:
        vault.revoke_accessor(claim.token_accessor)
    except TransientError:
        pass
    nomad.stop(first.job_id, purge=True)


needs_nomad = pytest.mark.skipif(not NOMAD_ADDR, reason="set RECONCILER_TEST_NOMAD_ADDR (nomad agent -dev) to run")


@needs_nomad
def test_real_nomad_serves_the_watch_the_reconciler_uses():
    """The event stream of the namespace (heartbeat or frames within Nomad's 10 s heartbeat), the unfiltered
    allocation list compared client side, and the 400 a relational go-bexpr filter gets (why we send none)."""
    import requests

    from reconciler.clients.errors import PermanentError
    from reconciler.clients.nomad import NomadClient

    nomad = NomadClient(NomadSettings(addr=NOMAD_ADDR or "", namespace="default"))
    index, _ = nomad.allocation_changes(0)
    assert index > 0
    stream = nomad.event_stream(index)
    try:
        first = next(iter(stream))  # a heartbeat ({}) or a frame at or after the index asked
        assert first.index is None or first.index >= index
    finally:
        stream.close()
    refused = requests.get(f"{NOMAD_ADDR}/v1/allocations", params={"filter": "ModifyIndex > 1"}, timeout=10)
    assert refused.status_code == 400, refused.text
    with pytest.raises(PermanentError):  # through our client too: a 400 is permanent, not retried
        nomad._raw("list with a relational filter", nomad._nomad.allocations, method="get", params={"filter": "ModifyIndex > 1"})
