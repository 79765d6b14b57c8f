"""The reconciler's Nomad client against the Nomad double (real HTTP, python-nomad underneath).

What is checked is what reaches the wire and the state of the double's world:
the idempotency token travels as a query parameter, a repeated dispatch creates
no second child, a dispatch is confirmed by reading the child back (issue 26690),
and failures are classified by message, not status.
"""

from __future__ import annotations

import inspect
import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from reconciler.clients.errors import NotFoundError, PermanentError, ReconcilerError, TransientError
from reconciler.clients.nomad import CasConflict, DispatchResult, NomadClient, classify
from doubles.nomad import NomadDouble
from reconciler.ports import NomadAPI
from reconciler.settings import NomadSettings

TOKEN = "client-test-token"
REPO = Path(__file__).resolve().parents[2]
META = {
    "run_id": "run-1",
    "attempt": "1",
    "action_id": "release-v1",
    "formula": "release",
    "timeout_seconds": "60",
    "wrapped_accessor": "acc-1",
    "secrets": "",
}


@pytest.fixture(autouse=True)
def _no_nomad_env(monkeypatch: pytest.MonkeyPatch) -> None:
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
    d = NomadDouble(token=TOKEN, mode="simulate", workdir=tmp_path)
    d.simulate = lambda job: (0.05, 0, "formula says hello\n")
    d.start()
    d.register_jobspec(REPO / "jobspecs" / "vault-runner.hcl", namespace="runners")
    yield d
    d.stop()


@pytest.fixture
def client(double: NomadDouble) -> NomadClient:
    return NomadClient(NomadSettings(addr=double.address, token=TOKEN, namespace="runners", timeout=5))


def dispatch(client: NomadClient, token: str = "run-1/1", **overrides: Any) -> DispatchResult:
    args: dict[str, Any] = {
        "meta": META,
        "payload": b'{"wrapping_token": "s.wrapped"}',
        "idempotency_token": token,
        "id_prefix_template": "release-v1",
    }
    args.update(overrides)
    return client.dispatch("vault-runner", **args)


# ----------------------------------------------------------------------------- dispatch


def test_client_implements_every_verb_of_the_nomad_port() -> None:
    for name, member in vars(NomadAPI).items():
        if name.startswith("_") or not callable(member):
            continue
        wanted = inspect.signature(member).parameters
        have = inspect.signature(getattr(NomadClient, name)).parameters
        for param, spec in wanted.items():
            assert param in have, f"NomadClient.{name} lacks {param}"
            assert (
                have[param].kind == spec.kind
            ), f"NomadClient.{name}({param}) is {have[param].kind}, the port says {spec.kind}"
            assert have[param].default == spec.default, f"NomadClient.{name}({param}) default differs from the port"


def test_dispatch_sends_the_idempotency_token_as_query_parameter(client: NomadClient, double: NomadDouble) -> None:
    result = dispatch(client)
    call = double.calls_to("POST", r"/v1/job/vault-runner/dispatch")[0]
    assert call.query["idempotency_token"] == ["run-1/1"]
    assert call.query["namespace"] == ["runners"]
    body = json.loads(call.body)
    assert "idempotency_token" not in body and "IdempotencyToken" not in body
    assert body["IdPrefixTemplate"] == "release-v1"
    assert "s.wrapped" not in json.dumps(body["Meta"])  # the claim travels in the payload only
    child = double.job(result.job_id, "runners")
    assert child is not None and child["DispatchIdempotencyToken"] == "run-1/1"
    assert result.job_id.startswith("vault-runner/dispatch-release-v1-") and result.eval_id and not result.existing


def test_repeat_dispatch_creates_no_second_child(client: NomadClient, double: NomadDouble) -> None:
    first = dispatch(client)
    second = dispatch(client)
    assert second.job_id == first.job_id
    assert second.existing and second.eval_id == ""
    assert len(double.children("vault-runner")) == 1


def test_dispatch_confirms_by_read_back_after_a_26690_drop(client: NomadClient, double: NomadDouble) -> None:
    double.race_drop_second = True
    results: list[DispatchResult] = []
    threads = [threading.Thread(target=lambda: results.append(dispatch(client, "raced/1"))) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(10)
    assert len(results) == 2
    assert results[0].job_id == results[1].job_id  # the dropped one learned the real child by dispatching again
    assert [c["ID"] for c in double.children("vault-runner")] == [results[0].job_id]
    dispatches = double.calls_to("POST", r"/v1/job/vault-runner/dispatch")
    assert len(dispatches) == 3 and all(c.query["idempotency_token"] == ["raced/1"] for c in dispatches)


def test_dispatch_unconfirmed_read_back_is_transient(client: NomadClient, double: NomadDouble) -> None:
    from reconciler.clients.nomad import READ_ATTEMPTS

    double.faults.fail_next(READ_ATTEMPTS, "error", match=lambda r: r.method == "GET" and r.path.startswith("/v1/job/"))
    with pytest.raises(TransientError):
        dispatch(client)
    again = dispatch(client)  # the caller's later pass, same token
    assert again.existing and len(double.children("vault-runner")) == 1


def test_one_failed_read_is_tried_again(client: NomadClient, double: NomadDouble) -> None:
    first = dispatch(client)
    double.faults.fail_next(1, "drop", match=lambda r: r.method == "GET" and r.path.startswith("/v1/job/"))
    assert client.job(first.job_id)["ID"] == first.job_id


def test_dispatch_dropped_connection_is_transient_and_retry_is_safe(client: NomadClient, double: NomadDouble) -> None:
    double.faults.fail_next(1, "apply-then-drop", match=lambda r: r.path.endswith("/dispatch"))
    with pytest.raises(TransientError) as exc:
        dispatch(client)
    assert exc.value.system == "nomad"
    retried = dispatch(client)
    assert retried.existing
    assert len(double.children("vault-runner")) == 1


def test_dispatch_no_leader_is_transient(client: NomadClient, double: NomadDouble) -> None:
    double.faults.fail_next(1, "error", match=lambda r: r.path.endswith("/dispatch"))
    with pytest.raises(TransientError, match="No cluster leader"):
        dispatch(client)
    assert double.children("vault-runner") == []


def test_dispatch_refusals_are_permanent(client: NomadClient, double: NomadDouble) -> None:
    with pytest.raises(PermanentError, match="unpermitted metadata keys"):
        dispatch(client, meta={**META, "VAULT_TOKEN": "x"})
    with pytest.raises(PermanentError, match="required meta keys"):
        dispatch(client, meta={"run_id": "r"})
    with pytest.raises(PermanentError, match="Payload is not provided"):
        dispatch(client, payload=b"")
    with pytest.raises(PermanentError, match="parameterized job not found"):
        client.dispatch("nope", meta=META, payload=b"x", idempotency_token="t", id_prefix_template="")
    double.stop_behind_back("vault-runner")
    with pytest.raises(PermanentError, match="is stopped"):
        dispatch(client)
    with pytest.raises(ValueError):
        dispatch(client, token="")


def test_refused_token_is_permanent_and_names_the_server(double: NomadDouble) -> None:
    bad = NomadClient(NomadSettings(addr=double.address, token="wrong", namespace="runners"))
    with pytest.raises(PermanentError) as exc:
        bad.job("vault-runner")
    assert f"Nomad at {double.address} refused the token" in str(exc.value)
    assert "wrong" not in str(exc.value)
    assert not isinstance(exc.value, NotFoundError)


def test_unreachable_nomad_is_transient(tmp_path: Path) -> None:
    d = NomadDouble(workdir=tmp_path)
    d.start()
    addr = d.address
    d.stop()
    with pytest.raises(TransientError, match="did not answer"):
        NomadClient(NomadSettings(addr=addr, timeout=2)).job("x")


# ----------------------------------------------------------------------------- reads


def test_reads_of_children_allocations_evaluations_and_logs(client: NomadClient, double: NomadDouble) -> None:
    result = dispatch(client)
    assert double.wait_until(lambda: (double.job(result.job_id) or {}).get("Status") == "dead", 5)
    stubs = client.children("vault-runner")
    assert [s["ID"] for s in stubs] == [result.job_id] and stubs[0]["Meta"]["run_id"] == "run-1"
    [alloc] = client.allocations(result.job_id)
    assert alloc["ClientStatus"] == "complete"
    assert client.allocation(alloc["ID"])["Job"]["ID"] == result.job_id
    assert client.evaluations(result.job_id)[0]["Status"] == "complete"
    assert client.log_tail(alloc["ID"], "runner") == "formula says hello\n"
    assert client.log_tail(alloc["ID"], "runner", max_bytes=6) == "hello\n"
    assert client.log_tail(alloc["ID"], "runner", type="stderr") == ""


def test_missing_objects_read_as_none_or_empty(client: NomadClient) -> None:
    assert client.job("vault-runner/dispatch-0-deadbeef") is None
    assert client.allocations("nope") == [] and client.evaluations("nope") == []
    assert client.allocation("00000000-0000-0000-0000-000000000000") is None
    assert client.variable("no/such") is None
    client.stop("nope")  # already gone is fine
    client.stop("nope", purge=True)


def test_log_tail_is_empty_before_the_task_started(client: NomadClient, double: NomadDouble) -> None:
    double.script_next(lambda job: True, never_start="Failed to pull image")
    result = dispatch(client)
    assert double.wait_until(lambda: (double.job(result.job_id) or {}).get("Status") == "dead", 5)
    [alloc] = client.allocations(result.job_id)
    assert client.log_tail(alloc["ID"], "runner") == ""
    with pytest.raises(PermanentError):
        client.log_tail(alloc["ID"], "not-a-task")


def test_stop_and_purge(client: NomadClient, double: NomadDouble) -> None:
    double.simulate = lambda job: (30.0, 0, "")
    result = dispatch(client)
    client.stop(result.job_id)
    assert client.job(result.job_id)["Stop"] is True
    client.stop(result.job_id, purge=True)
    assert client.job(result.job_id) is None


def test_wait_allocations_blocks_until_an_allocation_changes(client: NomadClient, double: NomadDouble) -> None:
    index = client.wait_allocations(0, 1)
    started = time.monotonic()
    assert client.wait_allocations(index, 1) == index  # nothing happened: the wait ran out
    assert time.monotonic() - started >= 0.9
    threading.Timer(0.2, lambda: dispatch(client)).start()
    started = time.monotonic()
    assert client.wait_allocations(index, 10) > index
    assert time.monotonic() - started < 5


def test_allocation_changes_name_the_jobs_that_moved_past_an_index(client: NomadClient, double: NomadDouble) -> None:
    """Only allocations modified after the index, and (for the watcher) not merely placed."""
    double.simulate = lambda job: (0.3, 0, "")
    first = dispatch(client)
    assert double.wait_until(lambda: double.job(first.job_id)["Status"] == "dead", 10)
    index, changed = client.allocation_changes(0)
    assert first.job_id in changed
    double.simulate = lambda job: (30.0, 0, "")
    second = dispatch(client, token="run-2/1")
    assert second.job_id != first.job_id
    assert double.wait_until(lambda: any(a["ClientStatus"] == "running" for a in double.allocations_of(second.job_id)), 10)
    later, changed = client.allocation_changes(index)
    assert later > index and changed == {second.job_id}
    moved, jobs = client.wait_allocation_changes(index, 1)
    assert moved == later and jobs == {second.job_id: {"running"}}  # with the status it changed to
    assert client.wait_allocation_changes(later, 1) == (later, {})  # nothing since: the wait ran out
    # go-bexpr has no ">": the lists go unfiltered and the comparison is the client's (a real Nomad answers 400)
    listed = double.calls_to("GET", "/v1/allocations")
    assert listed and all("filter" not in c.query for c in listed)
    assert double.malformed == []


def test_event_stream_follows_the_namespace_and_resumes_from_an_index(client: NomadClient, double: NomadDouble) -> None:
    """One connection for every child: the child's allocation events arrive; a resume starts at its index."""
    from reconciler.watchers import allocation_changes

    double.simulate = lambda job: (0.2, 0, "")
    stream = client.event_stream(0)
    frames = iter(stream)
    assert next(frames).index is None  # the server's first heartbeat: the stream is open
    child = dispatch(client).job_id
    seen: dict[str, set[str]] = {}
    last = 0
    deadline = time.monotonic() + 10
    while "complete" not in seen.get(child, set()) and time.monotonic() < deadline:
        frame = next(frames)
        if frame.index is not None:
            last = frame.index
            for job, statuses in allocation_changes(frame.events).items():
                seen.setdefault(job, set()).update(statuses)
    stream.close()
    assert "complete" in seen.get(child, set())
    opened = double.calls_to("GET", "/v1/event/stream")[-1]
    assert opened.query["topic"] == ["Allocation", "Job"] and opened.query["namespace"] == ["runners"]

    resumed = client.event_stream(last)
    frames = iter(resumed)
    assert next(frames).index is None
    again = next(frames)
    assert again.index == last and not resumed.gap  # the resume frame comes again: nothing was lost
    resumed.close()


# ----------------------------------------------------------------------------- jobspecs


def test_parse_hcl_and_register_with_enforce_index(client: NomadClient, double: NomadDouble) -> None:
    hcl = (REPO / "jobspecs" / "vault-runner.hcl").read_text()
    job = client.parse_hcl(hcl, {"image": "runner:${tag}", "namespace": "runners"})
    assert job["TaskGroups"][0]["Tasks"][0]["Config"]["image"] == "runner:${tag}"  # escaped, not interpolated
    current = client.job("vault-runner")
    with pytest.raises(PermanentError, match="job already exists"):
        client.register(job, enforce_index=0)
    reply = client.register(job, enforce_index=current["JobModifyIndex"])
    assert reply["JobModifyIndex"] > current["JobModifyIndex"]
    assert client.job("vault-runner")["TaskGroups"][0]["Tasks"][0]["Config"]["image"] == "runner:${tag}"
    with pytest.raises(PermanentError):
        client.parse_hcl("job {")


# ----------------------------------------------------------------------------- variables


def test_variables_cas_conflict_carries_the_current_variable(client: NomadClient, double: NomadDouble) -> None:
    created = client.put_variable("claims/run-1", {"attempt": "1"}, cas=0)
    with pytest.raises(CasConflict) as conflict:
        client.put_variable("claims/run-1", {"attempt": "2"}, cas=0)
    assert isinstance(conflict.value, TransientError)
    assert conflict.value.current["Items"] == {"attempt": "1"}
    updated = client.put_variable("claims/run-1", {"attempt": "2"}, cas=created["ModifyIndex"])
    assert client.variable("claims/run-1")["Items"] == {"attempt": "2"}
    with pytest.raises(CasConflict):
        client.delete_variable("claims/run-1", cas=created["ModifyIndex"])
    client.delete_variable("claims/run-1", cas=updated["ModifyIndex"])
    assert client.variable("claims/run-1") is None
    writes = double.calls_to("PUT", r"/v1/var/claims/run-1")
    assert all(c.query["namespace"] == ["runners"] for c in writes)  # python-nomad would omit it


def test_variable_locks(client: NomadClient, double: NomadDouble) -> None:
    """Nomad's lock rules (nomad/structs/variables.go, nomad/locks.go): TTL 10 s - 24 h, lost 2 x TTL
    after the last renewal, then LockDelay; the double's lock clock jumps instead of sleeping."""
    now = [1000.0]
    double._vars.clock = lambda: now[0]
    with pytest.raises(PermanentError, match="TTL must be between 10 seconds and 24 hours"):
        client.lock_acquire("locks/reconciler", ttl=5, lock_delay=1)
    lock_id = client.lock_acquire("locks/reconciler", ttl=10, lock_delay=5, holder="host:1")
    assert lock_id
    assert client.variable("locks/reconciler")["Items"] == {"holder": "host:1"}
    assert client.lock_acquire("locks/reconciler", ttl=10, lock_delay=1) is None
    assert client.lock_renew("locks/reconciler", lock_id) is True
    now[0] += 21
    assert client.lock_renew("locks/reconciler", lock_id) is False  # lost after 2 x TTL
    assert client.lock_acquire("locks/reconciler", ttl=10, lock_delay=1) is None  # LockDelay
    now[0] += 5
    other = client.lock_acquire("locks/reconciler", ttl=10, lock_delay=1)
    assert other and other != lock_id
    assert client.lock_release("locks/reconciler", lock_id) is False  # 409: not ours
    assert client.lock_release("locks/reconciler", other) is True
    assert client.lock_release("locks/reconciler", other) is False  # 500: nobody holds it
    with pytest.raises(CasConflict):  # locked variables refuse plain writes
        client.lock_acquire("locks/held", ttl=10, lock_delay=1)
        client.put_variable("locks/held", {"x": "y"}, cas=None)


# ----------------------------------------------------------------------------- settings and classification


def test_client_uses_its_settings_not_the_environment(monkeypatch: pytest.MonkeyPatch, double: NomadDouble) -> None:
    monkeypatch.setenv("NOMAD_TOKEN", "from-the-environment")
    monkeypatch.setenv("NOMAD_NAMESPACE", "elsewhere")
    c = NomadClient(NomadSettings(addr=double.address, token=TOKEN, namespace="runners"))
    assert c.job("vault-runner") is not None
    call = double.calls[-1]
    assert call.header("X-Nomad-Token") == TOKEN and call.query["namespace"] == ["runners"]
    anonymous = NomadClient(NomadSettings(addr=double.address, token=None, namespace="runners"))
    with pytest.raises(PermanentError):
        anonymous.job("vault-runner")
    assert double.calls[-1].header("X-Nomad-Token") is None


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (None, "ConnectionError: connection refused", TransientError),
        (500, "No cluster leader", TransientError),
        (500, "rpc error: No cluster leader", TransientError),
        (500, "no leader", TransientError),
        (500, "rpc error: eval broker disabled", TransientError),
        (502, "", TransientError),
        (503, "Service Unavailable", TransientError),
        (500, "something unexpected happened", TransientError),
        (429, "Too Many Requests", TransientError),
        (409, "variable doesn't hold a lock", TransientError),
        (500, "parameterized job not found", PermanentError),
        (500, "parent job not found", PermanentError),
        (500, 'Specified job "vault-runner" is not a parameterized job', PermanentError),
        (500, 'Specified job "vault-runner" is stopped', PermanentError),
        (500, "Dispatch request included unpermitted metadata keys: [x]", PermanentError),
        (500, "Dispatch did not provide required meta keys: [run_id]", PermanentError),
        (500, "Payload exceeds maximum size; 20000 > 16384", PermanentError),
        (500, "rpc error: Payload exceeds maximum size; 20000 > 16384", PermanentError),
        (500, "Payload provided but forbidden by parameterized job", PermanentError),
        (500, "Payload is not provided but required by parameterized job", PermanentError),
        (500, "Enforcing job modify index 0: job already exists", PermanentError),
        (500, "rpc error: Permission denied", PermanentError),
        (403, "Permission denied", PermanentError),
        (403, "ACL token not found", PermanentError),
        (400, "must provide task name", PermanentError),
        (404, "job not found", NotFoundError),
    ],
)
def test_classify_by_message_not_status(status: int | None, message: str, expected: type[ReconcilerError]) -> None:
    assert classify(status, message) is expected
