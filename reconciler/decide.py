"""Pure decisions: given a run and what Nomad shows of it, what happens next.

``decide_watch`` covers the states in which Nomad holds the run's child
(``dispatched``, ``running``). It does no I/O: the loop observes, calls it, and
executes the returned :class:`Decision`. Every decision names a transition of
``states.machine`` (or none, to wait) - never anything else.

What the allocations mean (CONTRACTS.md):

* the exit code is in the task's ``Terminated`` event;
* a task that never started has no such event: its failing event's
  ``DisplayMessage`` says why;
* an allocation ``lost`` or ``unknown`` may still be running on its node, and
  Nomad starts a replacement on its own; the replacement's runner finds the
  claim taken and exits with :data:`EXIT_CLAIM_TAKEN` without running anything.
  So the newest allocation is not always the one that ran the work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from states.machine import State, Transition

# Exit codes of the runner entry step (reconciler/runner/entry.py, RunnerExit).
EXIT_CLAIM_TAKEN = 90
EXIT_SECRET_MISSING = 91
EXIT_MISCONFIGURED = 92
EXIT_PAYLOAD_MISSING = 93
EXIT_CLAIM_INVALID = 94
EXIT_TIMEOUT = 124

RUNNER_EXIT_REASONS: dict[int, str] = {
    EXIT_CLAIM_TAKEN: "the runner found its claim already taken and ran nothing",
    EXIT_SECRET_MISSING: "a declared secret or mount was missing, denied or empty when the runner read it",
    EXIT_MISCONFIGURED: "the runner is misconfigured (formula or agent command not found on the client)",
    EXIT_PAYLOAD_MISSING: "the runner found no claim payload",
    EXIT_CLAIM_INVALID: "the claim token was not minted by the vault-runner role or does not match the dispatch",
    EXIT_TIMEOUT: "the formula exceeded timeout_minutes and was stopped by the runner",
}

#: Seconds the reconciler waits past an action's timeout before stopping the job itself.
TIMEOUT_GRACE = 30.0


@dataclass(frozen=True)
class Decision:
    """What one step decided: a transition (or none), field changes, effects, when to look again."""

    transition: Transition | None = None
    reason: str = ""
    changes: dict[str, Any] = field(default_factory=dict)
    stop_job: bool = False
    """Stop the run's Nomad child before applying the transition."""
    revoke_claim: bool = False
    """Revoke the attempt's claim token (and its wrapping token) before applying the transition."""
    fetch_logs_from: str | None = None
    """Allocation whose log tail the collected result should carry."""
    requeue_after: float | None = None
    waiting: str | None = None
    """What the run waits for, for ``status``."""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AllocView:
    """The facts of one allocation that decisions use."""

    id: str
    client_status: str
    desired_status: str
    create_index: int
    started: bool
    started_at: str | None
    finished_at: str | None
    task_state: str
    exit_code: int | None
    failure_message: str | None

    @property
    def terminal(self) -> bool:
        return self.client_status in ("complete", "failed")

    @property
    def disconnected(self) -> bool:
        return self.client_status in ("lost", "unknown")


def _ns_to_rfc3339(value: Any) -> str | None:
    if not value:
        return None
    if isinstance(value, str):
        if value.startswith("0001-"):
            return None
        return value[:19] + "Z" if len(value) >= 19 and value[10] == "T" else None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(int(value) / 1e9, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def view_allocation(alloc: Mapping[str, Any], task: str | None = None) -> AllocView:
    """Reduce a Nomad allocation (stub or full) to the facts decisions use."""
    states = alloc.get("TaskStates") or {}
    ts: Mapping[str, Any] = {}
    if task and task in states:
        ts = states[task]
    elif states:
        ts = next(iter(states.values()))
    events = list(ts.get("Events") or [])
    exit_code = None
    failure = None
    started = False
    for ev in events:
        etype = ev.get("Type")
        if etype == "Started":
            started = True
        if etype == "Terminated":
            exit_code = int(ev.get("ExitCode") or 0)
            started = True
        msg = ev.get("DisplayMessage") or ev.get("Message")
        if ev.get("FailsTask") or etype in ("Driver Failure", "Setup Failure", "Failed Validation", "Not Restarting"):
            failure = msg or etype
    started_at = _ns_to_rfc3339(ts.get("StartedAt"))
    if started_at:
        started = True
    if failure is None and alloc.get("ClientStatus") == "failed" and exit_code is None:
        for ev in reversed(events):
            msg = ev.get("DisplayMessage") or ev.get("Message")
            if msg:
                failure = msg
                break
    return AllocView(
        id=str(alloc.get("ID")),
        client_status=str(alloc.get("ClientStatus") or "pending"),
        desired_status=str(alloc.get("DesiredStatus") or "run"),
        create_index=int(alloc.get("CreateIndex") or 0),
        started=started,
        started_at=started_at,
        finished_at=_ns_to_rfc3339(ts.get("FinishedAt")),
        task_state=str(ts.get("State") or "pending"),
        exit_code=exit_code,
        failure_message=failure,
    )


def outcome_for_exit(exit_code: int) -> str:
    if exit_code == 0:
        return "success"
    if exit_code == EXIT_TIMEOUT:
        return "timeout"
    return "failure"


def explain_exit(exit_code: int) -> str:
    if exit_code == 0:
        return "formula succeeded"
    return RUNNER_EXIT_REASONS.get(exit_code, f"formula exited with code {exit_code}")


def placement_reason(evaluations: list[Mapping[str, Any]]) -> str:
    """Why a dispatched job has not started, from its evaluations (CONTRACTS.md)."""
    parts: list[str] = []
    for ev in sorted(evaluations, key=lambda e: int(e.get("CreateIndex") or 0), reverse=True):
        status = ev.get("Status")
        failed = ev.get("FailedTGAllocs") or {}
        for group, metrics in failed.items():
            bits = []
            for key in ("DimensionExhausted", "ConstraintFiltered", "ClassExhausted"):
                value = (metrics or {}).get(key) or {}
                if value:
                    bits.append(f"{key}: " + ", ".join(f"{k} ({v})" for k, v in value.items()))
            quota = (metrics or {}).get("QuotaExhausted") or []
            if quota:
                bits.append("QuotaExhausted: " + ", ".join(map(str, quota)))
            evaluated = (metrics or {}).get("NodesEvaluated")
            if evaluated is not None:
                bits.append(f"{evaluated} nodes evaluated")
            parts.append(f"evaluation {status}: group {group!r} could not be placed" + (f" ({'; '.join(bits)})" if bits else ""))
        if not failed and status in ("blocked", "failed") and ev.get("StatusDescription"):
            parts.append(f"evaluation {status}: {ev.get('StatusDescription')}")
        if parts:
            break
    return parts[0] if parts else "no allocation was placed (no evaluation explains why)"


def _explains(evaluations: list[Mapping[str, Any]] | None) -> bool:
    """Whether the evaluations say why nothing was placed (blocked, failed, or failed allocations)."""
    return any(e.get("FailedTGAllocs") or e.get("Status") in ("blocked", "failed") for e in evaluations or [])


def choose_worker(allocs: list[AllocView]) -> AllocView | None:
    """The allocation that ran (or runs) the work, if one can be told apart.

    Copies that exited with EXIT_CLAIM_TAKEN did nothing; among the rest, the
    oldest that started is the one that took the claim first.
    """
    candidates = [a for a in allocs if a.started and a.exit_code != EXIT_CLAIM_TAKEN]
    if not candidates:
        return None
    return sorted(candidates, key=lambda a: a.create_index)[0]


def decide_watch(
    *,
    state: State,
    attempt: int,
    dispatched_at: float | None,
    started_at: float | None,
    timeout_minutes: int,
    job: Mapping[str, Any] | None,
    allocations: list[Mapping[str, Any]],
    evaluations: list[Mapping[str, Any]] | None,
    now: float,
    placement_deadline: float,
    max_attempts: int,
    task: str | None = None,
) -> Decision:
    """Decide the next step of a run whose child Nomad holds (``dispatched`` or ``running``)."""
    if state not in (State.DISPATCHED, State.RUNNING):
        raise ValueError(f"decide_watch is for dispatched or running runs, not {state}")

    if job is None:
        return Decision(
            Transition.COLLECT,
            reason="the Nomad child vanished (stopped and purged, or garbage-collected) before its outcome was seen; outcome unknown",
            changes={"outcome": "unknown", "exit_code": -1},
            revoke_claim=True,
        )

    views = sorted((view_allocation(a, task) for a in allocations), key=lambda a: a.create_index)
    worker = choose_worker(views)

    # A started copy on a node that went away: the work may still be running there.
    lost = [a for a in views if a.disconnected and a.started]
    if lost and not (worker is not None and worker.terminal and not worker.disconnected):
        a = lost[0]
        return Decision(
            Transition.COLLECT,
            reason=(
                f"allocation {a.id[:8]} turned {a.client_status} while its task ran; the work may still be running "
                "on that node, so the outcome is unknown (retry only by an operator)"
            ),
            changes={"outcome": "unknown", "exit_code": -1, "alloc_id": a.id},
            stop_job=True,
            revoke_claim=True,
            fetch_logs_from=a.id,
        )

    if worker is not None and worker.terminal and worker.exit_code is not None:
        code = worker.exit_code
        return Decision(
            Transition.COLLECT,
            reason=explain_exit(code),
            changes={
                "outcome": outcome_for_exit(code),
                "exit_code": code,
                "alloc_id": worker.id,
                "finished_at": worker.finished_at,
                **({"started_at": worker.started_at} if worker.started_at and not started_at else {}),
            },
            revoke_claim=True,
            fetch_logs_from=worker.id,
        )

    # Failed before its task ever started (image, driver, volume, template...).
    never = [a for a in views if a.terminal and not a.started and a.client_status == "failed"]
    if never and worker is None and not any(a.client_status in ("pending", "running") for a in views):
        a = never[-1]
        return Decision(
            Transition.COLLECT,
            reason=f"the task never started: {a.failure_message or 'allocation failed before start'}",
            changes={"outcome": "failure", "exit_code": 1, "alloc_id": a.id},
            stop_job=True,
            revoke_claim=True,
        )

    # Every copy that started found the claim taken: some other copy used it.
    taken = [a for a in views if a.exit_code == EXIT_CLAIM_TAKEN]
    if taken and worker is None and not any(a.client_status in ("pending", "running") for a in views):
        return Decision(
            Transition.COLLECT,
            reason="every allocation found the claim already taken; the copy that used it is gone, so the outcome is unknown",
            changes={"outcome": "unknown", "exit_code": -1, "alloc_id": taken[-1].id},
            stop_job=True,
            revoke_claim=True,
        )

    if worker is not None:  # started, not finished
        changes: dict[str, Any] = {"alloc_id": worker.id}
        start_ts = started_at
        if state == State.DISPATCHED:
            if worker.started_at:
                changes["started_at"] = worker.started_at
            return Decision(Transition.START, reason=f"allocation {worker.id[:8]} is running", changes=changes)
        if start_ts is not None and now > timeout_due(start_ts, timeout_minutes):
            return Decision(
                Transition.COLLECT,
                reason=f"timed out: still running {timeout_minutes} min after it started; job stopped",
                changes={"outcome": "timeout", "exit_code": EXIT_TIMEOUT, "alloc_id": worker.id},
                stop_job=True,
                revoke_claim=True,
                fetch_logs_from=worker.id,
            )
        return Decision(None, waiting=f"running on allocation {worker.id[:8]}")

    # Nothing started yet: waiting for placement.
    if state == State.RUNNING:
        return Decision(None, waiting="running; waiting for the allocation to report")
    deadline = placement_due(dispatched_at or now, placement_deadline)
    if now <= deadline:
        return Decision(
            None,
            waiting="waiting for placement" + (f" ({placement_reason(evaluations)})" if _explains(evaluations) else ""),
        )
    reason = placement_reason(evaluations or [])
    if attempt >= max_attempts:
        return Decision(
            Transition.COLLECT,
            reason=f"not placed within {int(placement_deadline)} s on attempt {attempt} of {max_attempts}: {reason}",
            changes={"outcome": "failure", "exit_code": 1},
            stop_job=True,
            revoke_claim=True,
            details={"evaluation": reason},
        )
    return Decision(
        Transition.REPLACE,
        reason=f"not placed within {int(placement_deadline)} s: {reason}; child stopped, claim revoked, next attempt",
        stop_job=True,
        revoke_claim=True,
        details={"evaluation": reason},
    )


def timeout_due(started_at: float, timeout_minutes: int) -> float:
    """When a started run has outlived its timeout (and the grace the runner has to stop itself)."""
    return started_at + timeout_minutes * 60 + TIMEOUT_GRACE


def placement_due(dispatched_at: float, placement_deadline: float) -> float:
    """When a dispatched attempt that has not started is past its placement deadline."""
    return dispatched_at + placement_deadline


#: A look planned for a deadline comes this long after it, so that the step sees the deadline passed.
DEADLINE_SLACK = 1.0


def look_again(
    *,
    state: State,
    now: float,
    next_try_at: float | None,
    dispatched_at: float | None,
    started_at: float | None,
    timeout_minutes: int | None,
    placement_deadline: float,
) -> float | None:
    """Seconds until a run must be stepped again although nothing reported a change for it - the step's own
    "look again in N s" - or None when only news brings it back (a watch, the admission gate, the reporter).

    A retry or requeue a step asked for (``next_try_at``) comes first; a dispatched child not placed yet is
    looked at once its placement deadline passed, a running one once its timeout did.
    """
    if next_try_at is not None:
        return max(0.0, next_try_at - now)
    if state == State.POLICY_BOUND:
        return 0.0  # bound: the dispatch is the next step
    if state == State.DISPATCHED and dispatched_at is not None:
        return max(0.0, placement_due(dispatched_at, placement_deadline) + DEADLINE_SLACK - now)
    if state == State.RUNNING and started_at is not None:
        return max(0.0, timeout_due(started_at, int(timeout_minutes or 60)) + DEADLINE_SLACK - now)
    return None
