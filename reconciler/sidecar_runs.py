"""Sidecar runs (reproduce, triage, verify): desired state from the issue tracker, and their steps.

Desired state: an incremental scan of ``FORGE_REPO``'s issues (``state=all``,
``since`` the newest change seen, kept in the store as an :class:`IssueIndex`),
then ``sidecars.wants`` / ``sidecars.to_start`` decide which runs to create.

A sidecar goes through the same states as a vault action. It needs no claim
token (the ``sidecar`` job reads its own bot token through its Vault role), so
``bind`` only takes an in-flight slot; ``dispatch`` sends the issue number,
formula and project name as meta with the idempotency token
``<run-id>/<attempt>``; watching is the vault action's (``decide_watch``).
Reporting records the outcome and, when the sidecar failed or its outcome is
unknown, comments once on the issue.
"""

from __future__ import annotations

import re
import tomllib
from reconciler import sidecars
from reconciler.clients.errors import PermanentError, TransientError
from reconciler.context import Context, run_log
from reconciler.steps import guard_parent
from states.machine import ACTIVE, AWAITING_REPORT, State, Transition
from store.models import RunRecord
from store.runs import StaleState

INDEX_KEY = "sidecars.issue_index"
KINDS = sidecars.SIDECAR_KINDS
SIDECAR_TASK = "sidecar"
COMMENT_MARK = "<!-- reconciler:{run_id} -->"


def enabled(ctx: Context) -> bool:
    return bool(ctx.forge is not None and ctx.settings.forge.repo)


def project_name(ctx: Context) -> str:
    """The project's name for the sidecar's meta: from PROJECTS_DIR when a file names FORGE_REPO, else the repo name."""
    repo = ctx.settings.forge.repo or ""
    folder = ctx.settings.projects_dir
    if folder is not None and folder.is_dir():
        for path in sorted(folder.glob("*.toml")):
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
                continue
            if data.get("repo") == repo and isinstance(data.get("name"), str):
                return data["name"]
    return repo.rsplit("/", 1)[-1]


def scan(ctx: Context, *, cap: int) -> list[str]:
    """Create the sidecar runs the tracker asks for now; returns their ids."""
    if not enabled(ctx):
        return []
    assert ctx.forge is not None
    raw = ctx.store.get_value(INDEX_KEY)
    index = sidecars.IssueIndex.from_json(raw) if raw else sidecars.IssueIndex()
    started = ctx.now()
    changed = ctx.forge.issues(ctx.settings.forge.repo or "", state="all", since=index.since())
    index.update(changed, scan_started=started)
    _forget_vanished_sub_issues(ctx, index, started)
    ctx.store.set_value(INDEX_KEY, index.to_json())
    wanted = sidecars.wants(index.open_bug_reports(), index.issues(), revisions=index.revisions())
    existing = [r for r in ctx.store.runs() if r.kind in KINDS]
    in_flight = sum(1 for r in existing if r.state in ACTIVE)
    start, notes = sidecars.to_start(wanted, existing, cap=cap, in_flight=in_flight)
    for note in notes:
        run_log(RunRecord(id="sidecars")).info("%s", note)
    created = []
    for want in start:
        record = RunRecord(
            id=want.run_id,
            kind=want.kind,
            issue=want.issue,
            formula=want.formula,
            trigger=want.trigger,
            timeout_minutes=60,
        )
        ctx.store.create(record, reason=f"issue #{want.issue}: {want.reason}", details={"trigger": want.trigger})
        created.append(want.run_id)
    return created


SUB_ISSUE_RECHECK_SECONDS = 600
"""How often open sub-issues that hold back a ``verify`` are looked up one by one."""
_RECHECK_KEY = "sidecars/sub-issues-checked-at"


def _forget_vanished_sub_issues(ctx: Context, index: sidecars.IssueIndex, now: float) -> None:
    """Drop open sub-issues the forge no longer has, so they stop blocking their parent's ``verify``.

    A deleted issue (or one moved to another repository) never shows up in an incremental scan
    again: the index would keep it open forever. Each open sub-issue of an ``in-progress`` bug
    report is fetched (``GET .../issues/{n}``; 404 means gone) at most every
    ``SUB_ISSUE_RECHECK_SECONDS``.
    """
    assert ctx.forge is not None
    last = ctx.store.get_value(_RECHECK_KEY)
    try:
        if last is not None and now - float(last) < SUB_ISSUE_RECHECK_SECONDS:
            return
    except ValueError:
        pass
    known = index.issues()
    blocking = sorted({
        sub.number
        for parent in index.open_bug_reports()
        if "in-progress" in parent.labels
        for sub in sidecars.sub_issues_of(parent.number, known.values())
        if sub.state.lower() == "open"
    })
    repo = ctx.settings.forge.repo or ""
    for number in blocking:
        if ctx.forge.issue(repo, number) is None:
            index.forget(number)
            run_log(RunRecord(id="sidecars")).info("sub-issue #%d is gone from %s (deleted or moved); it no longer blocks verify", number, repo)
    ctx.store.set_value(_RECHECK_KEY, repr(now))


# --------------------------------------------------------------------------- steps
def step_pending(ctx: Context, run: RunRecord) -> RunRecord:
    held = ctx.held_back() or ctx.reserve_slot(run)
    if held:
        return ctx.store.update(run.id, {"waiting": held, "next_try_at": ctx.stamp(ctx.now() + 2)})
    try:
        attempt = run.attempt + 1
        return ctx.store.transition(
            run.id,
            Transition.BIND,
            expect=State.PENDING,
            reason=f"sidecar {run.kind} for issue #{run.issue}: slot taken (no claim token: the sidecar job holds its own Vault role)",
            changes={"attempt": attempt, "idempotency_token": f"{run.id}/{attempt}", "waiting": None},
        )
    finally:
        ctx.release_slot(run)


def step_bound(ctx: Context, run: RunRecord) -> RunRecord:
    held = ctx.held_back()
    if held:
        return ctx.store.update(run.id, {"waiting": held, "next_try_at": ctx.stamp(ctx.now() + 2)})
    meta = {
        "issue_number": str(run.issue),
        "formula": run.formula or run.kind,
        "project": project_name(ctx),
        "run_id": run.id,
        "attempt": str(run.attempt),
    }
    token = run.idempotency_token or f"{run.id}/{run.attempt}"

    guard_parent(ctx, ctx.settings.nomad.sidecar_job)
    try:
        result = ctx.nomad.dispatch(
            ctx.settings.nomad.sidecar_job,
            meta=meta,
            payload=b"",
            idempotency_token=token,
            id_prefix_template=re.sub(r"[^A-Za-z0-9_-]", "-", f"issue-{run.issue}-{run.kind}"),
        )
    except PermanentError as exc:
        reason = f"dispatch refused by Nomad: {exc}"
        return ctx.store.transition(
            run.id, Transition.COLLECT, expect=State.POLICY_BOUND, reason=reason,
            changes={"outcome": "failure", "exit_code": 1, "error": reason, "finished_at": ctx.stamp()},
        )
    return ctx.store.transition(
        run.id,
        Transition.DISPATCH,
        expect=State.POLICY_BOUND,
        reason=f"Nomad holds {result.job_id} (read back)",
        changes={"nomad_job_id": result.job_id, "dispatched_at": ctx.stamp(), "dispatch_started_at": ctx.stamp(), "waiting": "waiting for placement"},
        details={"job_id": result.job_id, "idempotency_token": token},
    )


# --------------------------------------------------------------------------- reporting
def report_ready(ctx: Context) -> list[str]:
    """Record sidecar outcomes; comment once on the issue when one failed or its outcome is unknown."""
    done = []
    for run in ctx.store.runs(AWAITING_REPORT):
        if run.kind not in KINDS:
            continue
        if State(run.state) == State.CANCELLED and run.nomad_job_id:
            try:
                ctx.nomad.stop(run.nomad_job_id)
            except (TransientError, PermanentError) as exc:  # this run's alone: the others are still reported
                ctx.store.update(run.id, {"waiting": f"stopping {run.nomad_job_id} failing (retried): {exc}"})
                continue
        outcome = run.outcome or "failure"
        note = f"sidecar {run.kind} for issue #{run.issue}: {outcome}"
        if outcome in ("failure", "unknown", "timeout") and enabled(ctx):
            try:
                _comment(ctx, run)
                note += "; commented on the issue"
            except (TransientError, PermanentError) as exc:
                ctx.store.update(run.id, {"waiting": f"recording locally, comment on issue #{run.issue} failing: {exc}"})
                continue
        try:
            ctx.store.transition(run.id, Transition.REPORT, expect=run.state, reason=note, changes={"waiting": None, "next_try_at": None})
            done.append(run.id)
        except StaleState:
            pass
    return done


def _comment(ctx: Context, run: RunRecord) -> None:
    assert ctx.forge is not None
    body = (
        f"{COMMENT_MARK.format(run_id=run.id)}\n"
        f"The **{run.kind}** sidecar for this issue ended with outcome **{run.outcome or 'failure'}**"
        f" (exit code {run.exit_code if run.exit_code is not None else '?'}, run `{run.id}`, attempt {run.attempt}"
        f"{', Nomad job `' + run.nomad_job_id + '`' if run.nomad_job_id else ''}).\n\n"
        f"{run.error or ''}\n"
    )
    ctx.forge.comment(ctx.settings.forge.repo or "", run.issue or 0, body, unless_marked=COMMENT_MARK.format(run_id=run.id))
