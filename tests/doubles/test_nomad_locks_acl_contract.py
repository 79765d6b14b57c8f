"""Conformance of the Nomad double with CONTRACTS.md's rev. 2 Nomad facts on locks, variables and ACLs.

Each test names the Nomad source file (hashicorp/nomad, HEAD and v1.9.7) its facts were read from.
Lock tests jump the double's lock clock instead of sleeping (Nomad's TTLs are at least 10 s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from reconciler import jobspecs
from doubles.nomad import NomadDouble
from reconciler.settings import Settings

from .test_nomad_contract import TOKEN, parent_hcl, raw, register

REPO = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def double(tmp_path: Path) -> Iterator[NomadDouble]:
    d = NomadDouble(token=TOKEN, workdir=tmp_path / "nomad")
    d.start()
    yield d
    d.stop()


@pytest.fixture
def clock(double: NomadDouble) -> Clock:
    c = Clock()
    double._vars.clock = c
    return c


def put(d: NomadDouble, op: str, body: dict[str, Any], path: str = "locks/leader", token: str = TOKEN) -> requests.Response:
    return raw(d, "PUT", f"/v1/var/{path}?{op}", token=token, json={"Path": path, **body})


# ----------------------------------------------------------------------------- locks


def test_lock_ttl_bounds_and_defaults(double: NomadDouble, clock: Clock) -> None:
    """nomad/structs/variables.go: minVariableLockTTL 10 s, maxVariableLockTTL 24 h (errInvalidTTL),
    Canonicalize turns a zero TTL or LockDelay into 15 s (defaultLockTTL, defaultLockDelay); the
    validation error is go-multierror text with HTTP 400 (nomad/variables_endpoint.go canonicalizeAndValidate)."""
    for ttl in ("5s", "9999ms", "25h"):
        refused = put(double, "lock-acquire", {"Lock": {"TTL": ttl}})
        assert refused.status_code == 400, ttl
        assert "TTL must be between 10 seconds and 24 hours" in refused.text
    negative = put(double, "lock-acquire", {"Lock": {"TTL": "15s", "LockDelay": "-1s"}})
    assert negative.status_code == 400 and "Lock delay and TTL must be positive" in negative.text
    taken = put(double, "lock-acquire", {})
    assert taken.status_code == 200
    assert taken.json()["Lock"]["TTL"] == "15s" and taken.json()["Lock"]["LockDelay"] == "15s"


def test_lock_lives_two_ttls_then_lock_delay(double: NomadDouble, clock: Clock) -> None:
    """nomad/locks.go CreateVariableLockTTLTimer / RenewTTLTimer: the timer runs 2 x TTL from the
    last renewal; when it fires nobody may take the lock for LockDelay more."""
    acquired = put(double, "lock-acquire", {"Lock": {"TTL": "10s", "LockDelay": "5s"}})
    lock_id = acquired.json()["Lock"]["ID"]
    clock.now += 15  # past the TTL, within 2 x TTL: still ours, renewable
    assert put(double, "lock-renew", {"Lock": {"ID": lock_id}}).status_code == 200
    clock.now += 19.9  # 2 x TTL after the renewal not yet reached
    assert put(double, "lock-acquire", {"Lock": {"TTL": "10s"}}).status_code == 409
    assert put(double, "lock-renew", {"Lock": {"ID": lock_id}}).status_code == 200
    clock.now += 20.5  # 2 x TTL passed: the holder lost it, LockDelay runs
    assert put(double, "lock-renew", {"Lock": {"ID": lock_id}}).status_code == 409
    assert put(double, "lock-acquire", {"Lock": {"TTL": "10s"}}).status_code == 409
    clock.now += 5  # LockDelay over (45 s after the last renewal with the defaults; here 2 x 10 + 5)
    again = put(double, "lock-acquire", {"Lock": {"TTL": "10s"}})
    assert again.status_code == 200 and again.json()["Lock"]["ID"] != lock_id


def test_lock_acquire_overwrites_items(double: NomadDouble, clock: Clock) -> None:
    """nomad/state/state_store_variables.go VarLockAcquire stores the request's variable: its Items
    replace what was there."""
    assert raw(double, "PUT", "/v1/var/locks/leader", json={"Items": {"old": "x"}}).status_code == 200
    taken = put(double, "lock-acquire", {"Lock": {"TTL": "10s"}, "Items": {"holder": "me"}})
    assert taken.status_code == 200
    assert raw(double, "GET", "/v1/var/locks/leader").json()["Items"] == {"holder": "me"}


def test_refused_lock_operations_answer_a_zero_valued_variable(double: NomadDouble, clock: Clock) -> None:
    """nomad/state/state_store_variables.go: a held lock (acquire), a wrong lock ID (release) and a
    plain write or delete of a locked variable get 409 with a zero-valued variable ("Avoid showing the
    variable data"); releasing a lock nobody holds is an ErrorResponse: 500 "variable doesn't hold a lock"."""
    taken = put(double, "lock-acquire", {"Lock": {"TTL": "10s"}, "Items": {"holder": "me"}})
    lock_id = taken.json()["Lock"]["ID"]
    for reply in (
        put(double, "lock-acquire", {"Lock": {"TTL": "10s"}}),
        put(double, "lock-release", {"Lock": {"ID": "not-mine"}}),
        raw(double, "PUT", "/v1/var/locks/leader", json={"Items": {"k": "v"}}),
        raw(double, "DELETE", "/v1/var/locks/leader"),
    ):
        assert reply.status_code == 409
        body = reply.json()
        assert body["Path"] == "locks/leader" and body["ModifyIndex"] == 0 and not body.get("Items")
        assert not (body.get("Lock") or {}).get("ID")
    assert put(double, "lock-release", {"Lock": {"ID": lock_id}}).status_code == 200
    not_held = put(double, "lock-release", {"Lock": {"ID": lock_id}})
    assert not_held.status_code == 500 and "variable doesn't hold a lock" in not_held.text


def test_variable_items_limited_to_64_kib(double: NomadDouble) -> None:
    """nomad/structs/variables.go maxVariableSize 65536 (keys and values, VariableItems.Size)."""
    assert raw(double, "PUT", "/v1/var/big", json={"Items": {"k": "x" * 65534}}).status_code == 200
    refused = raw(double, "PUT", "/v1/var/big", json={"Items": {"k": "x" * 65536}})
    assert refused.status_code == 400 and "variables are limited to 64KiB in total size" in refused.text


# ----------------------------------------------------------------------------- jobs


def test_deregister_of_a_missing_job_is_200(double: NomadDouble) -> None:
    """nomad/job_endpoint.go Deregister: ACL checked first, then a job that does not exist is no error."""
    reply = raw(double, "DELETE", "/v1/job/never-registered")
    assert reply.status_code == 200 and reply.json()["EvalID"] == ""
    assert raw(double, "DELETE", "/v1/job/never-registered", token=None).status_code == 403


def test_lists_of_a_missing_job_are_200_empty(double: NomadDouble) -> None:
    """nomad/job_endpoint.go Allocations / Evaluations: a missing job lists nothing, no 404."""
    for what in ("allocations", "evaluations"):
        reply = raw(double, "GET", f"/v1/job/never-registered/{what}")
        assert reply.status_code == 200 and reply.json() == []


def test_blocking_wait_is_capped_at_300_seconds() -> None:
    """nomad/structs/structs.go MaxBlockingRPCQueryTime = 300 s (TimeToBlock)."""
    from doubles.nomad import _parse_wait

    assert _parse_wait("10m") == 300.0
    assert _parse_wait("30s") == 30.0


# ----------------------------------------------------------------------------- ACLs


def _shipped(name: str) -> str:
    return (REPO / "jobspecs" / "nomad-acl" / f"{name}.hcl").read_text(encoding="utf-8")


def test_policy_language_is_validated_as_nomad_does(double: NomadDouble) -> None:
    """acl/policy.go Parse: unknown capabilities and names are refused when a policy is written
    (nomad/acl_endpoint.go UpsertPolicies: 400 "policy 0 invalid: ...")."""
    bad = raw(double, "POST", "/v1/acl/policy/bad", json={"Name": "bad", "Rules": 'namespace "x" { capabilities = ["fly"] }'})
    assert bad.status_code == 400 and "Invalid namespace capability 'fly'" in bad.text
    bad_volume = raw(double, "POST", "/v1/acl/policy/bad", json={"Name": "bad", "Rules": 'host_volume "a_b" { policy = "read" }'})
    assert bad_volume.status_code == 400 and "Invalid host volume name" in bad_volume.text
    ok = raw(double, "POST", "/v1/acl/policy/ok", json={"Name": "ok", "Rules": _shipped("reconciler")})
    assert ok.status_code == 200


def test_acl_policy_endpoint_is_management_only_and_keeps_job_acl(double: NomadDouble) -> None:
    """nomad/acl_endpoint.go UpsertPolicies (management token) stores the whole policy, JobACL included;
    a write without JobACL drops it (the write replaces the policy)."""
    job_acl = {"Namespace": "runners", "JobID": "reconciler", "Group": "", "Task": ""}
    body = {"Name": "reconciler", "Description": "d", "Rules": _shipped("reconciler"), "JobACL": job_acl}
    assert raw(double, "POST", "/v1/acl/policy/reconciler", json=body).status_code == 200
    assert raw(double, "GET", "/v1/acl/policy/reconciler").json()["JobACL"] == job_acl
    client = double.add_token(["reconciler"])
    assert raw(double, "POST", "/v1/acl/policy/reconciler", token=client, json=body).status_code == 403
    assert raw(double, "GET", "/v1/acl/policy/reconciler", token=double.add_token([])).status_code == 403
    body.pop("JobACL")
    raw(double, "POST", "/v1/acl/policy/reconciler", json=body)
    assert raw(double, "GET", "/v1/acl/policy/reconciler").json()["JobACL"] is None


def test_each_endpoint_checks_its_capability(double: NomadDouble) -> None:
    """The capability table of CONTRACTS.md: nomad/job_endpoint.go (Register, Dispatch, Deregister,
    GetJob, List), nomad/alloc_endpoint.go, client/fs_endpoint.go, nomad/variables_endpoint.go."""
    double.set_policy("reader", 'namespace "default" { capabilities = ["read-job"] }')
    double.set_policy("dispatcher", 'namespace "default" { capabilities = ["dispatch-job"] }')
    double.set_policy("stopper", 'namespace "default" { capabilities = ["deregister-job"] }')
    register(double, parent_hcl("work"))
    reader, dispatcher, stopper = (double.add_token([n]) for n in ("reader", "dispatcher", "stopper"))
    assert raw(double, "GET", "/v1/job/work", token=reader).status_code == 200
    assert raw(double, "GET", "/v1/jobs", token=reader).status_code == 403  # list-jobs
    assert raw(double, "GET", "/v1/job/work", token=dispatcher).status_code == 403
    assert raw(double, "POST", "/v1/job/work/dispatch", token=reader, json={}).status_code == 403
    assert raw(double, "POST", "/v1/job/work/dispatch", token=dispatcher, json={}).status_code == 200
    assert raw(double, "DELETE", "/v1/job/work", token=dispatcher).status_code == 403  # dispatch-job implies no stop
    assert raw(double, "DELETE", "/v1/job/work?purge=true", token=stopper).status_code == 403  # purge: submit/purge-job
    assert raw(double, "DELETE", "/v1/job/work", token=stopper).status_code == 200
    assert raw(double, "GET", "/v1/job/work", token="no-such-token").text == "ACL token not found"


def test_register_needs_host_volume_rules(double: NomadDouble, tmp_path: Path) -> None:
    """nomad/job_endpoint.go doRegister: every host volume needs mount-readonly (or mount-readwrite)
    for a read-only mount, mount-readwrite for a writable one, beside submit-job."""
    hcl = parent_hcl("vols").replace(
        '  group "g" {\n', '  group "g" {\n    volume "f" {\n      type = "host"\n      source = "factory"\n      read_only = true\n    }\n', 1
    )
    assert 'volume "f"' in hcl, "the test jobspec grew a host volume"
    job = requests.post(f"{double.address}/v1/jobs/parse", headers={"X-Nomad-Token": TOKEN}, json={"JobHCL": hcl, "Canonicalize": True}, timeout=10).json()
    double.set_policy("submit", 'namespace "default" { capabilities = ["submit-job"] }')
    double.set_policy("ro", 'host_volume "fact*" { capabilities = ["mount-readonly"] }')
    bare, with_volume = double.add_token(["submit"]), double.add_token(["submit", "ro"])
    assert raw(double, "POST", "/v1/jobs", token=bare, json={"Job": job}).status_code == 403
    assert raw(double, "POST", "/v1/jobs", token=with_volume, json={"Job": job}).status_code == 200
    job["TaskGroups"][0]["Volumes"]["f"]["ReadOnly"] = False
    assert raw(double, "POST", "/v1/jobs", token=with_volume, json={"Job": job}).status_code == 403


def test_variable_path_rules(double: NomadDouble) -> None:
    """acl/acl.go AllowVariableOperation: the closest path glob decides; read implies list
    (acl/policy.go expandVariablesCapabilities); nomad/variables_endpoint.go List shows only what
    the token may list."""
    rules = '''namespace "default" {
  variables {
    path "reconciler/*" { capabilities = ["read", "write"] }
    path "reconciler/secret/*" { capabilities = ["deny"] }
  }
}'''
    double.set_policy("vars", rules)
    token = double.add_token(["vars"])
    assert raw(double, "PUT", "/v1/var/reconciler/a", token=token, json={"Items": {"k": "v"}}).status_code == 200
    assert raw(double, "GET", "/v1/var/reconciler/a", token=token).status_code == 200
    assert raw(double, "DELETE", "/v1/var/reconciler/a", token=token).status_code == 403  # destroy
    assert raw(double, "PUT", "/v1/var/reconciler/secret/x", token=token, json={"Items": {"k": "v"}}).status_code == 403
    assert raw(double, "PUT", "/v1/var/other/x", token=token, json={"Items": {"k": "v"}}).status_code == 403
    raw(double, "PUT", "/v1/var/other/x", json={"Items": {"k": "v"}})
    listed = raw(double, "GET", "/v1/vars?prefix=", token=token).json()
    assert [v["Path"] for v in listed] == ["reconciler/a"]


def test_shipped_policies_parse_in_the_double(double: NomadDouble) -> None:
    """Every shipped Nomad ACL policy is valid for Nomad (acl/policy.go Parse); so is each rendered one."""
    for path in sorted((REPO / "jobspecs" / "nomad-acl").glob("*.hcl")):
        double.set_policy(path.stem, path.read_text(encoding="utf-8"))
    for name, rules in jobspecs.nomad_acl_policies(Settings()).items():
        double.set_policy(name, rules)


def test_variable_path_rules_of_the_server(double: NomadDouble) -> None:
    """nomad/structs/variables.go ValidatePath: ^[a-zA-Z0-9-_~/]{1,128}$, and nomad/ is reserved
    except nomad/jobs..., nomad/sentinel... and nomad/job-templates/<name>."""
    for bad, text in (
        ("has space", "invalid path"),
        ("x" * 129, "invalid path"),
        ("nomad", 'reserved top-level directory path'),
        ("nomad/other", 'only paths at "nomad/jobs"'),
        ("nomad/job-templates/a/b", '"nomad/job-templates" is a reserved directory path'),
    ):
        reply = raw(double, "PUT", f"/v1/var/{bad}", json={"Items": {"k": "v"}})
        assert reply.status_code == 400 and text in reply.text, (bad, reply.text)
    for good in ("nomad/jobs/x", "nomad/job-templates/t", "reconciler/runs/a~b_c-d"):
        assert raw(double, "PUT", f"/v1/var/{good}", json={"Items": {"k": "v"}}).status_code == 200, good


def test_reregistering_an_unchanged_job_replies_its_modify_index_and_forces_an_eval(double: NomadDouble) -> None:
    """nomad/job_endpoint.go Register: an unchanged spec is not written; the reply's JobModifyIndex is
    the job's ModifyIndex (not its JobModifyIndex) and a service or batch job gets a new evaluation."""
    hcl = 'job "svc" {\n  type = "batch"\n  group "g" {\n    task "t" {\n      driver = "raw_exec"\n      config {\n        command = "python3"\n        args = ["-c", "import time; time.sleep(30)"]\n      }\n    }\n  }\n}\n'
    job = requests.post(f"{double.address}/v1/jobs/parse", headers={"X-Nomad-Token": TOKEN}, json={"JobHCL": hcl, "Canonicalize": True}, timeout=10).json()
    raw(double, "POST", "/v1/jobs", json={"Job": job})
    assert double.wait_until(lambda: (double.job("svc") or {}).get("Status") == "running", 10)
    live = raw(double, "GET", "/v1/job/svc").json()
    assert live["ModifyIndex"] > live["JobModifyIndex"], "the job's status moved its ModifyIndex"
    evals_before = len(raw(double, "GET", "/v1/job/svc/evaluations").json())
    again = raw(double, "POST", "/v1/jobs", json={"Job": job}).json()
    assert again["JobModifyIndex"] == live["ModifyIndex"] != live["JobModifyIndex"]
    assert again["EvalID"] and len(raw(double, "GET", "/v1/job/svc/evaluations").json()) == evals_before + 1
    assert raw(double, "GET", "/v1/job/svc").json()["JobModifyIndex"] == live["JobModifyIndex"], "nothing was written"
    raw(double, "DELETE", "/v1/job/svc?purge=true")


def test_a_token_reads_itself_and_the_policies_it_holds(double: NomadDouble) -> None:
    """nomad/acl_endpoint.go ResolveToken (/v1/acl/token/self) and GetPolicy: management tokens, or
    tokens that hold the policy, may read it; others get 403."""
    double.set_policy("mine", 'namespace "default" { capabilities = ["read-job"] }')
    double.set_policy("theirs", 'namespace "default" { capabilities = ["submit-job"] }')
    token = double.add_token(["mine"])
    me = raw(double, "GET", "/v1/acl/token/self", token=token).json()
    assert me["Type"] == "client" and me["Policies"] == ["mine"] and me["SecretID"] == token
    assert raw(double, "GET", "/v1/acl/token/self").json()["Type"] == "management"
    assert raw(double, "GET", "/v1/acl/policy/mine", token=token).status_code == 200
    assert raw(double, "GET", "/v1/acl/policy/theirs", token=token).status_code == 403
