"""Durable dispatch claims: one Nomad Variable per run, ``reconciler/runs/<run-id>``.

Before an attempt is dispatched, the reconciler records it in Nomad itself
(created only if absent, updated only by check-and-set): the attempt, its
idempotency token and its claim token's accessors. The child is not written
back (a write per dispatch saved): its meta names the run and the attempt, so
recovery finds it in one listing; a child adopted by recovery is recorded.
Variables are never garbage-collected, so the record outlives the child and
the reconciler's own database.

When a run is found in a state that does not know what a previous process did
(no claim held in memory, or a run rebuilt from scratch), the record answers:

* a child is recorded or findable by its meta → adopt it;
* otherwise the attempt's wrapping token tells whether anything could have
  run: still alive and untainted → nothing unwrapped it, nothing ran: record
  the claim ``retiring`` (durably, before anything is revoked), revoke it and
  start a fresh attempt; gone, or tainted (just unwrapped and awaiting lazy
  revocation, or expired and not yet reaped) → the work may have run and its
  child is gone: the outcome is unknown, and the run is never re-run
  automatically.

Recovery is itself crash-safe: a process killed after ``retiring`` was written
leaves a record the next process reads as "established that nothing ran", so
it revokes again (idempotent) and supersedes; it never re-reads the revoked
wrapping token as "used". ``unknown`` only ever means the work may have run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.clients.errors import ConflictError, TransientError
from reconciler.context import Claim, Context
from store.models import RunRecord

PREFIX = "reconciler/runs/"
RETIRING = "retiring"


class PriorClaim(Exception):
    """A previous process claimed this run's attempt; ``record`` says what it knew."""

    def __init__(self, record: "ClaimRecord") -> None:
        super().__init__(f"attempt {record.attempt} of {record.run_id} was claimed by an earlier process")
        self.record = record


@dataclass(frozen=True)
class ClaimRecord:
    run_id: str
    attempt: int
    idempotency_token: str
    token_accessor: str
    wrapping_accessor: str
    job_id: str
    state: str
    """``dispatching`` (recorded before the dispatch call), ``dispatched`` (child confirmed), ``done``,
    ``retiring`` (recovery established nothing ran and is about to revoke the claim and supersede it)."""
    modify_index: int

    @classmethod
    def from_variable(cls, run_id: str, var: dict[str, Any]) -> "ClaimRecord":
        items = var.get("Items") or {}
        return cls(
            run_id=run_id,
            attempt=int(items.get("attempt") or 0),
            idempotency_token=items.get("idempotency_token", ""),
            token_accessor=items.get("token_accessor", ""),
            wrapping_accessor=items.get("wrapping_accessor", ""),
            job_id=items.get("job_id", ""),
            state=items.get("state", ""),
            modify_index=int(var.get("ModifyIndex") or 0),
        )


def path_for(run_id: str) -> str:
    return PREFIX + run_id


def read(ctx: Context, run_id: str) -> ClaimRecord | None:
    var = ctx.nomad.variable(path_for(run_id))  # type: ignore[attr-defined]
    return ClaimRecord.from_variable(run_id, var) if var else None


def known_paths(ctx: Context) -> set[str] | None:
    """Every claim record's path, listed once per pass (None when the client cannot list)."""
    lister = getattr(ctx.nomad, "variable_paths", None)
    if lister is None:
        return None
    return ctx.cached(("claim-paths",), lambda: lister(PREFIX))


def prior_of(ctx: Context, run: RunRecord) -> ClaimRecord | None:
    """The durable record of a run the store may have forgotten (only looked up when one exists)."""
    paths = known_paths(ctx)
    if paths is not None and path_for(run.id) not in paths:
        return None
    return read(ctx, run.id)


def _items(run: RunRecord, claim: Claim, *, job_id: str = "", state: str) -> dict[str, str]:
    return {
        "run_id": run.id,
        "action_id": run.action_id or "",
        "attempt": str(run.attempt),
        "idempotency_token": run.idempotency_token or f"{run.id}/{run.attempt}",
        "token_accessor": claim.token_accessor,
        "wrapping_accessor": claim.wrapping_accessor,
        "job_id": job_id,
        "state": state,
    }


def record_attempt(ctx: Context, run: RunRecord, claim: Claim, *, supersede: bool = False) -> ClaimRecord:
    """Record that ``run``'s current attempt is about to be dispatched with ``claim``.

    Raises :class:`PriorClaim` when the record shows this attempt (or a later
    one) claimed with another token by an earlier process.
    """
    path = path_for(run.id)
    known = known_paths(ctx)
    # A path absent from this pass's listing is created with cas=0 without a read first;
    # if it appeared since, Nomad refuses the write and the next round reads it.
    unread = known is not None and path not in known and run.id not in ctx.claim_records
    for _ in range(3):
        current = None if unread else read(ctx, run.id)
        unread = False
        if current is not None:
            if current.token_accessor == claim.token_accessor:
                return current
            if current.attempt >= run.attempt and current.state != "done" and not supersede:
                raise PriorClaim(current)
            cas = current.modify_index
        else:
            cas = 0
        try:
            var = ctx.nomad.put_variable(path, _items(run, claim, state="dispatching"), cas=cas)  # type: ignore[attr-defined]
            record = ClaimRecord.from_variable(run.id, var or {"Items": _items(run, claim, state="dispatching")})
            ctx.claim_records[run.id] = record
            return record
        except ConflictError:
            continue
    raise TransientError(f"could not record the claim of {run.id} in Nomad variable {path}: it keeps changing", system="nomad")


def _current(ctx: Context, run: RunRecord) -> ClaimRecord | None:
    """The record as this process last wrote it, else as Nomad has it."""
    return ctx.claim_records.get(run.id) or read(ctx, run.id)


def _rewrite(ctx: Context, run: RunRecord, current: ClaimRecord, **changes: str) -> None:
    """Update the record by check-and-set (best effort: losing the race means someone else moved it on)."""
    items = {
        "run_id": run.id,
        "action_id": run.action_id or "",
        "attempt": str(current.attempt),
        "idempotency_token": current.idempotency_token,
        "token_accessor": current.token_accessor,
        "wrapping_accessor": current.wrapping_accessor,
        "job_id": current.job_id,
        "state": current.state,
    }
    items.update(changes)
    try:
        var = ctx.nomad.put_variable(path_for(run.id), items, cas=current.modify_index)  # type: ignore[attr-defined]
        if var:
            ctx.claim_records[run.id] = ClaimRecord.from_variable(run.id, var)
    except ConflictError:
        ctx.claim_records.pop(run.id, None)
        fresh = read(ctx, run.id)
        if fresh is not None and fresh.token_accessor == current.token_accessor and fresh.modify_index != current.modify_index:
            _rewrite(ctx, run, fresh, **changes)


def record_child(ctx: Context, run: RunRecord, claim_accessor: str, wrapping_accessor: str, job_id: str) -> None:
    """Add the confirmed child's id to the record (best effort: the record already proves the claim)."""
    current = _current(ctx, run)
    if current is None or current.token_accessor not in (claim_accessor, ""):
        return
    _rewrite(
        ctx, run, current,
        token_accessor=claim_accessor,
        wrapping_accessor=wrapping_accessor or current.wrapping_accessor,
        job_id=job_id,
        state="dispatched",
    )


def retire(ctx: Context, run: RunRecord, prior: ClaimRecord) -> ClaimRecord:
    """Record, before any revocation, that ``prior``'s attempt never ran and its claim is being retired.

    Check-and-set on the record as recovery read it: if it moved (another process, or the
    child's record), nothing is revoked now and the next pass reads it again.
    """
    if prior.state == RETIRING:
        return prior
    items = {
        "run_id": run.id,
        "action_id": run.action_id or "",
        "attempt": str(prior.attempt),
        "idempotency_token": prior.idempotency_token,
        "token_accessor": prior.token_accessor,
        "wrapping_accessor": prior.wrapping_accessor,
        "job_id": prior.job_id,
        "state": RETIRING,
    }
    try:
        var = ctx.nomad.put_variable(path_for(run.id), items, cas=prior.modify_index)  # type: ignore[attr-defined]
    except ConflictError as exc:
        ctx.claim_records.pop(run.id, None)
        raise TransientError(
            f"the durable claim of {run.id} changed while recovery was retiring it; reading it again", system="nomad", delay=1.0
        ) from exc
    record = ClaimRecord.from_variable(run.id, var or {"Items": items, "ModifyIndex": prior.modify_index})
    ctx.claim_records[run.id] = record
    return record


def mark_done(ctx: Context, run: RunRecord) -> None:
    """Mark the record finished (the run was reported): a retry may claim a new attempt."""
    current = _current(ctx, run)
    if current is None or current.state == "done":
        return
    _rewrite(ctx, run, current, state="done")
    ctx.claim_records.pop(run.id, None)
