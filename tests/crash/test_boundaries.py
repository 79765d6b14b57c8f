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

from reconciler.doubles.http import Request

from .support import (
    PushGate,
    Service,
    action_toml,
    children_of,
    merge_actions,
    verify,
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
