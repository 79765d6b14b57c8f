"""``reconciler plan``: what the next pass would do, changing nothing.

It reads what a pass reads - the ops repo (fetched into the local clone), the
forge, Vault's policies and secrets' metadata, Nomad's view of each child -
and runs the same checks and decisions (``steps.assess_pending``,
``decide.decide_watch``), but writes nothing: not the store, not Nomad, not
Vault, not the remote.
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Iterator

from reconciler import actions, brakes, desired
from reconciler.clients.errors import PermanentError, TransientError
from reconciler.context import Context
from reconciler.steps import assess_pending, decide_for, observe_child
from states.machine import ACTIVE, AWAITING_REPORT, State
from store.models import RunRecord


def plan(ctx: Context) -> Iterator[str]:
    """One line per thing the next pass would do."""
    b = brakes.read(ctx.store)
    if b.holds_new_work:
        yield f"brakes: {b.describe()} - nothing new would be dispatched"
    try:
        head = ctx.ops.fetch()
    except (TransientError, PermanentError) as exc:
        yield f"ops repo unavailable ({exc}): only runs already known are planned"
        head = None
    ctx.head = head
    if head is not None:
        yield from _new_runs(ctx, head)
    for run in ctx.store.runs(ACTIVE):
        state = State(run.state)
        label = run.action_id or f"issue #{run.issue} {run.kind}"
        try:
            if state == State.PENDING and run.kind == "vault-action":
                v = assess_pending(ctx, run)
                if v.cancel:
                    yield f"{label}: would cancel: {v.cancel}"
                elif v.reject:
                    yield f"{label}: would reject: {v.reject}"
                elif v.wait:
                    yield f"{label}: would wait: {v.wait}"
                elif b.holds_new_work:
                    yield f"{label}: would wait: paused"
                else:
                    yield (
                        f"{label}: would bind (approved via {v.facts.get('approved_via')}"
                        f"{' by ' + str(v.facts.get('approver')) if v.facts.get('approver') else ''}, tier {v.facts.get('tier')}) "
                        f"and dispatch attempt {run.attempt + 1}"
                    )
            elif state == State.PENDING:
                yield f"{label}: would {'wait (paused)' if b.holds_new_work else 'bind and dispatch'}"
            elif state == State.POLICY_BOUND:
                yield f"{label}: would {'wait (paused)' if b.holds_new_work else f'dispatch attempt {run.attempt}'}"
            elif state in (State.DISPATCHED, State.RUNNING):
                yield f"{label}: {_watch_line(ctx, run)}"
            elif state in AWAITING_REPORT:
                where = run.result_path or "no result file (journal only)"
                yield f"{label}: would report {run.outcome or state.value} -> {where}"
        except (TransientError, PermanentError) as exc:
            yield f"{label}: cannot tell ({exc.system or 'dependency'} unavailable: {exc})"


def _new_runs(ctx: Context, head: str) -> Iterator[str]:
    files = ctx.ops.list_dir(head, desired.ACTIONS_DIR)
    results = {p for p in files if p.endswith(desired.RESULT_SUFFIX)}
    for path in sorted(files):
        if not path.endswith(".toml"):
            continue
        problem = desired.name_problem(path)
        if problem:
            yield f"{desired.display_path(path)}: would be skipped with a warning ({problem})"
            continue
        action_id = actions.action_id_from_file_name(posixpath.basename(path))
        if action_id and actions.result_path(action_id) in results:
            continue
        data = ctx.ops.read(head, path, max_bytes=ctx.settings.actions.max_file_bytes)
        if data is None:
            continue
        content_hash = hashlib.sha256(data).hexdigest()
        run_id = actions.run_id_for(action_id, content_hash) if action_id else None
        if run_id and ctx.store.get(run_id) is not None:
            continue
        if run_id is None and any(r.path == path and r.content_hash == content_hash for r in ctx.store.runs()):
            continue
        yield f"{path}: would create a pending run ({run_id or 'no safe id: would be rejected'})"


def _watch_line(ctx: Context, run: RunRecord) -> str:
    d = decide_for(ctx, run, observe_child(ctx, run))
    if d.transition is None:
        return f"would keep watching ({d.waiting})"
    effects = [e for e, on in (("stop the job", d.stop_job), ("revoke the claim", d.revoke_claim)) if on]
    return f"would {d.transition.value}: {d.reason}" + (f" ({', '.join(effects)})" if effects else "")
