"""Reporting: results of runs whose outcome is known go to the ops repo, together.

Every run in ``collected``, ``rejected`` or ``cancelled`` gets its result file
built from the stored run; all of them share one commit and one push (the ops
repo client rebuilds the commit on the new head when a push races). A run
whose result is already upstream, identical, is adopted. Then each run moves to
``reported`` with the commit recorded.

A run without a safe result name (the file name gave no valid id), and runs
cancelled automatically because their file left or changed on main, are
reported without a result file: their journal is the record.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any, Callable

from reconciler.clients.errors import PermanentError, TransientError
from reconciler import claims
from reconciler.context import Context, run_log
from reconciler.report import encode, result_document
from reconciler.steps import revoke_claim
from states.machine import AWAITING_REPORT, State, Transition
from store.models import RunRecord
from store.runs import StaleState, parse_rfc3339

REPORTED_DOC_KEY = "result.doc."

log = logging.getLogger(__name__)


def report_ready(
    ctx: Context, extra_repush: list[str] | None = None, *, mark_later: Callable[[list[RunRecord]], None] | None = None
) -> list[str]:
    """Push the results of every run awaiting report; returns the run ids reported.

    The durable claims of the runs reported are marked done before returning, or handed to
    ``mark_later`` (the service marks them beside the next push; see ``_report``).
    """
    runs = [r for r in ctx.store.runs(AWAITING_REPORT) if r.kind == "vault-action"]
    reported: list[str] = []
    files: dict[str, bytes] = {}
    owners: dict[str, RunRecord] = {}
    held: set[str] = set()
    for run in runs:
        if not _settle_due(ctx, run) or not _settle(ctx, run):
            held.add(run.id)  # its own error is recorded on it; the others' results still go out
            continue
        if not run.result_path:
            _report(ctx, run, None, "reported without a result file (journal only)")
            reported.append(run.id)
            continue
        previous = owners.get(run.result_path)
        if previous is None or previous.created_at <= run.created_at:
            owners[run.result_path] = run
    docs: dict[str, dict[str, Any]] = {}
    for path, run in owners.items():
        doc = result_document(run, timestamp=run.finished_at or run.state_since or ctx.stamp())
        docs[run.id] = doc
        files[path] = encode(doc)
    for run_id in extra_repush or []:
        run = ctx.store.get(run_id)
        stored = ctx.store.get_value(REPORTED_DOC_KEY + run_id)
        if run is not None and run.result_path and stored and run.result_path not in files:
            files[run.result_path] = stored.encode("utf-8")
    if not files:
        return reported
    message = "reconciler: results\n\n" + "\n".join(
        f"{r.action_id}: {docs[r.id]['outcome']} (run {r.id}, attempt {r.attempt})" for r in owners.values()
    )
    try:
        outcome = ctx.ops.push_files(files, message)
    except (TransientError, PermanentError) as exc:
        why = f"reported locally, push to ops remote failing: {exc}"
        ctx.observe("result_push_failed")
        for run in owners.values():
            ctx.store.update(run.id, {"waiting": why, "failures": run.failures + 1})
            run_log(run).warning("%s", why)
        return reported
    commit = getattr(outcome, "commit", None) or ""
    done: list[RunRecord] = []
    with ctx.store.batch():  # one transaction for the whole batch: a push of 500 results is not 1,000 commits
        for path, run in owners.items():
            doc = docs[run.id]
            ctx.store.set_value(REPORTED_DOC_KEY + run.id, encode(doc).decode("utf-8"))
            note = "already upstream" if path in (getattr(outcome, "already_upstream", None) or []) else "pushed"
            if _report(ctx, run, commit, f"result {note}: {path} ({doc['outcome']}, exit {doc['exit_code']})", mark=False):
                done.append(run)
            reported.append(run.id)
        # Runs superseded by a newer run for the same result path are reported without their own file.
        for run in runs:
            if run.id in held:
                continue
            if run.result_path and owners.get(run.result_path) is not run and run.id not in reported:
                if _report(ctx, run, None, "superseded by a newer run of the same action; no result file of its own", mark=False):
                    done.append(run)
                reported.append(run.id)
    if mark_later is not None:
        mark_later(done)
    else:
        mark_all_done(ctx, done)
    if ctx.settings.forge.pr_comments:
        retry_pending_comments(ctx)
        for path, run in owners.items():
            _comment_on_pull(ctx, run, docs[run.id], path, commit)
    return reported


def mark_all_done(ctx: Context, runs: list[RunRecord]) -> None:
    """Mark the durable claims of reported runs done, all at once (independent Nomad writes; best
    effort, as ``_mark_done``)."""
    ctx.together(*[functools.partial(_mark_done, ctx, run) for run in runs if run.attempt > 0])


def _mark_done(ctx: Context, run: RunRecord) -> None:
    try:
        claims.mark_done(ctx, run)
    except (TransientError, PermanentError) as exc:
        run_log(run).warning("could not mark the durable claim done (a retry will still work): %s", exc)


SETTLE_WAITING = "side effect failing, retried before its result is pushed"
SETTLE_RETRY_SECONDS = 60.0


def _settle_due(ctx: Context, run: RunRecord) -> bool:
    """False while a run whose side effect failed waits for its next try."""
    if not (run.waiting or "").startswith(SETTLE_WAITING) or not run.next_try_at:
        return True
    try:
        return parse_rfc3339(run.next_try_at) <= ctx.now()
    except ValueError:
        return True


def _settle(ctx: Context, run: RunRecord) -> bool:
    """Settle one run's side effects; on failure record why on that run (visible in ``status``) and
    schedule a retry, so one run's 403 or outage never holds back another run's result."""
    try:
        _settle_effects(ctx, run)
    except Exception as exc:  # any failure here belongs to this run alone
        why = f"{SETTLE_WAITING}: {type(exc).__name__}: {exc}"
        run_log(run).warning("%s", why)
        try:
            ctx.store.update(
                run.id,
                {"waiting": why, "failures": run.failures + 1, "next_try_at": ctx.stamp(ctx.now() + SETTLE_RETRY_SECONDS)},
            )
        except Exception:
            run_log(run).exception("could not record the failed side effect")
        return False
    return True


def _settle_effects(ctx: Context, run: RunRecord) -> None:
    """Make sure a finished run holds nothing: its child stopped (cancelled) and its claim revoked."""
    if State(run.state) == State.CANCELLED and run.nomad_job_id:
        ctx.nomad.stop(run.nomad_job_id)
    if run.token_accessor or run.wrapping_accessor or run.id in ctx.claims:
        revoke_claim(ctx, run)


def _report(ctx: Context, run: RunRecord, commit: str | None, reason: str, *, mark: bool = True) -> bool:
    """Move ``run`` to reported (True), or leave it to whoever moved it meanwhile (False).

    The durable claim is marked done after the store says reported (``mark``, or by the
    caller for a batch): a crash in between leaves a claim that still names the child, and
    recovery adopts it and reports again - nothing runs twice.
    """
    try:
        ctx.store.transition(
            run.id,
            Transition.REPORT,
            expect=run.state,
            reason=reason,
            changes={"reported_commit": commit, "waiting": None, "next_try_at": None, "failures": 0},
            details={"commit": commit} if commit else {},
        )
    except StaleState:
        return False
    run_log(run).info("report: %s", reason)
    if run.finished_at:
        ctx.observe("report_latency", max(0.0, ctx.now() - parse_rfc3339(run.finished_at)))
    if mark and run.attempt > 0:
        _mark_done(ctx, run)
    return True


def _comment_on_pull(ctx: Context, run: RunRecord, doc: dict[str, Any], path: str, commit: str) -> None:
    """Audit on the forge: one comment on the action's pull request with its outcome (optional, best effort)."""
    if ctx.forge is None or not run.pull_number or not ctx.settings.forge.ops_repo:
        return
    mark = f"<!-- reconciler:result:{run.id}:{run.attempt} -->"
    link = f"{(ctx.settings.forge.url or '').rstrip('/')}/{ctx.settings.forge.ops_repo}/src/commit/{commit}/{path}" if commit else path
    body = (
        f"{mark}\nVault action `{run.action_id}` was reported: outcome **{doc['outcome']}**, exit code {doc['exit_code']} "
        f"(run `{run.id}`, attempt {run.attempt}). Result: {link}\n"
    )
    _post_comment(ctx, run.id, run.pull_number, body, mark)


PENDING_COMMENTS_KEY = "pending_pr_comments"
"""Store key: pull-request comments that failed, ``{run_id: {pull, body, mark, error, since}}``; retried
with every report and shown by ``reconciler status`` until they go through."""
COMMENT_RETRY_SECONDS = 60.0


def _post_comment(ctx: Context, run_id: str, pull: int, body: str, mark: str) -> bool:
    """Post one comment (idempotent through its marker); a failure is recorded for a later retry, never raised."""
    assert ctx.forge is not None and ctx.settings.forge.ops_repo
    try:
        ctx.forge.comment(ctx.settings.forge.ops_repo, pull, body, unless_marked=mark)
    except (TransientError, PermanentError) as exc:
        log.warning("could not comment on pull request #%s for run %s (retried): %s", pull, run_id, exc)
        pending = pending_comments(ctx.store)
        since = (pending.get(run_id) or {}).get("since") or ctx.stamp()
        pending[run_id] = {"pull": pull, "body": body, "mark": mark, "error": str(exc), "since": since, "tried": ctx.now()}
        ctx.store.set_value(PENDING_COMMENTS_KEY, json.dumps(pending))
        return False
    pending = pending_comments(ctx.store)
    if pending.pop(run_id, None) is not None:
        ctx.store.set_value(PENDING_COMMENTS_KEY, json.dumps(pending))
    return True


def pending_comments(store: Any) -> dict[str, dict[str, Any]]:
    raw = store.get_value(PENDING_COMMENTS_KEY)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def retry_pending_comments(ctx: Context) -> None:
    """Post again the comments that failed, each at most once a minute."""
    if ctx.forge is None or not ctx.settings.forge.ops_repo:
        return
    for run_id, item in list(pending_comments(ctx.store).items()):
        if ctx.now() - float(item.get("tried") or 0) < COMMENT_RETRY_SECONDS:
            continue
        _post_comment(ctx, run_id, int(item["pull"]), str(item["body"]), str(item["mark"]))


def stored_document(ctx: Context, run_id: str) -> dict[str, Any] | None:
    raw = ctx.store.get_value(REPORTED_DOC_KEY + run_id)
    return json.loads(raw) if raw else None
