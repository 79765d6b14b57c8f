"""SIGKILL at each boundary between an effect and its record, then restart: nothing twice, nothing lost.

For each boundary the double applies the matching call and holds its reply (or
a git hook holds the push); the reconciler subprocess is killed in that window,
the reply released into the void, and a fresh process runs until idle. Then:
the formula started exactly once, the result file has exactly one commit, and
no token the reconciler could have revoked is alive.
"""

from __future__ import annotations

import shutil
from typing import Callable
from urllib.parse import unquote

import pytest

from doubles.http import Request

from .support import (
    RUNNER_PARENT,
    PushGate,
    Service,
    action_toml,
    children_of,
    merge_actions,
    result,
    verify,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)


def _body(req: Request) -> dict:
    try:
        return req.json() or {}
    except ValueError:
        return {}


def claim_put(state: str) -> Callable[[str], Callable[[Request], bool]]:
    """The claim variable write that moves the durable claim of ``action_id`` to ``state``."""

    def for_action(action_id: str) -> Callable[[Request], bool]:
        def match(req: Request) -> bool:
            if req.method != "PUT" or not unquote(req.path).startswith("/v1/var/reconciler/runs/"):
                return False
            items = _body(req).get("Items") or {}
            return items.get("action_id") == action_id and items.get("state") == state

        return match

    return for_action


def token_mint(action_id: str) -> Callable[[Request], bool]:
    def match(req: Request) -> bool:
        return (
            req.method in ("POST", "PUT")
            and req.path == "/v1/auth/token/create/vault-runner"
            and (_body(req).get("meta") or {}).get("action_id") == action_id
        )

    return match


def dispatch(action_id: str) -> Callable[[Request], bool]:
    def match(req: Request) -> bool:
        return (
            req.method in ("POST", "PUT")
            and unquote(req.path) == "/v1/job/vault-runner/dispatch"
            and (_body(req).get("Meta") or {}).get("action_id") == action_id
        )

    return match


def child_read(action_id: str) -> Callable[[Request], bool]:
    """The read-back of the dispatched child (``GET /v1/job/<child>``)."""

    def match(req: Request) -> bool:
        path = unquote(req.path)
        return req.method == "GET" and path.startswith(f"/v1/job/vault-runner/dispatch-{action_id}-") and path.count("/") == 4

    return match


def alloc_read(action_id: str) -> Callable[[Request], bool]:
    def match(req: Request) -> bool:
        path = unquote(req.path)
        return req.method == "GET" and path.startswith(f"/v1/job/vault-runner/dispatch-{action_id}-") and path.endswith("/allocations")

    return match


def revoke(action_id: str) -> Callable[[Request], bool]:
    """The first revoke-accessor call (its body names only an accessor; this test's run is the only one active)."""

    def match(req: Request) -> bool:
        return req.method in ("POST", "PUT") and req.path == "/v1/auth/token/revoke-accessor"

    return match


HOLDS: dict[str, tuple[str, Callable[[str], Callable[[Request], bool]]]] = {
    "claim-recorded": ("nomad", claim_put("dispatching")),
    "token-minted": ("vault", token_mint),
    "child-dispatched": ("nomad", dispatch),
    "child-read-back": ("nomad", child_read),
    "allocation-read": ("nomad", alloc_read),
    "claim-revoked": ("vault", revoke),
    "claim-marked-done": ("nomad", claim_put("done")),
}


CASES = [(b, False) for b in HOLDS] + [("claim-recorded", True), ("child-dispatched", True)]


@pytest.mark.parametrize("boundary,wipe_store", CASES, ids=[b + ("+store-deleted" if w else "") for b, w in CASES])
def test_kill_while_a_reply_is_held_then_restart(cluster, formula, tmp_path, boundary, wipe_store):
    """``wipe_store``: the run store is deleted too; the durable claim alone says what was done."""
    action_id = f"hold-{boundary}" + ("-wiped" if wipe_store else "")
    double_name, matcher = HOLDS[boundary]
    double = getattr(cluster, double_name)
    svc = Service(cluster, tmp_path)
    formula.set_duration(action_id, 1.0)
    hold = double.faults.hold(matcher(action_id))
    merge_actions(cluster, {action_id: action_toml(action_id, formula.name)})
    svc.start()
    arrived = hold.arrived.wait(45)
    svc.kill()  # in the window: the call applied, its reply not yet sent
    double.faults.release()
    assert arrived, f"the {boundary} call never came; log:\n{svc.log_tail()}"
    ghosts = []
    if wipe_store:
        ghost = svc.workdir / "ghost.db"
        shutil.copy(svc.db, ghost)  # for the token audit only
        ghosts.append(ghost)
        for suffix in ("", "-wal", "-shm"):
            svc.db.with_name(svc.db.name + suffix).unlink(missing_ok=True)
    svc.until_idle(timeout=60)

    verdict = verify(cluster, formula, [action_id], [svc.db, *ghosts])
    print(f"{boundary}: {verdict.summary()}")
    assert len(children_of(cluster, action_id)) == 1, "one child per action"
    if wipe_store:
        reasons = " ".join(e["reason"] for e in svc.journal(action_id))
        assert "recovered the durable claim" in reasons, reasons
    if boundary == "token-minted":
        # The minted token's reply died with the process: nobody ever held its wrapping token.
        assert len(verdict.tokens.unreachable) == 1, verdict.summary()
    else:
        assert verdict.tokens.unreachable == [], verdict.summary()


@pytest.mark.parametrize("hook", ["pre-receive", "post-receive"])
def test_kill_during_the_result_push_then_restart(cluster, formula, tmp_path, hook):
    """pre-receive: killed before the refs moved (push lost); post-receive: pushed, but the reply never came."""
    action_id = f"push-{hook}"
    gate = PushGate(cluster, hook)
    svc = Service(cluster, tmp_path)
    formula.set_duration(action_id, 0.5)
    gate.arm()
    merge_actions(cluster, {action_id: action_toml(action_id, formula.name)})
    svc.start()
    try:
        gate.wait_arrived(timeout=45)
    finally:
        svc.kill()
        if (gate.dir / "arrived").exists():
            gate.kill_git()  # the plug is pulled on git too
        gate.release()
    run = svc.run_of(action_id)
    assert run is not None and run["state"] == "collected", run
    svc.until_idle(timeout=60)

    verify(cluster, formula, [action_id], [svc.db])
    run = svc.run_of(action_id)
    assert run["state"] == "reported"
    assert [e["to_state"] for e in svc.journal(action_id)].count("reported") == 1


def nth_revoke(n: int) -> Callable[[str], Callable[[Request], bool]]:
    """The ``n``-th revoke-accessor call from now on (this test's run is the only one active)."""

    def for_action(action_id: str) -> Callable[[Request], bool]:
        seen = [0]

        def match(req: Request) -> bool:
            if req.method not in ("POST", "PUT") or req.path != "/v1/auth/token/revoke-accessor":
                return False
            seen[0] += 1
            return seen[0] == n

        return match

    return for_action


#: Boundaries *inside recovery* of an attempt claimed but never dispatched: recovery writes
#: "retiring", revokes the unused wrapping token and claim token, mints anew and supersedes.
RECOVERY_HOLDS: dict[str, tuple[str, Callable[[str], Callable[[Request], bool]]]] = {
    "retiring-recorded": ("nomad", claim_put("retiring")),
    "wrapping-token-revoked": ("vault", nth_revoke(1)),
    "claim-token-revoked": ("vault", nth_revoke(2)),
    "claim-reminted": ("vault", token_mint),
    "superseding-claim-recorded": ("nomad", claim_put("dispatching")),
}


@pytest.mark.parametrize("boundary", list(RECOVERY_HOLDS))
def test_kill_inside_recovery_then_restart(cluster, formula, tmp_path, boundary):
    """A first kill leaves a durable claim that was never dispatched; a second kill lands inside the
    recovery of it. The action still runs exactly once, with its real exit code: never ``unknown``."""
    action_id = f"recover-{boundary}"
    svc = Service(cluster, tmp_path)
    formula.set_duration(action_id, 0.5)
    first = cluster.nomad.faults.hold(claim_put("dispatching")(action_id))
    merge_actions(cluster, {action_id: action_toml(action_id, formula.name)})
    svc.start()
    arrived = first.arrived.wait(45)
    svc.kill()
    cluster.nomad.faults.release()
    assert arrived, f"the first claim write never came; log:\n{svc.log_tail()}"
    assert children_of(cluster, action_id) == []

    double_name, matcher = RECOVERY_HOLDS[boundary]
    double = getattr(cluster, double_name)
    inside = double.faults.hold(matcher(action_id))
    svc.start()
    arrived = inside.arrived.wait(45)
    svc.kill()
    double.faults.release()
    assert arrived, f"the {boundary} call never came; log:\n{svc.log_tail()}"
    svc.until_idle(timeout=60)

    verdict = verify(cluster, formula, [action_id], [svc.db])
    print(f"{boundary}: {verdict.summary()}")
    res = result(cluster, action_id)
    assert res is not None and res["outcome"] == "success" and res["exit_code"] == 0, res
    assert formula.starts()[action_id] == 1
    assert len(children_of(cluster, action_id)) == 1, "one child per action"
    if boundary == "claim-reminted":
        assert len(verdict.tokens.unreachable) == 1, verdict.summary()
    else:
        assert verdict.tokens.unreachable == [], verdict.summary()


def test_recovery_reads_a_tainted_wrapping_token_as_used(cluster, formula, tmp_path):
    """The runner unwrapped the claim (Vault still shows the wrapping token, tainted: ``num_uses`` -1,
    ``vault/token_store.go`` ``lookupInternal(..., tainted=true)``), the reconciler died before it saw
    the child, and the child was garbage-collected: recovery must not dispatch again. One formula
    run, one child ever dispatched, outcome ``unknown`` (the work ran, its result is lost)."""
    action_id = "tainted-recovery"
    svc = Service(cluster, tmp_path)
    formula.set_duration(action_id, 0.2)
    cluster.vault.reap_delay = 3600.0  # lazy revocation far behind: the lookup stays tainted
    try:
        hold = cluster.nomad.faults.hold(dispatch(action_id))
        merge_actions(cluster, {action_id: action_toml(action_id, formula.name)})
        svc.start()
        arrived = hold.arrived.wait(45)
        svc.kill()
        cluster.nomad.faults.release()
        assert arrived, f"the dispatch never came; log:\n{svc.log_tail()}"
        wait_for(lambda: formula.finished()[action_id] == 1, 45, "the formula to finish")
        [child] = children_of(cluster, action_id)
        wait_for(lambda: all(j["Status"] == "dead" for j in children_of(cluster, action_id)), 30, "the child to finish")
        cluster.nomad.gc()
        assert children_of(cluster, action_id) == [], "the child was garbage-collected"
        tainted = [w for w in cluster.vault.wrapping_tokens() if w["wrapped_accessor"] == child["Meta"]["wrapped_accessor"]]
        assert tainted and tainted[0]["used"] and tainted[0]["num_uses"] == -1
        svc.until_idle(timeout=60)
    finally:
        cluster.vault.reap_delay = 0.0

    verify(cluster, formula, [action_id], [svc.db], allowed_outcomes=("unknown",))
    assert formula.starts()[action_id] == 1
    dispatches = [c for c in cluster.nomad.calls_to("POST", rf"/v1/job/{RUNNER_PARENT}/dispatch") if dispatch(action_id)(c)]
    assert len(dispatches) == 1, "recovery dispatched the claimed attempt again"
    assert result(cluster, action_id)["exit_code"] == -1
