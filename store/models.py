"""The saved shape of a run and of a journal entry.

These are what the SQLite store holds, field by field. They are deliberately a
different type from what one reconcile step computes (``reconciler.decide``):
a step's result is applied to a record through ``RunStore.transition``.

Times are RFC 3339 UTC strings (``2026-11-27T04:12:03Z``). Nothing secret is
ever stored: tokens are known by their accessors only.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from states.machine import State

KINDS = ("vault-action", "reproduce", "triage", "verify")


class RunBrief(NamedTuple):
    """The few columns the loop needs to choose what to step (no model built per run)."""

    id: str
    kind: str
    state: State
    next_try_at: str | None
    nomad_job_id: str | None
    created_at: str
    started_at: str | None = None
    timeout_minutes: int | None = None


class RunRecord(BaseModel):
    """One run: one vault action at one pinned content, or one sidecar for one issue."""

    model_config = ConfigDict(extra="ignore", use_enum_values=False)

    id: str
    """Run id. Vault action: derived from the action id and the pinned content hash; sidecar: ``issue-<n>-<kind>-<seq>``."""
    kind: str = "vault-action"
    """``vault-action``, ``reproduce``, ``triage`` or ``verify``."""
    action_id: str | None = None
    """The action's id (file stem), for vault actions."""
    issue: int | None = None
    """The issue number, for sidecars."""
    path: str | None = None
    """Path of the action file in the ops repo (``vault/actions/<id>.toml``)."""
    result_path: str | None = None
    """Where the result is written; None when no safe name exists (journaled rejection only)."""
    content_hash: str | None = None
    """sha256 of the action file content this run is pinned to."""
    source_commit: str | None = None
    """Ops repo commit at which the run was created."""
    state: State = State.PENDING
    state_since: str = ""
    """When the run entered its current state."""
    attempt: int = 0
    """Attempt number; 0 until the first claim is minted."""
    formula: str | None = None
    tier: str | None = None
    dispatch_mode: str | None = None
    secrets: list[str] = Field(default_factory=list)
    """Declared secret names (never values)."""
    mounts: list[str] = Field(default_factory=list)
    timeout_minutes: int | None = None
    pull_number: int | None = None
    """The pull request the approval came through."""
    approver: str | None = None
    """The admin whose review approved it, or who merged it."""
    approved_via: str | None = None
    """``review``, ``merger`` or ``direct``."""
    idempotency_token: str | None = None
    """``<run-id>/<attempt>``, sent to Nomad with the dispatch."""
    token_accessor: str | None = None
    """Accessor of the attempt's claim token (the inner, wrapped token)."""
    wrapping_accessor: str | None = None
    """Accessor of the wrapping token that travels in the payload."""
    claim_expires_at: str | None = None
    """When the wrapping token expires (placement deadline)."""
    dispatch_started_at: str | None = None
    """Set before the dispatch call: a child may exist for this attempt."""
    nomad_job_id: str | None = None
    alloc_id: str | None = None
    dispatched_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    outcome: str | None = None
    """``success``, ``failure``, ``timeout``, ``rejected``, ``cancelled`` or ``unknown``."""
    error: str | None = None
    """Why the run is where it is, when that is not plain success."""
    log_tail: str | None = None
    """At most 1000 characters, redacted."""
    next_try_at: str | None = None
    """A persisted requeue: the loop leaves the run alone until then."""
    waiting: str | None = None
    """What the run waits for, in words (shown by ``status``)."""
    failures: int = 0
    """Consecutive transient failures, for backoff."""
    reported_commit: str | None = None
    trigger: str | None = None
    """Sidecars: fingerprint of what made the run apply (labels, sub-issues); a new run needs a new trigger."""
    created_at: str = ""
    updated_at: str = ""

    def to_row(self) -> dict[str, Any]:
        row = self.model_dump()
        row["state"] = State(self.state).value
        row["secrets"] = json.dumps(self.secrets)
        row["mounts"] = json.dumps(self.mounts)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "RunRecord":
        data = {k: v for k, v in row.items() if v is not None}
        for key in ("secrets", "mounts"):
            raw = data.get(key)
            data[key] = json.loads(raw) if isinstance(raw, str) and raw else []
        return cls(**data)

    def public(self) -> dict[str, Any]:
        """The run as ``status --json`` shows it (INTERFACE.md fields first)."""
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "state": State(self.state).value,
            "state_since": self.state_since,
            "attempt": self.attempt,
            "nomad_job_id": self.nomad_job_id,
            "alloc_id": self.alloc_id,
            "exit_code": self.exit_code,
            "error": self.error,
        }
        if self.kind == "vault-action":
            out["action_id"] = self.action_id
        else:
            out["issue"] = self.issue
        out.update(
            {
                "outcome": self.outcome,
                "waiting": self.waiting,
                "next_try_at": self.next_try_at,
                "formula": self.formula,
                "tier": self.tier,
                "pull_request": self.pull_number,
                "approver": self.approver,
                "content_hash": self.content_hash,
                "secrets": self.secrets,
                "mounts": self.mounts,
                "created_at": self.created_at,
            }
        )
        return out


class JournalEntry(BaseModel):
    """One line of a run's append-only journal."""

    id: int | None = None
    run_id: str
    at: str
    """When it happened (RFC 3339 UTC)."""
    from_state: str | None
    """State before; None for the run's creation."""
    to_state: str
    transition: str
    """The transition's verb, ``create`` for the run's creation, or ``note`` for a journaled fact without a state change."""
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict)
    """Machine-readable facts of the step (job id, accessor, evaluation reason...). Never secret values."""

    def public(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "from": self.from_state,
            "to": self.to_state,
            "transition": self.transition,
            "reason": self.reason,
            "details": self.details,
        }
