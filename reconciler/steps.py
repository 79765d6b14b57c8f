"""One idempotent step per run state: observe, decide, execute.

Each step re-reads what it needs (the action file at the current head, Nomad's
view of the child) and journals a transition *before* anything relies on it:
what an effect will use (attempt, idempotency token, the fact a dispatch was
started) is saved before the call, and what it produced (accessors, job id)
right after, in the transition's own transaction.

A :class:`TransientError` leaves the run where it is with a persisted
``next_try_at`` (see ``loop``); a permanent problem ends the run with its
reason.
"""

from __future__ import annotations

import functools
import hashlib
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from reconciler import actions, claims, gate, jobspecs
from reconciler.clients.errors import PermanentError, TransientError
from reconciler.context import Claim, Context, run_log
from reconciler.decide import Decision, decide_watch
from reconciler.gate_reader import GateReaderAdapter
from reconciler.redact import redacted_tail
from states.machine import State, Transition
from store.models import RunRecord
from store.runs import StaleState, parse_rfc3339

RUNNER_TASK = "runner"
TOKEN_CREATION_ROLE_PATH = "auth/token/create/{role}"
POLICY_PREFIX = "runner-"
MOUNT_POLICY_PREFIX = "runner-mount-"
CLAIM_ONLY_POLICY = "runner-claim"
LOG_LIMIT = 1000
#: Rebind a claim whose wrapping token has less than this many seconds left.
CLAIM_MARGIN = 15.0


# --------------------------------------------------------------------------- pending
@dataclass
class PendingVerdict:
    """What the checks of a pending vault action found; read-only, shared by the step and ``plan``."""

    facts: dict[str, Any] = field(default_factory=dict)
    reject: str | None = None
    cancel: str | None = None
    wait: str | None = None
    note: str = ""


def assess_pending(ctx: Context, run: RunRecord) -> PendingVerdict:
    """Validate, authorize and check Vault for a pending run, changing nothing."""
    head = ctx.gate_head or ctx.head
    if head is None or not run.path:
        return PendingVerdict(reject="no file name gives this action a safe id; rejected without a result file")
    data = ctx.ops.read(head, run.path, max_bytes=ctx.settings.actions.max_file_bytes)
    if data is None:
        return PendingVerdict(cancel="the action file left main before dispatch")
    if hashlib.sha256(data).hexdigest() != run.content_hash:
        return PendingVerdict(cancel="the action file on main changed; the new content is a new run that needs its own approval")
    try:
        action = actions.parse_action(posixpath.basename(run.path), data, ctx.settings.actions)
    except actions.ActionInvalid as exc:
        return PendingVerdict(reject="invalid action: " + "; ".join(exc.problems))
    tier, tiers_note = _tier_for(ctx, action)
    facts: dict[str, Any] = {
        "formula": action.formula,
        "tier": tier,
        "dispatch_mode": action.dispatch_mode,
        "secrets": list(action.secrets),
        "mounts": list(action.mounts),
        "timeout_minutes": action.timeout_minutes,
    }
    try:
        if action.dispatch_mode == "direct":
            gate.check_direct(action, tier)
            facts.update({"approved_via": "direct", "approver": None, "pull_number": None})
        else:
            if ctx.forge is None or not ctx.settings.forge.ops_repo:
                return PendingVerdict(facts, wait="cannot confirm approval: no forge configured (set FORGE_URL, FORGE_TOKEN, FORGE_OPS_REPO)")
            reader = _reader(ctx, head)
            approval = gate.check_approval(run.path, data, reader, primary_branch=ctx.settings.ops.primary_branch)
            facts.update({"approved_via": approval.via, "approver": approval.approver, "pull_number": approval.pull_number})
    except gate.GateRejected as exc:
        return PendingVerdict(facts, reject=f"not authorized: {exc}")
    missing = _missing_in_vault(ctx, action)
    if missing:
        return PendingVerdict(facts, reject="not dispatched: " + "; ".join(missing))
    return PendingVerdict(facts, note=tiers_note)


def step_pending(ctx: Context, run: RunRecord) -> RunRecord:
    """Validate, authorize, check secrets, mint the claim: ``bind`` or ``reject``."""
    verdict = assess_pending(ctx, run)
    facts = verdict.facts
    if verdict.cancel:
        return _cancel(ctx, run, verdict.cancel)
    if verdict.wait:
        return _wait(ctx, run, verdict.wait, 60.0)
    if verdict.reject:
        if facts:
            run = ctx.store.update(run.id, facts)
        return _reject(ctx, run, verdict.reject)
    tier, tiers_note = facts["tier"], verdict.note

    prior = claims.prior_of(ctx, run)
    if prior is not None and prior.attempt > run.attempt:
        return _recover_into_bound(ctx, run, prior, facts)

    held = ctx.held_back()
    if held:
        return _wait(ctx, run, held, 2.0, facts)
    candidate = run.model_copy(update=facts)
    blocked = ctx.reserve_slot(candidate)
    if blocked:
        return _wait(ctx, run, blocked, 2.0, facts)
    try:
        # An attempt whose intent was saved but never bound (a crash in between) is reused, not skipped.
        unbound = run.attempt > 0 and run.idempotency_token == f"{run.id}/{run.attempt}" and not run.token_accessor
        attempt = run.attempt if unbound else run.attempt + 1
        # Journal what the effect will use before making it.
        run = ctx.store.update(run.id, {**facts, "attempt": attempt, "idempotency_token": f"{run.id}/{attempt}"})
        claim = _mint(ctx, run)
        return _transition(
            ctx,
            run,
            Transition.BIND,
            reason=f"approved ({facts['approved_via']}{' by ' + str(facts['approver']) if facts.get('approver') else ''}), tier {tier}, "
            f"secrets present; claim minted for attempt {attempt}" + (f"; {tiers_note}" if tiers_note else ""),
            changes=_claim_changes(claim) | {"waiting": None, "failures": 0, "next_try_at": None, "error": None},
            details={"token_accessor": claim.token_accessor, "pull_request": facts.get("pull_number")},
        )
    finally:
        ctx.release_slot(candidate)


def _reader(ctx: Context, head: str) -> GateReaderAdapter:
    """One gate reader per head and pass: many actions merged together ask the forge once."""
    assert ctx.forge is not None
    forge, repo = ctx.forge, ctx.settings.forge.ops_repo or ""
    merger = ctx.settings.forge.merger_approves
    return ctx.cached(("reader", head), lambda: GateReaderAdapter(ctx.ops, forge, repo, head, merger_approves=merger))


def _tier_for(ctx: Context, action: actions.Action) -> tuple[str, str]:
    """The action's tier from the tiers file as of its last approved change."""
    note = ""
    tiers: dict[str, str] = {}
    head = ctx.gate_head or ctx.head or ""
    if ctx.forge is not None and ctx.settings.forge.ops_repo:
        reader = _reader(ctx, head)
        trusted = ctx.cached(
            ("tiers", head), lambda: gate.trusted_tiers("vault/policy.toml", reader, primary_branch=ctx.settings.ops.primary_branch)
        )
        if trusted.ignored:
            note = f"tiers file: {len(trusted.ignored)} unapproved change(s) ignored"
        content = trusted.content
    else:
        content = None
        note = "tiers file not trusted without a forge: every formula is high tier"
    if content is not None:
        try:
            tiers = actions.parse_tiers(content)
        except actions.TiersInvalid as exc:
            note = f"tiers file unusable ({exc}); every formula is high tier"
    return actions.effective_tier(action.formula, action.blast_radius, tiers), note


def _missing_in_vault(ctx: Context, action: actions.Action) -> list[str]:
    problems: list[str] = []
    for name in action.secrets:
        policy = POLICY_PREFIX + name
        if not ctx.vault.policy_exists(policy):
            problems.append(f"Vault policy {policy} does not exist (write it: see jobspecs/vault/)")
        if not ctx.vault.secret_present(name):
            problems.append(
                f"secret {name} is missing in Vault (no live version at {ctx.settings.vault.kv_mount}/{ctx.settings.vault.secret_prefix}/{name})"
            )
    for alias in action.mounts:
        policy = MOUNT_POLICY_PREFIX + alias
        if not ctx.vault.policy_exists(policy):
            problems.append(f"Vault policy {policy} does not exist")
        if not ctx.vault.mount_present(alias):
            problems.append(f"mount {alias} is missing in Vault ({ctx.settings.vault.secret_prefix}/mounts/{alias})")
    return problems


def claim_policies(run: RunRecord) -> list[str]:
    """The claim's policies: one per declared secret and mount, and always ``runner-claim`` (revoke-self)."""
    return [POLICY_PREFIX + s for s in run.secrets] + [MOUNT_POLICY_PREFIX + m for m in run.mounts] + [CLAIM_ONLY_POLICY]


def _mint(ctx: Context, run: RunRecord) -> Claim:
    loop = ctx.settings.loop
    timeout = int(run.timeout_minutes or 60) * 60
    max_ttl = loop.placement_deadline + timeout + loop.token_grace
    wrapped = ctx.vault.mint_claim(
        claim_policies(run),
        ttl=max_ttl,
        explicit_max_ttl=max_ttl,
        wrap_ttl=loop.placement_deadline,
        meta={"run_id": run.id, "attempt": str(run.attempt), "action_id": run.action_id or ""},
        display_name=_display_name(run),
    )
    claim = Claim(
        wrapping_token=wrapped.wrapping_token,
        wrapping_accessor=wrapped.wrapping_accessor,
        token_accessor=wrapped.token_accessor,
        expires_at=ctx.now() + loop.placement_deadline,
    )
    ctx.claims[run.id] = claim
    return claim


def _display_name(run: RunRecord) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", f"run-{run.action_id or run.id}-{run.attempt}")
    return base[:60]


def _claim_changes(claim: Claim) -> dict[str, Any]:
    from store.runs import rfc3339

    return {
        "token_accessor": claim.token_accessor,
        "wrapping_accessor": claim.wrapping_accessor,
        "claim_expires_at": rfc3339(claim.expires_at),
    }


def revoke_claim(ctx: Context, run: RunRecord) -> None:
    """Revoke the attempt's claim token and its wrapping token (idempotent)."""
    ctx.claims.pop(run.id, None)

    def revoke(accessor: str) -> None:
        try:
            ctx.vault.revoke_accessor(accessor)
        except Exception:
            ctx.observe("revocation_failed")
            raise
        ctx.revoked.add(accessor)

    live = [a for a in (run.token_accessor, run.wrapping_accessor) if a and a not in ctx.revoked]
    ctx.together(*[functools.partial(revoke, a) for a in live])


def _recover_into_bound(ctx: Context, run: RunRecord, prior: claims.ClaimRecord, facts: dict[str, Any]) -> RunRecord:
    """The store lost what an earlier process did (database gone): take its durable claim over."""
    run = ctx.store.update(
        run.id, {**facts, "attempt": prior.attempt, "idempotency_token": prior.idempotency_token or f"{run.id}/{prior.attempt}"}
    )
    run = _transition(
        ctx,
        run,
        Transition.BIND,
        reason=f"recovered the durable claim of attempt {prior.attempt} left by an earlier process (Nomad variable {claims.path_for(run.id)})",
        changes={
            "token_accessor": prior.token_accessor or None,
            "wrapping_accessor": prior.wrapping_accessor or None,
            "dispatch_started_at": ctx.stamp(),
            "nomad_job_id": prior.job_id or None,
        },
        details={"recovered": True, "claim_state": prior.state},
    )
    if prior.state == "done":
        return _collect_unknown(
            ctx, run, "an earlier process already ran and reported this action, and its result file is gone from main; not re-running it"
        )
    return run


# --------------------------------------------------------------------------- policy-bound
def step_bound(ctx: Context, run: RunRecord) -> RunRecord:
    """Dispatch the attempt (adopting a child an earlier process may have created)."""
    parent = ctx.settings.nomad.runner_job
    claim = ctx.claims.get(run.id)
    if claim is not None and claim.token_accessor != run.token_accessor:
        claim = None
    held = ctx.held_back()
    if held:
        return _wait(ctx, run, held, 2.0)
    supersede = False
    if claim is None:
        # No claim in memory: an earlier process may have dispatched. Look before acting.
        prior = claims.read(ctx, run.id)
        if prior is not None and prior.attempt >= run.attempt and prior.state != "done":
            resolved = _resolve_prior(ctx, parent, run, prior)
            if resolved is not None:
                return resolved
            supersede = True
    if claim is None or claim.expires_at - ctx.now() < CLAIM_MARGIN:
        why = "no claim held in memory (restart)" if claim is None else "the claim's wrapping token is about to expire"
        revoke_claim(ctx, run)
        claim = _mint(ctx, run)
        run = _transition(
            ctx,
            run,
            Transition.REBIND,
            reason=f"{why}: old claim revoked, new claim minted for attempt {run.attempt}",
            changes=_claim_changes(claim),
            details={"token_accessor": claim.token_accessor},
        )
    guard_parent(ctx, parent)
    meta = {
        "run_id": run.id,
        "attempt": str(run.attempt),
        "action_id": run.action_id or "",
        "formula": run.formula or "",
        "timeout_seconds": str(int(run.timeout_minutes or 60) * 60),
        "wrapped_accessor": claim.token_accessor,
        "secrets": ",".join(run.secrets),
        "mounts": ",".join(run.mounts),
    }
    payload = json.dumps({"version": 1, "wrapping_token": claim.wrapping_token}).encode()
    token = run.idempotency_token or f"{run.id}/{run.attempt}"
    run = ctx.store.update(run.id, {"dispatch_started_at": ctx.stamp(), "idempotency_token": token})
    try:
        claims.record_attempt(ctx, run, claim, supersede=supersede)
    except claims.PriorClaim as exc:
        # Another process claimed this attempt since we looked: leave it to the next pass.
        revoke_claim(ctx, run)
        raise TransientError(str(exc), system="nomad", delay=1.0) from exc
    try:
        result = ctx.nomad.dispatch(
            parent,
            meta=meta,
            payload=payload,
            idempotency_token=token,
            id_prefix_template=_prefix(run),
        )
    except PermanentError as exc:
        revoke_claim(ctx, run)
        return _transition(
            ctx,
            run,
            Transition.COLLECT,
            reason=f"dispatch refused by Nomad: {exc}",
            changes={"outcome": "failure", "exit_code": 1, "error": f"dispatch refused by Nomad: {exc}"},
        )
    job_id = result.job_id
    child_accessor = None
    if getattr(result, "existing", True):
        # Nomad answered with a child that already carried this token: whose claim does it hold?
        child = ctx.nomad.job(job_id)
        child_accessor = ((child or {}).get("Meta") or {}).get("wrapped_accessor")
    changes: dict[str, Any] = {"nomad_job_id": job_id, "dispatched_at": ctx.stamp(), "waiting": "waiting for placement"}
    note = ""
    if child_accessor and child_accessor != claim.token_accessor:
        # An earlier process's dispatch with this idempotency token won: adopt it, drop our claim.
        ctx.vault.revoke_accessor(claim.token_accessor)
        ctx.vault.revoke_accessor(claim.wrapping_accessor)
        ctx.claims.pop(run.id, None)
        changes.update({"token_accessor": child_accessor, "wrapping_accessor": None})
        note = "; an earlier dispatch of this attempt already existed and was adopted"
    # The child's id is not written back to the durable claim: recovery finds the child by its
    # meta (run_id, attempt) in one listing, and every dispatch saves a Nomad write.
    ctx.observe("dispatch_latency", max(0.0, ctx.now() - _desired_since(ctx, run)))
    return _transition(
        ctx,
        run,
        Transition.DISPATCH,
        reason=f"Nomad holds {job_id} (read back){note}",
        changes=changes,
        details={"job_id": job_id, "idempotency_token": token, "eval_id": getattr(result, "eval_id", None)},
    )


#: Seconds a parent-job check stays good (two Nomad reads; not worth repeating per dispatch).
PARENT_CHECK_TTL = 10.0


def guard_parent(ctx: Context, parent: str) -> None:
    """Refuse, loudly, to dispatch a parent job changed behind the reconciler's back (jobspecs.check_parent)."""
    checked = ctx.parent_checks.get(parent)
    if checked is not None and ctx.now() - checked < PARENT_CHECK_TTL:
        return
    result = jobspecs.check_parent(ctx.nomad, parent)  # raises PermanentError on drift
    if result.warning and parent not in ctx.parent_warned:
        ctx.parent_warned.add(parent)
        run_log(RunRecord(id=parent)).warning("%s", result.warning)
    ctx.parent_checks[parent] = ctx.now()


def _desired_since(ctx: Context, run: RunRecord) -> float:
    """When the action became desired: its source commit's time, else the run's creation."""
    sha = run.source_commit
    try:
        if sha and sha not in ctx.commit_times and hasattr(ctx.ops, "commit"):
            ctx.commit_times[sha] = parse_rfc3339(ctx.ops.commit(sha).committed_at)  # type: ignore[attr-defined]
        if sha in ctx.commit_times:
            return ctx.commit_times[sha]
    except Exception:
        pass
    return parse_rfc3339(run.created_at) if run.created_at else ctx.now()


def _prefix(run: RunRecord) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", run.action_id or run.id)[:40]


def _resolve_prior(ctx: Context, parent: str, run: RunRecord, prior: claims.ClaimRecord) -> RunRecord | None:
    """What became of an attempt an earlier process claimed: adopt its child, collect it as unknown,
    or (None) establish that nothing ran so a fresh claim may be dispatched."""
    child = ctx.nomad.job(prior.job_id) if prior.job_id else None
    if child is None:
        child = _find_child(ctx, parent, run.id, prior.attempt)
    if child is not None:
        return _adopt(ctx, run, child, prior)
    if prior.state == claims.RETIRING or _unused(ctx.vault.lookup_accessor(prior.wrapping_accessor) if prior.wrapping_accessor else None):
        # Nobody unwrapped the claim: nothing ran. Say so durably first, then retire it (a kill in
        # between leaves "retiring", which the next process reads the same way); the caller mints anew.
        prior = claims.retire(ctx, run, prior)
        for accessor in (prior.wrapping_accessor, prior.token_accessor):
            if accessor and accessor not in ctx.revoked:
                ctx.vault.revoke_accessor(accessor)
                ctx.revoked.add(accessor)
        ctx.claims.pop(run.id, None)
        return None
    if run.attempt != prior.attempt or run.token_accessor != prior.token_accessor:
        run = ctx.store.update(run.id, {"attempt": prior.attempt, "token_accessor": prior.token_accessor or run.token_accessor})
    return _collect_unknown(
        ctx,
        run,
        f"attempt {prior.attempt} was claimed by an earlier process; its claim token was used or expired but Nomad no longer "
        "holds its child (garbage-collected or purged), so the work may have run: outcome unknown, not re-run (retry only by an operator)",
    )


def _unused(info: dict[str, Any] | None) -> bool:
    """Whether a wrapping token's lookup proves nobody unwrapped it.

    ``lookup-accessor`` also answers for a *tainted* token (``vault/token_store.go``
    ``lookupInternal(..., tainted=true)``): one just unwrapped and awaiting lazy revocation
    shows ``num_uses`` -1, an expired one not yet reaped ``ttl`` <= 0. Both count as used.
    """
    if info is None:
        return False
    try:
        num_uses = int(info.get("num_uses") or 0)
        ttl = int(info.get("ttl") or 0)
    except (TypeError, ValueError):
        return False
    return num_uses >= 0 and ttl > 0


def _find_child(ctx: Context, parent: str, run_id: str, attempt: int) -> dict[str, Any] | None:
    for stub in ctx.nomad.children(parent, meta=True):
        meta = stub.get("Meta") or {}
        if meta.get("run_id") == run_id and meta.get("attempt") == str(attempt):
            return stub
    return None


def _adopt(ctx: Context, run: RunRecord, child: dict[str, Any], prior: claims.ClaimRecord) -> RunRecord:
    accessor = (child.get("Meta") or {}).get("wrapped_accessor") or prior.token_accessor
    claims.record_child(ctx, run, accessor, prior.wrapping_accessor, child["ID"])
    return _transition(
        ctx,
        run,
        Transition.DISPATCH,
        reason=f"found {child['ID']} already dispatched for attempt {prior.attempt} by an earlier process; adopted",
        changes={
            "nomad_job_id": child["ID"],
            "attempt": prior.attempt,
            "dispatched_at": run.dispatch_started_at or ctx.stamp(),
            "token_accessor": accessor,
            "wrapping_accessor": prior.wrapping_accessor or run.wrapping_accessor,
        },
        details={"job_id": child["ID"], "adopted": True},
    )


def _collect_unknown(ctx: Context, run: RunRecord, reason: str) -> RunRecord:
    revoke_claim(ctx, run)
    return _transition(
        ctx, run, Transition.COLLECT, reason=reason,
        changes={"outcome": "unknown", "exit_code": -1, "error": reason, "finished_at": ctx.stamp(), "waiting": None},
    )


# --------------------------------------------------------------------------- dispatched / running
@dataclass(frozen=True)
class ChildView:
    """What Nomad shows of a run's child: the job, its allocations, and (when nothing started) its evaluations."""

    job: dict[str, Any] | None
    allocations: list[dict[str, Any]]
    evaluations: list[dict[str, Any]] | None


def observe_child(ctx: Context, run: RunRecord) -> ChildView:
    """Nomad's view of the child: its allocations, and the job itself only when they do not settle it.

    A missing job's allocation list is 200 ``[]`` (CONTRACTS.md rev. 2), so an empty list needs the job
    read. Allocations Nomad still wants (``DesiredStatus`` ``run``, every one) belong to a job nobody stopped
    or purged - a stopped or deregistered job has the scheduler set them to ``stop`` (``scheduler/reconcile.go``
    ``handleStop``: ``markStop(..., allocNotNeeded)``; the
    double's ``_stop_job``) - and a finished one's exit code is the outcome whatever befell the job after:
    then the job read is skipped, which is one request less for each look of a watched run.
    """
    job_id = run.nomad_job_id
    if not job_id:
        return ChildView(None, [], None)
    allocs = ctx.nomad.allocations(job_id)
    if allocs and all(a.get("DesiredStatus") == "run" for a in allocs):
        job: dict[str, Any] | None = {"ID": job_id, "_seen": "through its allocations"}
    else:
        job = ctx.nomad.job(job_id)
        if job is None:
            allocs = []
    evals = None
    started = ("running", "complete", "failed", "lost", "unknown")
    if run.state == State.DISPATCHED and job is not None and not any(a.get("ClientStatus") in started for a in allocs):
        evals = ctx.nomad.evaluations(job_id or "")
    return ChildView(job, allocs, evals)


def decide_for(ctx: Context, run: RunRecord, child: ChildView) -> Decision:
    """``decide_watch`` for ``run`` as it is stored, with what Nomad showed."""
    return decide_watch(
        state=State(run.state),
        attempt=run.attempt,
        dispatched_at=parse_rfc3339(run.dispatched_at) if run.dispatched_at else None,
        started_at=parse_rfc3339(run.started_at) if run.started_at else None,
        timeout_minutes=int(run.timeout_minutes or 60),
        job=child.job,
        allocations=child.allocations,
        evaluations=child.evaluations,
        now=ctx.now(),
        placement_deadline=float(ctx.settings.loop.placement_deadline),
        max_attempts=ctx.settings.loop.max_attempts,
        task=RUNNER_TASK if run.kind == "vault-action" else "sidecar",
    )


def step_watch(ctx: Context, run: RunRecord) -> RunRecord:
    """Watch the child: start, collect (exit, timeout, never started, lost), or replace."""
    child = observe_child(ctx, run)
    for _ in range(2):
        decision = decide_for(ctx, run, child)
        run = execute(ctx, run, decision)
        if decision.transition != Transition.START:
            break
    return run


def execute(ctx: Context, run: RunRecord, decision: Decision) -> RunRecord:
    """Carry out a decision's effects, then journal its transition."""
    if decision.transition is None:
        changes: dict[str, Any] = {"waiting": decision.waiting}
        if decision.requeue_after:
            changes["next_try_at"] = ctx.stamp(ctx.now() + decision.requeue_after)
        if run.waiting != decision.waiting or decision.requeue_after:
            return ctx.store.update(run.id, changes)
        return run
    changes = dict(decision.changes)
    if decision.stop_job and run.nomad_job_id:
        ctx.nomad.stop(run.nomad_job_id)
    if decision.fetch_logs_from:
        changes["log_tail"] = collect_logs(ctx, run, decision.fetch_logs_from)
    if decision.revoke_claim:
        revoke_claim(ctx, run)
    if decision.transition == Transition.REPLACE:
        changes.update(
            {
                "attempt": run.attempt + 1,
                "idempotency_token": f"{run.id}/{run.attempt + 1}",
                "nomad_job_id": None,
                "alloc_id": None,
                "dispatched_at": None,
                "dispatch_started_at": None,
                "token_accessor": None,
                "wrapping_accessor": None,
                "error": decision.reason,
            }
        )
    if decision.transition == Transition.COLLECT:
        changes.setdefault("finished_at", ctx.stamp())
        if changes.get("finished_at") is None:
            changes["finished_at"] = ctx.stamp()
        if changes.get("outcome") != "success":
            changes["error"] = decision.reason
        changes["waiting"] = None
    if decision.transition == Transition.START:
        changes["waiting"] = "running"
        changes.setdefault("started_at", ctx.stamp())
        if changes.get("started_at") is None:
            changes["started_at"] = ctx.stamp()
    changes.setdefault("next_try_at", None)
    return _transition(ctx, run, decision.transition, reason=decision.reason, changes=changes, details=decision.details)


def collect_logs(ctx: Context, run: RunRecord, alloc_id: str) -> str:
    """The allocation's log tail, redacted (declared values and secret shapes) before it is cut."""
    task = RUNNER_TASK if run.kind == "vault-action" else "sidecar"

    def tail(kind: str) -> str:
        try:
            return ctx.nomad.log_tail(alloc_id, task, type=kind, max_bytes=16384) or ""
        except TransientError:
            return ""

    def declared_values() -> dict[str, str]:
        if not run.secrets:
            return {}
        try:
            return ctx.vault.secret_values(list(run.secrets))
        except (TransientError, PermanentError):
            return {}

    if run.secrets:
        stdout, stderr, values = ctx.together(functools.partial(tail, "stdout"), functools.partial(tail, "stderr"), declared_values)
    else:  # nothing declared to redact by value: no third helper to hand off to
        (stdout, stderr), values = ctx.together(functools.partial(tail, "stdout"), functools.partial(tail, "stderr")), {}
    parts = [text for text in (stdout, "[stderr]\n" + stderr if stderr else "") if text]
    return redacted_tail("\n".join(parts), values, LOG_LIMIT)


# --------------------------------------------------------------------------- helpers
def _transition(
    ctx: Context,
    run: RunRecord,
    transition: Transition,
    *,
    reason: str,
    changes: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> RunRecord:
    new = ctx.store.transition(run.id, transition, expect=run.state, reason=reason, changes=changes, details=details)
    run_log(new).info("%s: %s -> %s: %s", transition.value, State(run.state).value, State(new.state).value, reason)
    return new


def _reject(ctx: Context, run: RunRecord, reason: str) -> RunRecord:
    return _transition(
        ctx, run, Transition.REJECT, reason=reason, changes={"outcome": "rejected", "exit_code": 1, "error": reason, "waiting": None}
    )


def _cancel(ctx: Context, run: RunRecord, reason: str) -> RunRecord:
    """An automatic cancel (file left or changed): no result file is written for it."""
    revoke_claim(ctx, run)
    return _transition(
        ctx,
        run,
        Transition.CANCEL,
        reason=reason,
        changes={"outcome": "cancelled", "exit_code": 1, "error": reason, "result_path": None, "waiting": None},
    )


def _wait(ctx: Context, run: RunRecord, why: str, after: float, facts: dict[str, Any] | None = None) -> RunRecord:
    return ctx.store.update(run.id, {**(facts or {}), "waiting": why, "next_try_at": ctx.stamp(ctx.now() + after)})


STEPS = {
    State.PENDING: step_pending,
    State.POLICY_BOUND: step_bound,
    State.DISPATCHED: step_watch,
    State.RUNNING: step_watch,
}


__all__ = ["STEPS", "StaleState", "revoke_claim", "execute", "collect_logs", "claim_policies"]
