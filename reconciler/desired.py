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
import logging
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

log = logging.getLogger("reconciler.desired")


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

    Every entry of ``vault/actions`` named ``*.toml`` is looked at on its own: one that cannot be
    an action (a symlink, a submodule, a directory, a name that is not UTF-8) is rejected with
    its reason, or skipped with a warning when it cannot even be named, and the others go on.
    """
    last = None if full else ctx.store.get_value(LAST_HEAD_KEY)
    summary = ScanSummary()
    if last == head:
        return summary
    entries = _entries(ctx, head)
    files = {p for p, (mode, _) in entries.items() if mode in FILE_MODES}
    if last is None:
        summary.full = True
        candidates = set(entries)
        removed: set[str] = set()
        for _, path in ctx.store.column_by_state("path", ACTIVE):
            if path and path not in entries:
                removed.add(path)
        for _, result_path in ctx.store.column_by_state("result_path", [State.REPORTED]):
            if result_path and result_path not in files:
                removed.add(result_path)
    else:
        try:
            # a change inside a directory of vault/actions is a change of that directory's entry
            changed = {top for top in map(_entry_of, ctx.ops.changed_paths(last, head)) if top}
        except Exception:  # the old head may be gone (force push): fall back to a full scan
            return scan(ctx, head, full=True)
        candidates = {p for p in changed if p in entries}
        removed = {p for p in changed if p not in entries}

    results_on_main = {p for p in files if p.endswith(RESULT_SUFFIX)}
    for path in sorted(candidates):
        if path.endswith(RESULT_SUFFIX) or not path.endswith(".toml"):
            continue
        mode, oid = entries[path]
        try:
            unusable = name_problem(path)
            if unusable:
                _skip(path, unusable)
            elif mode in FILE_MODES:
                _consider_action(ctx, head, path, results_on_main, summary)
            else:
                _reject_entry(ctx, head, path, mode, oid, results_on_main, summary)
        except ValueError as exc:  # an odd entry must never stop the scan of the others
            _skip(path, f"it cannot be read as an action ({exc})")
    for path in sorted(removed):
        if path.endswith(RESULT_SUFFIX):
            _result_vanished(ctx, path, summary)
        elif path.endswith(".toml"):
            _action_left_main(ctx, path, summary)
    ctx.store.set_value(LAST_HEAD_KEY, head)
    return summary


FILE_MODES = ("100644", "100755")
"""Tree entry modes of regular files: the only entries that can be action (or result) files."""

_NOT_A_FILE = {
    "120000": "a symlink",
    "160000": "a submodule (gitlink)",
    "40000": "a directory",
}


def _entries(ctx: Context, head: str) -> dict[str, tuple[str, str]]:
    """Every entry directly in ``vault/actions`` at ``head``: path -> (mode, object id)."""
    lister = getattr(ctx.ops, "list_entries", None)
    if lister is not None:
        return lister(head, ACTIONS_DIR)
    return {p: ("100644", oid) for p, oid in ctx.ops.list_dir(head, ACTIONS_DIR).items()}


def _entry_of(path: str) -> str | None:
    """The entry of ``vault/actions`` that a changed path is (or is inside), else None."""
    prefix = ACTIONS_DIR + "/"
    if not path.startswith(prefix):
        return None
    name = path[len(prefix):].split("/", 1)[0]
    return prefix + name if name else None


def name_problem(path: str) -> str | None:
    """Why an entry cannot even be recorded as a run (its name), or None."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    if posixpath.basename(path) in ("", ".", ".."):
        return "its name is not a file name"
    return None


def display_path(path: str) -> str:
    """A path for one log line or reason: as it is when printable, else quoted with escapes."""
    return path if path.isprintable() else repr(path)


def _skip(path: str, why: str) -> None:
    shown = repr(path.encode("utf-8", "surrogateescape"))[1:] if name_problem(path) else display_path(path)
    log.warning("%s skipped: %s; it is not an action and gets no run or result (rename or remove it)", shown, why)


def _reject_entry(
    ctx: Context, head: str, path: str, mode: str, oid: str, results_on_main: set[str], summary: ScanSummary
) -> None:
    """An entry named like an action file that is not a regular file: a run rejected at once, with the reason.

    Its result goes where a valid action's would (journal only without a safe id). The run is
    created and rejected in one transaction, so no step ever reads such an entry as an action.
    """
    name = posixpath.basename(path)
    action_id = actions.action_id_from_file_name(name)
    result_path = actions.result_path(action_id) if action_id else None
    if result_path and result_path in results_on_main and not ctx.store.has_active_run(action_id or ""):
        return
    content_hash = hashlib.sha256(f"{mode} {oid}\n".encode("ascii")).hexdigest()
    run_id = actions.run_id_for(action_id, content_hash) if action_id else _unsafe_run_id(path, content_hash)
    if ctx.store.get(run_id) is not None:
        return
    if action_id:
        _supersede(ctx, action_id, content_hash, summary)
    what = _NOT_A_FILE.get(mode, f"a tree entry of mode {mode}")
    reason = f"invalid action: {display_path(path)} is {what}, not a file; only regular files (mode 100644 or 100755) are action files"
    record = RunRecord(
        id=run_id,
        kind="vault-action",
        action_id=action_id,
        path=path,
        result_path=result_path,
        content_hash=content_hash,
        source_commit=head,
    )
    with ctx.store.batch():
        ctx.store.create(record, reason=f"{display_path(path)} on main at {head[:10]}", details={"commit": head, "mode": mode})
        rejected = ctx.store.transition(
            run_id,
            Transition.REJECT,
            expect=State.PENDING,
            reason=reason,
            changes={"outcome": "rejected", "exit_code": 1, "error": reason, "waiting": None},
        )
    run_log(rejected).info("reject: %s", reason)
    summary.created.append(run_id)


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
    if action_id:
        _supersede(ctx, action_id, content_hash, summary)
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


def _supersede(ctx: Context, action_id: str, content_hash: str, summary: ScanSummary) -> None:
    """An older run of the same action, not yet dispatched, is superseded by the new content."""
    for other in ctx.store.runs_for_action(action_id):
        if other.state in (State.PENDING, State.POLICY_BOUND) and other.content_hash != content_hash:
            _cancel(ctx, other, "the action file changed on main before dispatch; the new content is a new run that needs its own approval", summary)


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
