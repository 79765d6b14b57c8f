"""Conformance of the Nomad double with the Nomad facts of CONTRACTS.md, through python-nomad.

One test (or a few) per bullet of the "Nomad" section, named after it. Where
python-nomad cannot express a call (blocking queries, dispatch with a query
token, locks, the event stream) the test uses ``requests`` - which is what the
reconciler's client does too.

Exec-mode tests register tiny throwaway parent jobs whose task is
``python3 -c "<code>"`` (the double runs them with this interpreter).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import nomad
import nomad.api.exceptions as nomad_exc
import pytest
import requests

from doubles.nomad import DISPATCH_PAYLOAD_LIMIT, NomadDouble

TOKEN = "nomad-test-token"
REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _no_nomad_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """python-nomad falls back to NOMAD_* environment variables; keep the host's out."""
    for name in (
        "NOMAD_ADDR",
        "NOMAD_TOKEN",
        "NOMAD_NAMESPACE",
        "NOMAD_REGION",
        "NOMAD_CLIENT_CERT",
        "NOMAD_CLIENT_KEY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def double(tmp_path: Path) -> Iterator[NomadDouble]:
    d = NomadDouble(token=TOKEN, workdir=tmp_path / "nomad")
    d.start()
    yield d
    d.stop()


def api(d: NomadDouble, token: str | None = TOKEN, **kw: Any) -> nomad.Nomad:
    return nomad.Nomad(address=d.address, token=token, timeout=10, **kw)


def raw(d: NomadDouble, method: str, path: str, token: str | None = TOKEN, **kw: Any) -> requests.Response:
    headers = dict(kw.pop("headers", {}))
    if token:
        headers["X-Nomad-Token"] = token
    kw.setdefault("timeout", 10)
    return requests.request(method, f"{d.address}{path}", headers=headers, **kw)


def parent_hcl(
    name: str = "work",
    code: str = "print('ok')",
    *,
    payload: str = "optional",
    meta_required: tuple[str, ...] = (),
    meta_optional: tuple[str, ...] = (),
    meta: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    restart_attempts: int = 0,
    reschedule_attempts: int = 0,
) -> str:
    """A parameterized batch job whose task runs ``python3 -c code``."""
    q = json.dumps
    meta_block = "".join(f"    {k} = {q(v)}\n" for k, v in (meta or {}).items())
    env_block = "".join(f"        {k} = {q(v)}\n" for k, v in (env or {}).items())
    return f"""
job "{name}" {{
  type = "batch"
  meta {{
{meta_block}  }}
  parameterized {{
    payload       = "{payload}"
    meta_required = {q(list(meta_required))}
    meta_optional = {q(list(meta_optional))}
  }}
  group "g" {{
    restart {{
      attempts = {restart_attempts}
      delay    = "50ms"
      mode     = "fail"
    }}
    reschedule {{
      attempts  = {reschedule_attempts}
      delay     = "50ms"
      unlimited = false
    }}
    task "t" {{
      driver = "raw_exec"
      config {{
        command = "python3"
        args    = ["-c", {q(code)}]
      }}
      env {{
{env_block}      }}
      dispatch_payload {{
        file = "input.bin"
      }}
      kill_timeout = "2s"
    }}
  }}
}}
"""


def register(d: NomadDouble, hcl: str, token: str | None = TOKEN, **kw: Any) -> dict[str, Any]:
    """Parse with Nomad's parser and register, as ``nomad job run`` does."""
    n = api(d, token, **kw)
    job = n.jobs.parse(hcl, canonicalize=True)
    n.jobs.register_job({"Job": job})
    return job


def dispatch(
    d: NomadDouble,
    parent: str,
    *,
    token: str | None = None,
    body: dict[str, Any] | None = None,
    namespace: str | None = None,
) -> requests.Response:
    params = {}
    if token is not None:
        params["idempotency_token"] = token
    if namespace is not None:
        params["namespace"] = namespace
    return raw(d, "POST", f"/v1/job/{parent}/dispatch", params=params, json=body or {})


def wait_status(d: NomadDouble, job_id: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    assert d.wait_until(lambda: (d.job(job_id) or {}).get("Status") == status, timeout), d.job(job_id)
    return d.job(job_id) or {}


def events_of(alloc: dict[str, Any], task: str = "t") -> list[str]:
    return [e["Type"] for e in alloc["TaskStates"][task]["Events"]]


# ----------------------------------------------------------------------------- auth, namespace, region


def test_auth_header_x_nomad_token_acl_failures_are_403(double: NomadDouble) -> None:
    with pytest.raises(nomad_exc.URLNotAuthorizedNomadException) as missing:
        api(double, token=None).jobs.get_jobs()
    assert missing.value.nomad_resp.status_code == 403
    assert missing.value.nomad_resp.text == "Permission denied"
    with pytest.raises(nomad_exc.URLNotAuthorizedNomadException) as wrong:
        api(double, token="someone-else").jobs.get_jobs()
    assert wrong.value.nomad_resp.text == "ACL token not found"
    assert api(double).jobs.get_jobs() == []
    assert double.calls[-1].header("X-Nomad-Token") == TOKEN


def test_namespace_and_region_query_parameters(double: NomadDouble) -> None:
    register(double, parent_hcl("same"), namespace="blue")
    register(double, parent_hcl("same", meta={"colour": "green"}), namespace="green")
    blue = api(double, namespace="blue").job.get_job("same")
    green = api(double, namespace="green").job.get_job("same")
    assert blue["Namespace"] == "blue" and not blue["Meta"]
    assert green["Namespace"] == "green" and green["Meta"] == {"colour": "green"}
    with pytest.raises(nomad_exc.URLNotFoundNomadException):
        api(double).job.get_job("same")  # the default namespace has no such job
    assert api(double, region="global").jobs.get_jobs(namespace="blue")[0]["ID"] == "same"
    elsewhere = raw(double, "GET", "/v1/jobs", params={"region": "mars"})
    assert elsewhere.status_code == 500 and "No path to region" in elsewhere.text


# ----------------------------------------------------------------------------- index and blocking queries


def test_reads_return_x_nomad_index_and_index_wait_blocks(double: NomadDouble) -> None:
    register(double, parent_hcl("a"))
    first = raw(double, "GET", "/v1/jobs")
    index = int(first.headers["X-Nomad-Index"])
    assert index > 0

    started = time.monotonic()
    quiet = raw(double, "GET", "/v1/jobs", params={"index": index, "wait": "300ms"})
    assert time.monotonic() - started >= 0.28  # nothing changed: the wait ran out
    assert int(quiet.headers["X-Nomad-Index"]) == index

    threading.Timer(0.2, lambda: register(double, parent_hcl("b"))).start()
    started = time.monotonic()
    woken = raw(double, "GET", "/v1/jobs", params={"index": index, "wait": "5s"})
    assert time.monotonic() - started < 3
    assert int(woken.headers["X-Nomad-Index"]) > index
    assert {j["ID"] for j in woken.json()} == {"a", "b"}


def test_blocking_queries_on_allocations_wake_on_allocation_changes(double: NomadDouble) -> None:
    register(double, parent_hcl(code="import time; time.sleep(30)"))
    double.placement_delay = 0.3
    child = dispatch(double, "work").json()["DispatchedJobID"]

    def wakes_on_change(path: str, trigger: Any = None) -> None:
        index = int(raw(double, "GET", path).headers["X-Nomad-Index"])
        if trigger is not None:
            threading.Timer(0.2, trigger).start()
        started = time.monotonic()
        woken = raw(double, "GET", path, params={"index": index, "wait": "5s"})
        assert int(woken.headers["X-Nomad-Index"]) > index, path
        assert time.monotonic() - started < 4, path

    wakes_on_change(f"/v1/job/{child}/allocations")  # the placement, 0.3 s after the dispatch
    assert double.wait_until(lambda: double.allocations_of(child)[0]["ClientStatus"] == "running", 5)
    alloc_id = double.allocations_of(child)[0]["ID"]
    wakes_on_change("/v1/allocations", lambda: double.lose(alloc_id, lose_as="unknown", replace=False))
    wakes_on_change(f"/v1/job/{child}", lambda: double.stop_behind_back(child))
    job_reply = raw(double, "GET", f"/v1/job/{child}")
    assert int(job_reply.headers["X-Nomad-Index"]) == job_reply.json()["ModifyIndex"]


def test_allocation_list_filter_is_go_bexpr_without_relational_operators(double: NomadDouble) -> None:
    """``filter=`` on /v1/allocations is go-bexpr v0.1.16 (``grammar/grammar.peg``, ``evaluate.go``): no ``>``.

    ``nomad/state/paginator/paginator.go`` wraps the parse error ("failed to read filter
    expression"), ``nomad/alloc_endpoint.go`` makes it a coded 400 "failed to create result
    paginator: ...", and ``command/agent/http.go`` writes that status and text - at once, even on a
    blocking query.
    """
    register(double, parent_hcl(code="import time; time.sleep(30)"))
    first = dispatch(double, "work").json()["DispatchedJobID"]
    assert double.wait_until(lambda: len(double.allocations_of(first)) == 1, 5)
    second = dispatch(double, "work").json()["DispatchedJobID"]
    assert double.wait_until(lambda: len(double.allocations_of(second)) == 1, 5)

    def matching(expression: str) -> set[str]:
        reply = raw(double, "GET", "/v1/allocations", params={"filter": expression, "task_states": "false"})
        assert reply.status_code == 200, (expression, reply.text)
        return {a["JobID"] for a in reply.json()}

    both = {first, second}
    assert matching(f'JobID == "{first}"') == {first}
    assert matching(f'JobID != "{first}"') == {second}
    assert matching(f"JobID == `{second}`") == {second}  # raw string literal
    assert matching(f'JobID == "{first}" or JobID == "{second}"') == both
    assert matching(f'not (JobID == "{first}")') == {second}
    assert matching(f'(JobID == "{first}" and ClientStatus != failed)') == {first}  # an unquoted value is a word
    assert matching('JobID contains "dispatch-"') == both
    assert matching('JobID not contains "dispatch-"') == set()
    assert matching('JobID matches "^work/dispatch-[0-9]+-"') == both
    assert matching('JobID not matches "^work/"') == set()
    assert matching('"dispatch" in JobID') == both  # Value in Selector: substring of a string
    assert matching('"dispatch" not in JobID') == set()
    assert matching("JobID is not empty and NextAllocation is empty and DesiredTransition is empty") == both
    group = double.allocations_of(first)[0]["TaskGroup"]
    assert matching(f'TaskGroup == "{group}" and Namespace == "default"') == both
    index_of_first = double.allocations_of(first)[0]["CreateIndex"]
    assert matching(f"CreateIndex == {index_of_first}") == {first}  # the literal is coerced to the field's type
    # a key missing from a map is "not present" (NotPresentDisposition), not an error
    assert matching('TaskStates["no-such-task"] == "x"') == set()
    assert matching('TaskStates["no-such-task"] is empty') == both

    # no relational operators, and no other malformed input: 400 with Nomad's message, at once
    now = int(raw(double, "GET", "/v1/allocations").headers["X-Nomad-Index"])
    for expression, position in (("ModifyIndex > 5", "1:13 (12)"), ("ModifyIndex >= 5", "1:13 (12)"), ("CreateIndex < 9", "1:13 (12)")):
        started = time.monotonic()
        refused = raw(double, "GET", "/v1/allocations", params={"index": now, "wait": "5s", "filter": expression})
        assert time.monotonic() - started < 1
        assert refused.status_code == 400
        assert refused.text.startswith(
            f"failed to create result paginator: failed to read filter expression: {position}: no match found"
        ), refused.text
    for expression, rule in (("(JobID == x", "grouping"), ('JobID == "x', "string"), ("CreateIndex == 5x", "number")):
        refused = raw(double, "GET", "/v1/allocations", params={"filter": expression})
        assert refused.status_code == 400 and f"rule {rule}:" in refused.text, refused.text
    for expression in ("JobID === 1", "JobID == 1 and", "and JobID == 1", "JobID", "JobID == 1 xor JobID == 2"):
        refused = raw(double, "GET", "/v1/allocations", params={"filter": expression})
        assert refused.status_code == 400 and "failed to read filter expression" in refused.text, expression
    # well-formed but unevaluable on an allocation: the paginator's page error, also a 400
    bad_field = raw(double, "GET", "/v1/allocations", params={"filter": "NoSuchField == 1"})
    assert bad_field.status_code == 400 and bad_field.text.startswith("failed to read result page: error finding value in datum")
    not_a_number = raw(double, "GET", "/v1/allocations", params={"filter": "CreateIndex == abc"})
    assert not_a_number.status_code == 400 and "error getting match value" in not_a_number.text
    # collection expressions are go-bexpr the double does not evaluate: 501 naming them
    collection = raw(double, "GET", "/v1/allocations", params={"filter": "any TaskStates as t { t is empty }"})
    assert collection.status_code == 501 and "collection expressions" in collection.text

    # the other paginated lists take the same language: jobs (on the job) and variables (on their metadata)
    jobs = raw(double, "GET", "/v1/jobs", params={"filter": f'ParentID == "work" and ID != "{first}"'})
    assert jobs.status_code == 200 and [j["ID"] for j in jobs.json()] == [second]
    assert raw(double, "GET", "/v1/jobs", params={"filter": "ModifyIndex > 1"}).status_code == 400
    raw(double, "PUT", "/v1/var/team/a", json={"Path": "team/a", "Items": {"k": "v"}})
    raw(double, "PUT", "/v1/var/team/b", json={"Path": "team/b", "Items": {"k": "v"}})
    variables = raw(double, "GET", "/v1/vars", params={"filter": 'Path matches "/b$"'})
    assert variables.status_code == 200 and [v["Path"] for v in variables.json()] == ["team/b"]
    assert raw(double, "GET", "/v1/vars", params={"filter": "CreateIndex >= 0"}).status_code == 400

    # a valid filter on a blocking query wakes on the table's index and answers only the matches
    threading.Timer(0.2, lambda: double.stop_behind_back(first)).start()
    woken = raw(double, "GET", "/v1/allocations", params={"index": now, "wait": "5s", "filter": f'JobID == "{first}"'})
    assert int(woken.headers["X-Nomad-Index"]) > now
    assert {a["JobID"] for a in woken.json()} == {first}


# ----------------------------------------------------------------------------- errors


def test_errors_are_plain_text_and_write_failures_are_http_500(double: NomadDouble) -> None:
    n = api(double)
    with pytest.raises(nomad_exc.BaseNomadException) as missing_parent:
        n.job.dispatch_job("no-such-parent", meta={})
    resp = missing_parent.value.nomad_resp
    assert resp.status_code == 500
    assert resp.text == "parameterized job not found"
    with pytest.raises(ValueError):
        resp.json()  # plain text, not JSON

    register(double, parent_hcl("p"))
    n.job.deregister_job("p")
    stopped = dispatch(double, "p")
    assert stopped.status_code == 500 and stopped.text == 'Specified job "p" is stopped'


def test_reads_of_a_missing_object_are_404(double: NomadDouble) -> None:
    n = api(double)
    with pytest.raises(nomad_exc.URLNotFoundNomadException) as job:
        n.job.get_job("nope")
    assert job.value.nomad_resp.text == "job not found"
    with pytest.raises(nomad_exc.URLNotFoundNomadException):
        n.allocation.get_allocation("0f2a0c7e-0000-0000-0000-000000000000")
    with pytest.raises(nomad_exc.URLNotFoundNomadException):
        n.variable.get_variable("no/such/var")


# ----------------------------------------------------------------------------- register and parse


def test_register_enforce_index_zero_only_creates(double: NomadDouble) -> None:
    job = api(double).jobs.parse(parent_hcl("once"), canonicalize=True)
    created = raw(double, "POST", "/v1/jobs", json={"Job": job, "EnforceIndex": True, "JobModifyIndex": 0})
    assert created.status_code == 200
    modify_index = created.json()["JobModifyIndex"]
    assert modify_index == api(double).job.get_job("once")["JobModifyIndex"]

    again = raw(double, "POST", "/v1/jobs", json={"Job": job, "EnforceIndex": True, "JobModifyIndex": 0})
    assert again.status_code == 500
    assert again.text == "Enforcing job modify index 0: job already exists"

    changed = dict(job, Meta={"v": "2"})
    stale = raw(
        double, "POST", "/v1/jobs", json={"Job": changed, "EnforceIndex": True, "JobModifyIndex": modify_index + 99}
    )
    assert stale.status_code == 500 and "conflicting job modify index" in stale.text
    update = raw(
        double, "POST", "/v1/jobs", json={"Job": changed, "EnforceIndex": True, "JobModifyIndex": modify_index}
    )
    assert update.status_code == 200 and update.json()["JobModifyIndex"] > modify_index
    assert api(double).job.get_job("once")["Version"] == 1


def test_parse_returns_job_json_with_variables_overriding_defaults(double: NomadDouble) -> None:
    hcl = (REPO / "jobspecs" / "vault-runner.hcl").read_text()
    reply = raw(
        double,
        "POST",
        "/v1/jobs/parse",
        json={"JobHCL": hcl, "Canonicalize": True, "Variables": 'image = "runner:test"\nnamespace = "ops"\n'},
    )
    assert reply.status_code == 200
    job = reply.json()
    assert job["ID"] == "vault-runner" and job["Namespace"] == "ops" and job["Region"] == "global"
    assert job["TaskGroups"][0]["Tasks"][0]["Config"]["image"] == "runner:test"
    bad = raw(double, "POST", "/v1/jobs/parse", json={"JobHCL": "job {", "Canonicalize": True})
    assert bad.status_code == 400
    undeclared = raw(double, "POST", "/v1/jobs/parse", json={"JobHCL": hcl, "Variables": 'nope = "x"'})
    assert undeclared.status_code == 400 and "undeclared variable" in undeclared.text


def test_register_jobspec_vault_runner_parses_as_nomad_would(double: NomadDouble) -> None:
    job = double.register_jobspec(REPO / "jobspecs" / "vault-runner.hcl", variables={"vault_addr": "http://vault:8200"})
    assert job["Namespace"] == "runners" and job["Type"] == "batch" and job["Status"] == "running"
    param = job["ParameterizedJob"]
    assert param["Payload"] == "required"
    assert set(param["MetaRequired"]) == {
        "run_id",
        "attempt",
        "action_id",
        "formula",
        "timeout_seconds",
        "wrapped_accessor",
    }
    assert set(param["MetaOptional"]) == {"secrets", "mounts"}
    group = job["TaskGroups"][0]
    assert group["RestartPolicy"]["Attempts"] == 0 and group["RestartPolicy"]["Mode"] == "fail"
    assert group["ReschedulePolicy"]["Attempts"] == 0 and group["ReschedulePolicy"]["Unlimited"] is False
    task = group["Tasks"][0]
    assert task["DispatchPayload"] == {"File": "claim.json"}
    assert task["Config"]["command"] == "python3" and task["Config"]["args"] == ["-m", "reconciler.runner"]
    assert task["Env"]["VAULT_ADDR"] == "http://vault:8200"
    assert task["KillTimeout"] == 30 * 10**9
    assert api(double, namespace="runners").job.get_job("vault-runner")["JobModifyIndex"] == job["JobModifyIndex"]


# ----------------------------------------------------------------------------- dispatch: idempotency


def test_dispatch_idempotency_token_as_query_parameter(double: NomadDouble) -> None:
    register(double, parent_hcl())
    first = dispatch(double, "work", token="run-1/1").json()
    second = dispatch(double, "work", token="run-1/1").json()
    assert second["DispatchedJobID"] == first["DispatchedJobID"]
    assert len(double.children("work")) == 1


def test_dispatch_idempotency_token_as_body_field(double: NomadDouble) -> None:
    register(double, parent_hcl())
    first = dispatch(double, "work", body={"IdempotencyToken": "run-2/1"}).json()
    second = dispatch(double, "work", body={"IdempotencyToken": "run-2/1"}).json()
    assert second["DispatchedJobID"] == first["DispatchedJobID"]
    assert double.children("work")[0]["DispatchIdempotencyToken"] == "run-2/1"


def test_dispatch_query_token_wins_when_both_are_set(double: NomadDouble) -> None:
    register(double, parent_hcl())
    both = dispatch(double, "work", token="from-query", body={"IdempotencyToken": "from-body"}).json()
    assert dispatch(double, "work", token="from-query").json()["DispatchedJobID"] == both["DispatchedJobID"]
    body_only = dispatch(double, "work", body={"IdempotencyToken": "from-body"}).json()
    assert body_only["DispatchedJobID"] != both["DispatchedJobID"]
    assert len(double.children("work")) == 2


def test_python_nomad_dispatch_idempotency_token_body_key_is_silently_ignored(double: NomadDouble) -> None:
    register(double, parent_hcl())
    n = api(double)
    first = n.job.dispatch_job("work", meta={}, idempotency_token="lost-token")
    second = n.job.dispatch_job("work", meta={}, idempotency_token="lost-token")
    assert first["DispatchedJobID"] != second["DispatchedJobID"]  # two children: the token never reached Nomad
    body = json.loads(double.calls_to("POST", r"/v1/job/work/dispatch")[-1].body)
    assert body["idempotency_token"] == "lost-token" and "IdempotencyToken" not in body
    assert all(c["DispatchIdempotencyToken"] == "" for c in double.children("work"))


def test_dispatch_existing_child_returns_its_id_with_empty_eval_id(double: NomadDouble) -> None:
    register(double, parent_hcl())
    first = dispatch(double, "work", token="t-1").json()
    assert first["EvalID"]
    again = dispatch(double, "work", token="t-1").json()
    assert again["DispatchedJobID"] == first["DispatchedJobID"]
    assert again["EvalID"] == ""
    assert again["JobCreateIndex"] == first["JobCreateIndex"]
    assert len(api(double).job.get_evaluations(first["DispatchedJobID"])) == 1


def test_dispatch_token_protects_nothing_after_garbage_collection(double: NomadDouble) -> None:
    register(double, parent_hcl())
    first = dispatch(double, "work", token="t-gc").json()["DispatchedJobID"]
    wait_status(double, first, "dead")
    assert double.gc() >= 1
    assert raw(double, "GET", f"/v1/job/{first}").status_code == 404
    second = dispatch(double, "work", token="t-gc").json()
    assert second["DispatchedJobID"] != first and second["EvalID"]


def test_dispatch_200_does_not_prove_the_child_exists_issue_26690(double: NomadDouble) -> None:
    register(double, parent_hcl())
    double.race_drop_second = True
    replies: list[dict[str, Any]] = []

    def go() -> None:
        r = dispatch(double, "work", token="raced")
        assert r.status_code == 200
        replies.append(r.json())

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(10)
    ids = {r["DispatchedJobID"] for r in replies}
    assert len(replies) == 2 and len(ids) == 2 and all(r["EvalID"] for r in replies)
    found = [i for i in ids if raw(double, "GET", f"/v1/job/{i}").status_code == 200]
    assert len(found) == 1  # only a read-back tells which one exists
    assert len(double.children("work")) == 1
    again = dispatch(double, "work", token="raced").json()
    assert again["DispatchedJobID"] == found[0] and again["EvalID"] == ""


# ----------------------------------------------------------------------------- dispatch: meta, payload, IDs


def test_dispatch_meta_keys_must_be_declared(double: NomadDouble) -> None:
    register(double, parent_hcl(meta_required=("run_id",), meta_optional=("note",)))
    extra = dispatch(double, "work", body={"Meta": {"run_id": "r", "secret": "x"}})
    assert extra.status_code == 500
    assert extra.text == "Dispatch request included unpermitted metadata keys: [secret]"
    missing = dispatch(double, "work", body={"Meta": {"note": "n"}})
    assert missing.status_code == 500
    assert missing.text == "Dispatch did not provide required meta keys: [run_id]"
    ok = dispatch(double, "work", body={"Meta": {"run_id": "r", "note": "n"}})
    assert ok.status_code == 200


def test_dispatch_payload_limits(double: NomadDouble) -> None:
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    register(double, parent_hcl("opt"))
    too_big = dispatch(double, "opt", body={"Payload": b64(b"x" * (DISPATCH_PAYLOAD_LIMIT + 1))})
    assert too_big.status_code == 500
    assert too_big.text == f"Payload exceeds maximum size; {DISPATCH_PAYLOAD_LIMIT + 1} > {DISPATCH_PAYLOAD_LIMIT}"
    assert dispatch(double, "opt", body={"Payload": b64(b"x" * DISPATCH_PAYLOAD_LIMIT)}).status_code == 200
    assert dispatch(double, "opt").status_code == 200  # default "optional"

    register(double, parent_hcl("forbid", payload="forbidden"))
    forbidden = dispatch(double, "forbid", body={"Payload": b64(b"x")})
    assert forbidden.status_code == 500 and forbidden.text == "Payload provided but forbidden by parameterized job"

    register(double, parent_hcl("need", payload="required"))
    required = dispatch(double, "need")
    assert required.status_code == 500 and required.text == "Payload is not provided but required by parameterized job"


def test_dispatch_child_id_format_and_fields(double: NomadDouble) -> None:
    register(double, parent_hcl(meta={"team": "ops", "tier": "low"}, meta_optional=("tier", "run_id")))
    before = int(time.time())
    plain = dispatch(
        double, "work", body={"Meta": {"run_id": "r1", "tier": "high"}, "Payload": base64.b64encode(b"claim").decode()}
    )
    templated = dispatch(double, "work", body={"IdPrefixTemplate": "release-v1"})
    assert set(plain.json()) == {"DispatchedJobID", "EvalID", "EvalCreateIndex", "JobCreateIndex", "Index"}
    m = re.fullmatch(r"work/dispatch-(\d+)-([0-9a-f]{8})", plain.json()["DispatchedJobID"])
    assert m and before <= int(m.group(1)) <= int(time.time())
    assert re.fullmatch(r"work/dispatch-release-v1-\d+-[0-9a-f]{8}", templated.json()["DispatchedJobID"])

    child = api(double).job.get_job(plain.json()["DispatchedJobID"])
    assert child["ParentID"] == "work" and child["Dispatched"] is True
    assert child["Meta"] == {"team": "ops", "tier": "high", "run_id": "r1"}  # parent's merged with the dispatch's
    assert base64.b64decode(child["Payload"]) == b"claim"
    assert child["Status"] in ("pending", "running", "dead")


def test_who_sees_what_list_stubs_carry_meta_not_payload(double: NomadDouble) -> None:
    register(double, parent_hcl(meta_optional=("run_id",)))
    child = dispatch(
        double, "work", body={"Meta": {"run_id": "r9"}, "Payload": base64.b64encode(b"wrapped-token").decode()}
    ).json()
    stubs = api(double).jobs.get_jobs(prefix="work/dispatch-", meta=True)
    assert [s["ID"] for s in stubs] == [child["DispatchedJobID"]]
    stub = stubs[0]
    for key in ("ID", "ParentID", "Status", "Type", "JobSummary", "Meta"):
        assert key in stub
    assert stub["Meta"] == {"run_id": "r9"} and "Payload" not in stub
    assert "Meta" not in api(double).jobs.get_jobs(prefix="work/dispatch-")[0]
    assert api(double).job.get_job(child["DispatchedJobID"])["Payload"]  # reading it takes read-job


def test_who_sees_what_meta_becomes_nomad_meta_environment(double: NomadDouble, tmp_path: Path) -> None:
    code = "import os; print(os.environ['NOMAD_META_run_id'], os.environ['NOMAD_META_RUN_ID'], os.environ['GREETING'])"
    register(double, parent_hcl(code=code, meta_required=("run_id",), env={"GREETING": "hi ${NOMAD_META_run_id}"}))
    child = dispatch(double, "work", body={"Meta": {"run_id": "r42"}}).json()["DispatchedJobID"]
    wait_status(double, child, "dead")
    alloc = api(double).job.get_allocations(child)[0]
    out = api(double).client.stream_logs.stream(alloc["ID"], "t", "stdout", plain=True)
    assert out.strip() == "r42 r42 hi r42"


# ----------------------------------------------------------------------------- jobs, summary, evaluations


def test_job_status_and_summary(double: NomadDouble) -> None:
    register(double, parent_hcl(code="import time; time.sleep(0.4)"))
    double.placement_delay = 0.2
    child = dispatch(double, "work").json()["DispatchedJobID"]
    assert api(double).job.get_job(child)["Status"] == "pending"
    wait_status(double, child, "running")
    summary = api(double).job.get_summary(child)
    assert set(summary["Summary"]["g"]) >= {"Queued", "Starting", "Running", "Complete", "Failed", "Lost", "Unknown"}
    wait_status(double, child, "dead")
    summary = api(double).job.get_summary(child)["Summary"]["g"]
    assert summary["Complete"] == 1 and summary["Running"] == 0
    assert api(double).job.get_summary("work")["Children"]["Dead"] == 1
    assert api(double).job.get_job("work")["Status"] == "running"  # a parameterized parent stays running


def test_evaluations_explain_why_a_dispatched_job_has_not_started(tmp_path: Path) -> None:
    with NomadDouble(capacity=1, workdir=tmp_path) as d:
        register(d, parent_hcl(code="import time; time.sleep(0.5)"), token=None)
        first = dispatch(d, "work").json()["DispatchedJobID"]
        wait_status(d, first, "running")
        second = dispatch(d, "work").json()["DispatchedJobID"]
        assert d.wait_until(lambda: any(e["Status"] == "blocked" for e in d.evaluations_of(second)), 5)
        evals = api(d, token=None).job.get_evaluations(second)
        blocked = next(e for e in evals if e["Status"] == "blocked")
        original = next(e for e in evals if e["ID"] != blocked["ID"])
        assert original["BlockedEval"] == blocked["ID"] and original["Status"] == "complete"
        for ev in (original, blocked):
            failed = ev["FailedTGAllocs"]["g"]
            assert failed["DimensionExhausted"] == {"cpu": 1} and failed["NodesExhausted"] == 1
            assert {"NodesEvaluated", "NodesFiltered", "ConstraintFiltered", "QuotaExhausted"} <= set(failed)
        assert blocked["QueuedAllocations"] == {"g": 1}
        assert api(d, token=None).job.get_job(second)["Status"] == "pending"
        assert api(d, token=None).job.get_allocations(second) == []
        wait_status(d, second, "dead", timeout=10)  # placed once the first finished
        assert next(e for e in d.evaluations_of(second) if e["ID"] == blocked["ID"])["Status"] == "complete"


# ----------------------------------------------------------------------------- allocations


def test_allocations_exit_code_is_in_the_terminated_event(double: NomadDouble) -> None:
    register(double, parent_hcl(code="import sys; print('bye'); sys.exit(3)"))
    child = dispatch(double, "work").json()["DispatchedJobID"]
    wait_status(double, child, "dead")
    [alloc] = api(double).job.get_allocations(child)
    for key in (
        "ID",
        "JobID",
        "TaskGroup",
        "NodeID",
        "DesiredStatus",
        "ClientStatus",
        "TaskStates",
        "CreateIndex",
        "ModifyIndex",
        "CreateTime",
        "ModifyTime",
    ):
        assert key in alloc
    assert alloc["JobID"] == child and alloc["DesiredStatus"] == "run" and alloc["ClientStatus"] == "failed"
    assert alloc["CreateTime"] > 10**18  # nanoseconds
    state = alloc["TaskStates"]["t"]
    assert state["State"] == "dead" and state["Failed"] is True
    assert not state["StartedAt"].startswith("0001-") and not state["FinishedAt"].startswith("0001-")
    assert events_of(alloc)[:4] == ["Received", "Task Setup", "Started", "Terminated"]
    terminated = next(e for e in state["Events"] if e["Type"] == "Terminated")
    assert terminated["ExitCode"] == 3 and terminated["Signal"] == 0
    full = api(double).allocation.get_allocation(alloc["ID"])
    assert full["Job"]["ID"] == child


def test_allocations_never_started_task_has_no_terminated_event(double: NomadDouble) -> None:
    register(double, parent_hcl())
    double.script_next(
        lambda job: job.get("ParentID") == "work", never_start="Failed to pull `ghcr.io/x:latest`: manifest unknown"
    )
    child = dispatch(double, "work").json()["DispatchedJobID"]
    wait_status(double, child, "dead")
    [alloc] = api(double).job.get_allocations(child)
    assert alloc["ClientStatus"] == "failed"
    assert "Terminated" not in events_of(alloc) and "Started" not in events_of(alloc)
    failing = next(e for e in alloc["TaskStates"]["t"]["Events"] if e["Type"] == "Driver Failure")
    assert failing["DisplayMessage"] == "Failed to pull `ghcr.io/x:latest`: manifest unknown"
    assert double.processes_started(child) == 0


def test_allocations_lost_node_work_may_still_run_and_is_replaced(double: NomadDouble, tmp_path: Path) -> None:
    marks = tmp_path / "marks.txt"
    code = (
        "import os, time\n"
        "p = os.environ['MARKS']; a = os.environ['NOMAD_ALLOC_ID']\n"
        "open(p, 'a').write('start ' + a + '\\n'); time.sleep(0.6); open(p, 'a').write('end ' + a + '\\n')\n"
    )
    register(double, parent_hcl(code=code, env={"MARKS": str(marks)}))
    double.script_next(lambda job: True, lose_after=0.2, lose_as="lost", replace=True)
    child = dispatch(double, "work").json()["DispatchedJobID"]
    assert double.wait_until(lambda: len(double.allocations_of(child)) == 2, 5)
    lost, replacement = api(double).job.get_allocations(child)
    assert lost["ClientStatus"] == "lost" and lost["NextAllocation"] == replacement["ID"]
    assert replacement["PreviousAllocation"] == lost["ID"]
    assert api(double).job.get_job(child)["Status"] == "running"
    wait_status(double, child, "dead")
    assert double.processes_started(child) == 2  # the command ran again
    assert double.wait_until(lambda: marks.read_text().count("end ") == 2, 5)
    text = marks.read_text()
    assert f"end {lost['ID']}" in text  # the lost allocation's work kept running on its node
    allocs = {a["ID"]: a for a in api(double).job.get_allocations(child)}
    assert allocs[lost["ID"]]["ClientStatus"] == "lost"  # nobody heard its exit
    assert allocs[replacement["ID"]]["ClientStatus"] == "complete"


def test_allocations_disconnected_node_turns_unknown_and_child_stays_running(double: NomadDouble) -> None:
    register(double, parent_hcl(code="import time; time.sleep(5)"))
    double.script_next(lambda job: True, lose_after=0.1, lose_as="unknown", replace=False)
    child = dispatch(double, "work").json()["DispatchedJobID"]
    assert double.wait_until(lambda: [a["ClientStatus"] for a in double.allocations_of(child)] == ["unknown"], 5)
    [alloc] = api(double).job.get_allocations(child)
    assert alloc["DesiredStatus"] == "run"
    assert alloc["TaskStates"]["t"]["State"] == "running"
    assert api(double).job.get_job(child)["Status"] == "running"


def test_nomad_reruns_batch_work_restart_in_place_and_reschedule(double: NomadDouble) -> None:
    register(double, parent_hcl(code="import sys; sys.exit(1)", restart_attempts=1, reschedule_attempts=1))
    child = dispatch(double, "work").json()["DispatchedJobID"]
    assert double.wait_until(
        lambda: [a["ClientStatus"] for a in double.allocations_of(child)] == ["failed", "failed"], 10
    )
    wait_status(double, child, "dead")
    first, second = api(double).job.get_allocations(child)
    assert events_of(first).count("Started") == 2 and "Restarting" in events_of(first)
    assert events_of(first)[-1] == "Not Restarting"
    assert first["NextAllocation"] == second["ID"] and second["PreviousAllocation"] == first["ID"]
    assert second["RescheduleTracker"]["Events"][0]["PrevAllocID"] == first["ID"]
    assert double.processes_started(child) == 4

    register(double, parent_hcl("once", code="import sys; sys.exit(1)"))  # attempts = 0 stop both
    once = dispatch(double, "once").json()["DispatchedJobID"]
    wait_status(double, once, "dead")
    time.sleep(0.2)
    assert double.processes_started(once) == 1 and len(double.allocations_of(once)) == 1


# ----------------------------------------------------------------------------- logs


def test_logs_plain_tail_framed_and_errors(double: NomadDouble) -> None:
    register(double, parent_hcl(code="import sys; print('a' * 50 + 'TAIL'); print('oops', file=sys.stderr)"))
    child = dispatch(double, "work").json()["DispatchedJobID"]
    wait_status(double, child, "dead")
    alloc_id = api(double).job.get_allocations(child)[0]["ID"]
    path = f"/v1/client/fs/logs/{alloc_id}"
    tail = raw(
        double, "GET", path, params={"task": "t", "type": "stdout", "plain": "true", "origin": "end", "offset": 5}
    )
    assert tail.status_code == 200 and tail.text == "TAIL\n"
    assert raw(double, "GET", path, params={"task": "t", "type": "stderr", "plain": "true"}).text == "oops\n"

    framed = raw(double, "GET", path, params={"task": "t", "type": "stdout"})
    decoder, text, pos, frames = json.JSONDecoder(), framed.text, 0, []
    while pos < len(text):
        frame, pos = decoder.raw_decode(text, pos)
        frames.append(frame)
    assert frames and set(frames[0]) >= {"Data", "File", "Offset"}
    assert b"".join(base64.b64decode(f["Data"]) for f in frames if f).endswith(b"TAIL\n")

    no_task = raw(double, "GET", path, params={"type": "stdout", "plain": "true"})
    assert no_task.status_code == 400
    wrong_task = raw(double, "GET", path, params={"task": "other", "type": "stdout", "plain": "true"})
    assert wrong_task.status_code == 400


def test_logs_do_not_exist_before_the_task_started(double: NomadDouble) -> None:
    register(double, parent_hcl())
    double.script_next(lambda job: True, never_start="image not found")
    child = dispatch(double, "work").json()["DispatchedJobID"]
    wait_status(double, child, "dead")
    alloc_id = double.allocations_of(child)[0]["ID"]
    with pytest.raises(nomad_exc.URLNotFoundNomadException):
        api(double).client.stream_logs.stream(alloc_id, "t", "stdout", plain=True)


# ----------------------------------------------------------------------------- stop, purge, garbage collection


def test_stop_kills_the_task_and_purge_removes_the_job(double: NomadDouble) -> None:
    register(double, parent_hcl(code="import time; time.sleep(30)"))
    child = dispatch(double, "work").json()["DispatchedJobID"]
    assert double.wait_until(lambda: [a["ClientStatus"] for a in double.allocations_of(child)] == ["running"], 5)
    started = time.monotonic()
    reply = api(double).job.deregister_job(child)
    assert reply["EvalID"]
    assert double.wait_until(lambda: double.allocations_of(child)[0]["ClientStatus"] == "complete", 5)
    assert time.monotonic() - started < 5
    [alloc] = api(double).job.get_allocations(child)
    assert alloc["DesiredStatus"] == "stop"
    assert {"Killing", "Killed"} <= set(events_of(alloc))
    job = api(double).job.get_job(child)
    assert job["Stop"] is True and job["Status"] == "dead"

    other = dispatch(double, "work").json()["DispatchedJobID"]
    api(double).job.deregister_job(other, purge=True)
    with pytest.raises(nomad_exc.URLNotFoundNomadException):
        api(double).job.get_job(other)
    assert api(double).job.get_allocations(other) == []


def test_stop_escalates_to_sigkill_after_the_kill_timeout(double: NomadDouble) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"
    )
    register(double, parent_hcl(code=code))
    double.kill_timeout = 0.3
    child = dispatch(double, "work").json()["DispatchedJobID"]
    alloc_id = ""

    def ready() -> bool:
        nonlocal alloc_id
        allocs = double.allocations_of(child)
        if not allocs:
            return False
        alloc_id = allocs[0]["ID"]
        r = raw(
            double, "GET", f"/v1/client/fs/logs/{alloc_id}", params={"task": "t", "type": "stdout", "plain": "true"}
        )
        return "ready" in r.text

    deadline = time.monotonic() + 5
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    double.stop_behind_back(child)
    assert double.wait_until(lambda: double.allocations_of(child)[0]["ClientStatus"] == "complete", 5)
    terminated = next(
        e for e in double.allocations_of(child)[0]["TaskStates"]["t"]["Events"] if e["Type"] == "Terminated"
    )
    assert terminated["Signal"] == 9 and terminated["ExitCode"] == 137


def test_finished_children_are_garbage_collected_then_gone(tmp_path: Path) -> None:
    with NomadDouble(gc_after=0.2, workdir=tmp_path, mode="simulate") as d:
        d.simulate = lambda job: (0.05, 0, "done\n")
        register(d, parent_hcl(), token=None)
        child = dispatch(d, "work", token="gc-me").json()["DispatchedJobID"]
        assert d.wait_until(lambda: bool(d.allocations_of(child)), 5)
        alloc_id = d.allocations_of(child)[0]["ID"]
        assert d.wait_until(lambda: d.job(child) is None, 5)
        n = api(d, token=None)
        with pytest.raises(nomad_exc.URLNotFoundNomadException):
            n.job.get_job(child)
        with pytest.raises(nomad_exc.URLNotFoundNomadException):
            n.allocation.get_allocation(alloc_id)
        assert n.job.get_allocations(child) == [] and n.job.get_evaluations(child) == []
        assert n.job.get_job("work")["Status"] == "running"  # the parent is not garbage
        again = dispatch(d, "work", token="gc-me").json()
        assert again["DispatchedJobID"] != child and again["EvalID"]  # the token protected nothing


# ----------------------------------------------------------------------------- variables


def test_variables_cas_create_only_update_if_unchanged_conflict_409(double: NomadDouble) -> None:
    v = api(double).variable
    created = v.create_variable("claims/run-1", {"Items": {"state": "taken"}}, cas=0)
    assert created["Items"] == {"state": "taken"}
    with pytest.raises(nomad_exc.VariableConflict) as again:
        v.create_variable("claims/run-1", {"Items": {"state": "mine"}}, cas=0)
    assert again.value.nomad_resp.status_code == 409
    assert again.value.nomad_resp.json()["Items"] == {"state": "taken"}  # the current variable
    index = created["ModifyIndex"]
    updated = v.create_variable("claims/run-1", {"Items": {"state": "done"}}, cas=index)
    with pytest.raises(nomad_exc.VariableConflict):
        v.create_variable("claims/run-1", {"Items": {"state": "late"}}, cas=index)
    assert v.get_variable("claims/run-1")["Items"] == {"state": "done"}
    with pytest.raises(nomad_exc.VariableConflict):
        v.delete_variable("claims/run-1", cas=index)
    assert v.delete_variable("claims/run-1", cas=updated["ModifyIndex"]).status_code == 204
    with pytest.raises(nomad_exc.URLNotFoundNomadException):
        v.get_variable("claims/run-1")


def test_variables_are_durable_and_listed_by_prefix(double: NomadDouble) -> None:
    v = api(double).variable
    v.create_variable("claims/a", {"Items": {"k": "1"}})
    v.create_variable("claims/b", {"Items": {"k": "2"}})
    v.create_variable("other/c", {"Items": {"k": "3"}})
    double.gc()
    listed = api(double).variables.get_variables(prefix="claims/")
    assert [x["Path"] for x in listed] == ["claims/a", "claims/b"]
    assert "Items" not in listed[0]
    empty = raw(double, "PUT", "/v1/var/claims/empty", json={"Items": {}})
    assert empty.status_code == 400


# Variable locks: tests/doubles/test_nomad_locks_acl_contract.py (TTL bounds, 2 x TTL, LockDelay).


# ----------------------------------------------------------------------------- event stream


def _stream(double: NomadDouble, params: list[tuple[str, Any]], *, want: int, timeout: float = 5) -> list[dict[str, Any]]:
    """The first ``want`` messages (heartbeats included) of an event stream."""
    out: list[dict[str, Any]] = []
    with raw(double, "GET", "/v1/event/stream", params=params, stream=True, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"] == "application/json"
        for line in resp.iter_lines(chunk_size=1):
            if line:
                out.append(json.loads(line))
            if len(out) >= want:
                break
    return out


def test_event_stream_ndjson_with_heartbeats(double: NomadDouble) -> None:
    """``nomad/stream/ndjson.go``: a ``{}`` as soon as the stream opens, then one per heartbeat period
    (``nomad/event_endpoint.go``: ``NewJsonStream(ctx, 30*time.Second)``); frames ``{"Index", "Events"}``."""
    assert double.event_heartbeat == 30.0  # the server's period; the test shortens it below
    double.event_heartbeat = 0.3
    register(double, parent_hcl())
    start_index = int(raw(double, "GET", "/v1/jobs").headers["X-Nomad-Index"])
    child = dispatch(double, "work").json()["DispatchedJobID"]
    wait_status(double, child, "dead")
    seen_alloc, seen_job, heartbeats, first = False, False, 0, None
    with raw(
        double,
        "GET",
        "/v1/event/stream",
        params=[("topic", "Allocation"), ("topic", "Job"), ("index", start_index)],
        stream=True,
        timeout=5,
    ) as resp:
        deadline = time.monotonic() + 5
        for line in resp.iter_lines():
            message = json.loads(line)
            first = message if first is None else first
            if message == {}:
                heartbeats += 1
            else:
                assert set(message) == {"Index", "Events"}
                for ev in message["Events"]:
                    assert {"Topic", "Type", "Key", "Namespace", "FilterKeys", "Index", "Payload"} <= set(ev)
                    assert ev["Index"] == message["Index"]
                    if ev["Topic"] == "Allocation" and ev["Payload"]["Allocation"]["JobID"] == child:
                        seen_alloc = True
                    if ev["Topic"] == "Job" and ev["Key"] == child:
                        seen_job = seen_job or ev["Payload"]["Job"]["ID"] == child
                    assert ev["Topic"] in ("Allocation", "Job")
            if (seen_alloc and seen_job and heartbeats >= 2) or time.monotonic() > deadline:
                break
    assert first == {}  # the initial heartbeat, before any frame
    assert seen_alloc and seen_job and heartbeats >= 2


def test_event_stream_resumes_at_its_index_inclusive_and_replays_the_buffer_from_zero(double: NomadDouble) -> None:
    """``nomad/stream/event_broker.go`` ``Subscribe`` / ``event_buffer.go`` ``StartAtClosest``: ``index=I``
    starts at the frame of index I itself; ``index=0`` at the oldest buffered frame."""
    for name in ("a", "b", "c"):
        register(double, parent_hcl(name))
    topic = [("topic", "Job")]
    replay = [m for m in _stream(double, topic + [("index", 0)], want=4) if m]
    indexes = [m["Index"] for m in replay]
    assert [m["Events"][0]["Key"] for m in replay] == ["a", "b", "c"] and indexes == sorted(indexes)
    resumed = [m for m in _stream(double, topic + [("index", indexes[1])], want=3) if m]
    assert [m["Index"] for m in resumed] == indexes[1:]  # the frame at the resume index comes again


def test_event_stream_buffer_keeps_the_last_indexes_only(double: NomadDouble) -> None:
    """``nomad/config.go`` ``EventBufferSize`` (100 by default): older frames are gone; a resume from
    an index no longer buffered starts at the oldest one still there (``StartAtClosest``)."""
    assert double.event_buffer_size == 100
    double.event_buffer_size = 2
    for name in ("a", "b", "c", "d"):
        register(double, parent_hcl(name))
    topic = [("topic", "Job")]
    replay = [m for m in _stream(double, topic + [("index", 0)], want=3) if m]
    assert [m["Events"][0]["Key"] for m in replay] == ["c", "d"]
    from_old = [m for m in _stream(double, topic + [("index", 1)], want=3) if m]
    assert [m["Events"][0]["Key"] for m in from_old] == ["c", "d"]


def test_event_stream_topics_namespace_and_bad_queries(double: NomadDouble) -> None:
    """Topics ``T`` and ``T:key`` and a 400 for more colons; a bad index is a 400
    (``command/agent/event_endpoint.go``); only the asked namespace's events (``nomad/event_endpoint.go``)."""
    register(double, parent_hcl("a"))
    register(double, parent_hcl("b"))
    only_b = [m for m in _stream(double, [("topic", "Job:b"), ("index", 0)], want=2) if m]
    assert [ev["Key"] for m in only_b for ev in m["Events"]] == ["b"]
    double.event_heartbeat = 0.3
    elsewhere = _stream(double, [("topic", "Job"), ("namespace", "other"), ("index", 0)], want=2, timeout=3)
    assert elsewhere == [{}, {}]  # heartbeats only: the jobs are in "default"
    bad_topic = raw(double, "GET", "/v1/event/stream", params={"topic": "Job:a:b"})
    assert bad_topic.status_code == 400
    assert bad_topic.text == "Invalid topic query: error parsing topics: Invalid key value pair for topic, topic: Job:a:b"
    bad_index = raw(double, "GET", "/v1/event/stream", params={"index": "x"})
    assert bad_index.status_code == 400 and bad_index.text.startswith("Unable to parse index: ")


# ----------------------------------------------------------------------------- exec and simulate modes


def test_exec_task_gets_payload_file_and_nomad_environment(double: NomadDouble) -> None:
    code = (
        "import os, json\n"
        "names = ['NOMAD_TASK_DIR', 'NOMAD_SECRETS_DIR', 'NOMAD_ALLOC_DIR', 'NOMAD_ALLOC_ID', 'NOMAD_JOB_ID',\n"
        "         'NOMAD_JOB_PARENT_ID', 'NOMAD_TASK_NAME', 'NOMAD_NAMESPACE']\n"
        "d = {k: os.environ[k] for k in names}\n"
        "d['payload'] = open(os.path.join(os.environ['NOMAD_TASK_DIR'], 'input.bin')).read()\n"
        "d['cwd_payload'] = os.path.exists('local/input.bin')\n"
        "print(json.dumps(d))\n"
    )
    register(double, parent_hcl(code=code))
    child = dispatch(double, "work", body={"Payload": base64.b64encode(b"the-claim").decode()}).json()[
        "DispatchedJobID"
    ]
    wait_status(double, child, "dead")
    alloc = api(double).job.get_allocations(child)[0]
    out = json.loads(api(double).client.stream_logs.stream(alloc["ID"], "t", "stdout", plain=True))
    assert out["payload"] == "the-claim" and out["cwd_payload"] is True
    assert out["NOMAD_ALLOC_ID"] == alloc["ID"] and out["NOMAD_JOB_ID"] == child
    assert (
        out["NOMAD_JOB_PARENT_ID"] == "work" and out["NOMAD_TASK_NAME"] == "t" and out["NOMAD_NAMESPACE"] == "default"
    )
    assert out["NOMAD_TASK_DIR"] == str(double.workdir / alloc["ID"] / "local")
    assert out["NOMAD_SECRETS_DIR"].endswith("/secrets") and out["NOMAD_ALLOC_DIR"].endswith("/alloc")


def test_double_stop_kills_every_task_process(tmp_path: Path) -> None:
    marker = tmp_path / "alive"
    code = (
        "import time, pathlib, os\n"
        "while True:\n"
        "    pathlib.Path(os.environ['MARK']).write_text(str(time.time())); time.sleep(0.05)"
    )
    d = NomadDouble(workdir=tmp_path / "w")
    d.start()
    register(d, parent_hcl(code=code, env={"MARK": str(marker)}), token=None)
    child = requests.post(f"{d.address}/v1/job/work/dispatch", json={}, timeout=5).json()["DispatchedJobID"]
    assert d.wait_until(lambda: marker.exists(), 5)
    d.stop()
    time.sleep(0.2)
    stamp = marker.read_text()
    time.sleep(0.2)
    assert marker.read_text() == stamp, f"{child} still running after stop()"


def test_simulate_mode_runs_a_thousand_concurrent_allocations(tmp_path: Path) -> None:
    with NomadDouble(mode="simulate", workdir=tmp_path) as d:
        d.simulate = lambda job: (30.0, int(job["Meta"]["n"]) % 2, f"n={job['Meta']['n']}\n")
        register(d, parent_hcl("sim", meta_required=("n",)), token=None)
        session = requests.Session()
        for i in range(1000):
            assert (
                session.post(f"{d.address}/v1/job/sim/dispatch", json={"Meta": {"n": str(i)}}, timeout=5).status_code
                == 200
            )
        running = session.get(f"{d.address}/v1/allocations", params={"task_states": "false"}, timeout=10).json()
        assert d.wait_until(
            lambda: sum(1 for a in d._allocs.values() if a.data["ClientStatus"] == "running") == 1000, 10
        )
        assert len(running) == 1000
        assert threading.active_count() < 100  # timers, not a thread per allocation
        # Finish them early: stopping is also handled by the timer heap.
        children = [j["ID"] for j in session.get(f"{d.address}/v1/jobs", params={"prefix": "sim/"}, timeout=10).json()]
        for job_id in children[:10]:
            session.delete(f"{d.address}/v1/job/{job_id}", timeout=5)
        assert d.wait_until(lambda: sum(1 for j in children[:10] if d.job(j)["Status"] == "dead") == 10, 5)
