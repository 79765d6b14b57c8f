"""The result document of a vault action (``vault/actions/<id>.result.json``).

INTERFACE.md fixes ``id``, ``exit_code``, ``timestamp``, ``logs`` and ``outcome``;
the rest is MISSION.md's audit trail. Pure: built from the stored run alone, so
a result can be rebuilt and pushed again without re-running anything.
"""

from __future__ import annotations

import json
from typing import Any

from store.models import RunRecord

OUTCOMES = ("success", "failure", "timeout", "rejected", "cancelled", "unknown")


def result_document(run: RunRecord, timestamp: str) -> dict[str, Any]:
    """The result of ``run`` as a JSON-ready dict."""
    outcome = run.outcome or "failure"
    if outcome not in OUTCOMES:
        outcome = "failure"
    exit_code = run.exit_code
    if exit_code is None:
        exit_code = 0 if outcome == "success" else 1
    return {
        "id": run.action_id or "",
        "exit_code": int(exit_code),
        "timestamp": timestamp,
        "logs": run.log_tail or "",
        "outcome": outcome,
        "reason": run.error or "",
        "run_id": run.id,
        "attempt": run.attempt,
        "formula": run.formula,
        "tier": run.tier,
        "dispatch_mode": run.dispatch_mode,
        "pull_request": run.pull_number,
        "approver": run.approver,
        "approved_via": run.approved_via,
        "content_hash": run.content_hash,
        "secrets": list(run.secrets),
        "mounts": list(run.mounts),
        "nomad_job_id": run.nomad_job_id,
        "alloc_id": run.alloc_id,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }


def encode(document: dict[str, Any]) -> bytes:
    """Stable bytes for a result document (sorted keys, trailing newline)."""
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
