"""Which step advances a run: by its kind and state (vault actions: ``steps``; sidecars: ``sidecar_runs``).

Its own module so that ``steps`` and ``sidecar_runs`` need not import each other.
"""

from __future__ import annotations

from typing import Any

from reconciler import sidecar_runs
from reconciler.steps import STEPS
from states.machine import State
from store.models import RunRecord


def step_for(run: RunRecord) -> Any:
    """The step function for ``run``'s kind and state (None: nothing to do but report)."""
    state = State(run.state)
    if run.kind != "vault-action":
        if state == State.PENDING:
            return sidecar_runs.step_pending
        if state == State.POLICY_BOUND:
            return sidecar_runs.step_bound
    return STEPS.get(state)


__all__ = ["step_for"]
