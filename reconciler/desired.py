"""Desired state: which vault actions the ops repo's primary branch asks for.

A scan compares the action files on the fetched head with the store and
creates a ``pending`` run for each action file that has neither a result nor a
run at its current content. It cancels runs whose file left main (or changed)
before dispatch, and notices results that vanished from main for runs already
reported (they are pushed again, never re-run).

After the first full scan a pass only looks at the paths that changed between
the last scanned head and the new one, so an idle pass costs nothing however
long the history.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, field

from reconciler import actions
from reconciler.context import Context, run_log
from states.machine import ACTIVE, State, Transition
from store.models import RunRecord
from store.runs import StaleState

LAST_HEAD_KEY = "desired.last_scanned_head"
ACTIONS_DIR = "vault/actions"
RESULT_SUFFIX = ".result.json"


@dataclass
class ScanSummary:
    created: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    results_missing: list[str] = field(default_factory=list)
    full: bool = False


def _unsafe_run_id(path: str, content_hash: str) -> str:
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"file-{digest}-{content_hash[:12]}"


def scan(ctx: Context, head: str, *, full: bool = False) -> ScanSummary:
    """Bring the store's runs in line with the action files at ``head``.

    ``full`` compares every action file; otherwise only paths changed since
    the last scanned head are looked at (a full scan when there is none).
    """
    last = None if full else ctx.store.get_value(LAST_HEAD_KEY)
    summary = ScanSummary()
    if last == head:
        return summary
    files = ctx.ops.list_dir(head, ACTIONS_DIR)
    if last is None:
        summary.full = True
        candidates = set(files)
        removed: set[str] = set()
        for _, path in ctx.store.column_by_state("path", ACTIVE):
            if path and path not in files:
                removed.add(path)
        for _, result_path in ctx.store.column_by_state("result_path", [State.REPORTED]):
            if result_path and result_path not in files:
                removed.add(result_path)
    else:
        try:
            changed = [p for p in ctx.ops.changed_paths(last, head) if posixpath.dirname(p) == ACTIONS_DIR]
        except Exception:  # the old head may be gone (force push): fall back to a full scan
            return scan(ctx, head, full=True)
        candidates = {p for p in changed if p in files}
        removed = {p for p in changed if p not in files}

    results_on_main = {p for p in files if p.endswith(RESULT_SUFFIX)}
    for path in sorted(candidates):
        if path.endswith(RESULT_SUFFIX) or not path.endswith(".toml"):
            continue
        _consider_action(ctx, head, path, results_on_main, summary)
    for path in sorted(removed):
        if path.endswith(RESULT_SUFFIX):
            _result_vanished(ctx, path, summary)
        elif path.endswith(".toml"):
            _action_left_main(ctx, path, summary)
    ctx.store.set_value(LAST_HEAD_KEY, head)
    return summary


def approval_head(ctx: Context, previous: str | None, head: str) -> str:
    """The head to read approvals at: ``previous`` while everything that changed since it (fast-forward)
    is result files, else ``head``.

    Every result push moves the head; without this, a burst of results would make
    every pending run's approval be re-derived (git walks, forge calls) at each push,
    though no action file, no policy file and no history of either changed.
    """
    if previous is None or previous == head:
        return head
    known = ctx.approval_heads.get((previous, head))
    if known is not None:
        return known
    answer = _approval_head(ctx, previous, head)
    ctx.approval_heads.clear()  # only the newest pair is asked again, pass after pass, until the head moves
    ctx.approval_heads[(previous, head)] = answer
    return answer


def _approval_head(ctx: Context, previous: str, head: str) -> str:
    try:
        if not ctx.ops.is_ancestor(previous, head):
            return head
        changed = ctx.ops.changed_paths(previous, head)
    except Exception:  # an unknown old head: read at the new one
        return head
    if changed and all(posixpath.dirname(p) == ACTIONS_DIR and p.endswith(RESULT_SUFFIX) for p in changed):
        return previous
    return head


def _consider_action(ctx: Context, head: str, path: str, results_on_main: set[str], summary: ScanSummary) -> None:
    name = posixpath.basename(path)
    action_id = actions.action_id_from_file_name(name)
    result_path = actions.result_path(action_id) if action_id else None
    if result_path and result_path in results_on_main:
        if not ctx.store.has_active_run(action_id or ""):
            return  # done: only an operator's retry runs it again
    limit = ctx.settings.actions.max_file_bytes
    data = ctx.ops.read(head, path, max_bytes=limit)
    if data is None:
        return
    content_hash = hashlib.sha256(data).hexdigest()
    run_id = actions.run_id_for(action_id, content_hash) if action_id else _unsafe_run_id(path, content_hash)
    if ctx.store.get(run_id) is not None:
        return
    # An older run of the same action, not yet dispatched, is superseded by the new content.
    if action_id:
        for other in ctx.store.runs_for_action(action_id):
            if other.state in (State.PENDING, State.POLICY_BOUND) and other.content_hash != content_hash:
                _cancel(ctx, other, "the action file changed on main before dispatch; the new content is a new run that needs its own approval", summary)
    record = RunRecord(
        id=run_id,
        kind="vault-action",
        action_id=action_id,
        path=path,
        result_path=result_path,
        content_hash=content_hash,
        source_commit=head,
    )
    ctx.store.create(record, reason=f"{path} on main at {head[:10]}", details={"commit": head})
    summary.created.append(run_id)


def _action_left_main(ctx: Context, path: str, summary: ScanSummary) -> None:
    for run in ctx.store.runs([State.PENDING, State.POLICY_BOUND]):
        if run.path == path:
            _cancel(ctx, run, "the action file left main before dispatch", summary)


def _result_vanished(ctx: Context, path: str, summary: ScanSummary) -> None:
    for run in ctx.store.runs([State.REPORTED]):
        if run.result_path == path and run.reported_commit:
            summary.results_missing.append(run.id)


def _cancel(ctx: Context, run: RunRecord, reason: str, summary: ScanSummary) -> None:
    """Cancel a run that was never dispatched; no result file is written for it."""
    try:
        ctx.store.transition(
            run.id,
            Transition.CANCEL,
            expect=run.state,
            reason=reason,
            changes={"outcome": "cancelled", "exit_code": 1, "error": reason, "result_path": None},
        )
        run_log(run).info("cancelled: %s", reason)
        summary.cancelled.append(run.id)
    except StaleState:
        pass
