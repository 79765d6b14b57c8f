"""The reconcile loop: level-triggered passes over desired state and reality.

A pass:

1. fetches the ops repo and, when its head moved, updates the runs from the
   action files (``desired.scan``);
2. advances every active run by one idempotent step (``steps.STEPS``), many at
   once on a thread pool - a 45-minute action never delays another;
3. reports every run whose outcome is known, in one push (``publish``).

Transient errors leave a run where it is with a persisted ``next_try_at`` and
a visible ``waiting`` reason; a failing system slows only the runs that need it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from reconciler import desired, publish, sidecar_runs
from reconciler.clients.errors import PermanentError, TransientError
from reconciler.context import Context, run_log
from reconciler.decide import TIMEOUT_GRACE
from reconciler.leader import Leadership, StoreOwner, record_to_store
from reconciler.watchers import Watchers
from reconciler.step_table import step_for
from reconciler.steps import STEPS
from states.machine import ACTIVE, AWAITING_REPORT, State
from store.models import KINDS, RunBrief, RunRecord
from store.runs import StaleState, parse_rfc3339

log = logging.getLogger("reconciler.loop")


@dataclass
class PassSummary:
    head: str | None = None
    created: int = 0
    stepped: int = 0
    reported: int = 0
    errors: list[str] = field(default_factory=list)
    duration: float = 0.0


class Reconciler:
    """Runs passes; ``serve`` repeats them until told to stop."""

    def __init__(self, ctx: Context, *, workers: int = 16, sleep: Callable[[float], None] | None = None) -> None:
        self.ctx = ctx
        self.leadership: Leadership | None = None
        if ctx.settings.loop.leader_lock:
            self.leadership = Leadership(
                ctx.nomad,
                ttl=ctx.settings.loop.lock_ttl,
                lock_delay=ctx.settings.loop.lock_delay,
                record=record_to_store(ctx.store),
                clock=ctx.clock,
                lease=ctx.store,
                owner=_store_owner(ctx.store),
            )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="step")
        # Watching and collecting never queue behind a burst of new dispatches.
        self._watch_pool = ThreadPoolExecutor(max_workers=max(4, workers), thread_name_prefix="watch")
        # Reporting (revoke, push, mark done) runs beside the passes, one batch at a time: a push
        # never holds up admission and dispatch, and results finishing meanwhile share the next push.
        self._report_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report")
        self._reporting: Any = None
        self._last_report = float("-inf")
        self._marking: set[Any] = set()
        self._workers = workers
        self._wake = threading.Event()
        self._sleep = sleep
        self._ready = False
        self._repush: list[str] = []
        self._last_sidecar_scan = float("-inf")
        self._stepping: dict[str, Any] = {}
        self._stepping_pending: set[str] = set()
        """Ids of the stepping runs that were pending when submitted (admission counts these)."""
        self._steps_lock = threading.Lock()
        self._remote_dirty = threading.Event()
        self._last_fetch = float("-inf")
        self._alloc_index = 0
        self._last_alloc_list = float("-inf")
        self._last_watch: dict[str, float] = {}
        self._watch_live = False
        """True while the allocation watcher reports changes (then the loop does not list allocations)."""
        """Started runs: monotonic time their timeout falls due (a look is due then, watch or not)."""
        self._job_changes: dict[str, tuple[float, set[str]]] = {}
        """Jobs the watcher saw change, not yet looked at: job id -> (when first seen, client statuses)."""

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._watch_pool.shutdown(wait=True)
        self._report_pool.shutdown(wait=True)
        if self.leadership is not None:
            self.leadership.release()

    def leads(self) -> bool:
        """True when this instance may act (it holds the leadership lock, or runs without one)."""
        return self.leadership is None or self.leadership.try_acquire()

    def standby_reason(self) -> str:
        """Why this instance does not act: Nomad unreachable (address, error), or who holds the lock."""
        lead = self.leadership
        if lead is None:
            return "not standing by"
        if lead.unreachable:
            return (
                f"cannot reach Nomad at NOMAD_ADDR={self.ctx.settings.nomad.addr} to take the leadership lock "
                f"({lead.path}): {lead.unreachable}; check NOMAD_ADDR, NOMAD_TOKEN and that Nomad is up"
            )
        who = f"another reconciler ({lead.holder})" if lead.holder else "another reconciler"
        return f"standby: {who} holds the leadership lock (Nomad variable {lead.path})"

    def _sidecar_scan_due(self) -> bool:
        """Scan the tracker at most once per interval (cheap ``since`` queries, but not every sub-second pass)."""
        now = time.monotonic()
        if now - self._last_sidecar_scan < self.ctx.settings.loop.interval:
            return False
        self._last_sidecar_scan = now
        return True

    def wake(self) -> None:
        self._wake.set()

    # -- one pass ---------------------------------------------------------------
    def run_pass(self, *, wait: bool = True) -> PassSummary:
        """One pass. With ``wait=False`` (the service) steps keep running on the pool after it
        returns, and each one that finishes wakes the loop, so a run never waits for others."""
        ctx = self.ctx
        started = time.monotonic()
        summary = PassSummary()
        if not self.leads():
            summary.errors.append(self.standby_reason())
            ctx.observe("set_leader", False)
            ctx.observe("alive")
            return summary
        ctx.observe("set_leader", True)
        ctx.begin_pass(0.0 if wait else self.PASS_CACHE_SECONDS)
        try:
            if not self._ready:
                ctx.ops.ensure_ready()
                self._ready = True
            if wait or self._remote_dirty.is_set() or ctx.head is None or time.monotonic() - self._last_fetch >= ctx.settings.loop.interval:
                self._remote_dirty.clear()
                ctx.head = ctx.ops.fetch()
                self._last_fetch = time.monotonic()
            head = ctx.head
            summary.head = head
            ctx.gate_head = desired.approval_head(ctx, ctx.gate_head, head)
            scan = desired.scan(ctx, head)
            summary.created = len(scan.created)
            with self._steps_lock:
                self._repush.extend(scan.results_missing)
        except (TransientError, PermanentError) as exc:
            summary.errors.append(f"ops repo: {exc}")
            ctx.observe("external_error", exc.system or "git")
            log.warning("ops repo unavailable, watching runs only: %s", exc)
        except Exception as exc:  # a bug or an input nobody foresaw must not stop the service
            summary.errors.append(f"ops repo: internal error {type(exc).__name__}: {exc}")
            log.exception("desired-state scan failed; watching runs only this pass")
        if sidecar_runs.enabled(ctx) and self._sidecar_scan_due():
            try:
                summary.created += len(sidecar_runs.scan(ctx, cap=ctx.settings.loop.max_sidecars))
            except (TransientError, PermanentError) as exc:
                summary.errors.append(f"issue tracker: {exc}")
                log.warning("issue tracker unavailable, sidecar discovery skipped this pass: %s", exc)

        due = self._select_due(ctx, use_watcher=not wait)
        summary.stepped = len(due)
        futures = []
        for run in due:
            watching = State(run.state) in (State.DISPATCHED, State.RUNNING)
            future = (self._watch_pool if watching else self._pool).submit(self._step, run)
            with self._steps_lock:
                self._stepping[run.id] = future
                if State(run.state) == State.PENDING:
                    self._stepping_pending.add(run.id)
            future.add_done_callback(lambda f, rid=run.id: self._step_done(rid))
            futures.append(future)
        if wait:
            for f in futures:
                err = f.result()
                if err:
                    summary.errors.append(err)
        if self.leadership is None or self.leadership.is_leader:
            if wait:
                reported, errors = self._report(ctx.head)
                summary.reported, summary.errors = len(reported), summary.errors + errors
            else:
                self._report_in_background(ctx.head)
        summary.duration = time.monotonic() - started
        ctx.observe("pass_duration", summary.duration)
        ctx.observe("set_runs_by_state", ctx.store.counts())
        if ctx.metrics is not None:
            ctx.observe("set_oldest_by_state", ctx.store.oldest_by_state())
        return summary

    def _report(self, head: str | None, *, wait_marks: bool = True) -> tuple[list[str], list[str]]:
        """Report every run whose outcome is known (one push) and the finished sidecar runs.

        ``wait_marks=False``: the durable claims are marked done on the watch pool, so the next
        push need not wait for those Nomad writes (``reporting()`` covers them until they end).
        """
        ctx = self.ctx
        reported: list[str] = []
        errors: list[str] = []
        if head is not None:
            with self._steps_lock:
                repush, self._repush = self._repush, []
            try:
                reported = publish.report_ready(ctx, repush, mark_later=None if wait_marks else self._mark_later)
            except (TransientError, PermanentError) as exc:
                with self._steps_lock:
                    self._repush.extend(repush)
                errors.append(f"report: {exc}")
        reported += sidecar_runs.report_ready(ctx)
        return reported, errors

    def _report_in_background(self, head: str | None) -> None:
        """Start a report on the reporter thread unless one is under way; its end wakes the loop."""
        with self._steps_lock:
            if self._reporting is not None and not self._reporting.done():
                return
            if time.monotonic() - self._last_report < self.REPORT_EVERY:
                return  # results finishing meanwhile share the next push (an active run keeps passes coming)
            if not self._repush and not self.ctx.store.column_by_state("id", AWAITING_REPORT) and not sidecar_runs.enabled(self.ctx):
                return
            self._last_report = time.monotonic()
            self._reporting = self._report_pool.submit(self._report_logged, head)

    def _report_logged(self, head: str | None) -> None:
        try:
            reported, errors = self._report(head, wait_marks=False)
            for err in errors:
                log.warning("%s", err)
            if reported:
                self._wake.set()  # runs that waited on the push may now be re-dispatched or end the serve
        except Exception:  # a bug must not stop the reporter thread for good
            log.exception("report failed")

    def _mark_later(self, runs: list[RunRecord]) -> None:
        if not runs:
            return
        future = self._watch_pool.submit(publish.mark_all_done, self.ctx, runs)
        with self._steps_lock:
            self._marking.add(future)
        future.add_done_callback(self._marked)

    def _marked(self, future: Any) -> None:
        with self._steps_lock:
            self._marking.discard(future)

    def reporting(self) -> bool:
        """A report, or the marking of its claims, is under way."""
        with self._steps_lock:
            return bool(self._marking) or (self._reporting is not None and not self._reporting.done())

    #: Seconds the service's passes share answers from the forge and Nomad listings (passes run several
    #: times a second under load); a pass run on its own (``wait=True``) always asks afresh.
    PASS_CACHE_SECONDS = 1.0
    #: Seconds between the starts of two background reports: a push costs git work whatever its size,
    #: so under a burst results are gathered for this long (the latency target is 1 s from job end).
    REPORT_EVERY = 0.3
    #: Seconds after which a watched run is looked at even if Nomad reported no change for it.
    WATCH_SAFETY = 5.0
    #: WATCH_SAFETY for a started run while the Nomad watch is live: the event stream carries every allocation
    #: change (resumed from its index, a gap caught up by one list), so this look only guards against a change
    #: nobody reported; the run's own timeout deadline brings its look forward (``_timeout_at``). One look is
    #: two reads (job, allocations): 90 s keeps a running child under 2 Nomad requests a minute. A run not yet
    #: started keeps WATCH_SAFETY (placement deadline).
    WATCH_SAFETY_WATCHED = 90.0
    #: Seconds a wake-up waits so that many finishing steps share one pass.
    COALESCE = 0.05
    #: Seconds between two listings of Nomad's allocations by passes run without a watcher (``run_pass``).
    ALLOC_LIST_EVERY = 0.2
    #: The same while the service's Nomad watch is failing: the list is unfiltered (go-bexpr has no ``>``),
    #: the whole namespace's allocations each time, so the safety poll is bounded to one every 2 s.
    FALLBACK_LIST_EVERY = 2.0

    def _select_due(self, ctx: Context, *, use_watcher: bool = False) -> list[RunRecord]:
        """Runs to step this pass: not already stepping, due, and worth a look.

        Watched runs (dispatched, running) are looked at when Nomad says their
        allocations changed, when new, or every WATCH_SAFETY seconds (deadlines,
        jobs gone behind our back; WATCH_SAFETY_WATCHED for started runs while the
        watcher reports changes). Pending vault actions are admitted only as far
        as in-flight capacity allows, so a backlog costs nothing per pass.
        """
        now = ctx.now()
        stamp = ctx.stamp(now)
        mono = time.monotonic()
        with self._steps_lock:
            busy = set(self._stepping)
            queued = len(self._stepping_pending)
        # Pending vault actions are many under a burst: only as many as may be admitted are listed.
        sidecar_kinds = [k for k in KINDS if k != "vault-action"]
        runs = [
            r
            for r in ctx.store.briefs(ACTIVE_PAST_PENDING, due_by=stamp) + ctx.store.briefs([State.PENDING], kinds=sidecar_kinds, due_by=stamp)
            if r.id not in busy and step_for(r) is not None and _due(r, now)
        ]
        watched = [r for r in runs if r.state in (State.DISPATCHED, State.RUNNING)]
        changes: dict[str, set[str]] | None = {}
        with self._steps_lock:
            live = self._watch_live and use_watcher
            if live:
                changes = {job: statuses for job, (_, statuses) in self._job_changes.items()}
        every = self.FALLBACK_LIST_EVERY if use_watcher else self.ALLOC_LIST_EVERY
        if watched and not live and hasattr(ctx.nomad, "allocation_changes") and mono - self._last_alloc_list >= every:
            try:
                index, listed_jobs = ctx.nomad.allocation_changes(self._alloc_index)  # type: ignore[attr-defined]
                changes = {job: {"listed"} for job in listed_jobs}  # status unknown: always worth a look
                self._alloc_index = index
                self._last_alloc_list = mono
            except (TransientError, PermanentError):
                changes = None
        due: list[RunBrief] = []
        settled: set[str] = set()
        for r in runs:
            if r.state not in (State.DISPATCHED, State.RUNNING):
                due.append(r)
                continue
            last = self._last_watch.get(r.id)
            if last is None and live:
                # the watcher names it when its allocation starts or ends; until then the safety look
                last = self._last_watch[r.id] = mono
            statuses = None if changes is None else changes.get(r.nomad_job_id or "")
            # a started run learns nothing from "still running" (task events); anything else is worth a look
            named = statuses is not None and (r.state == State.DISPATCHED or bool(statuses - {"running"}))
            if statuses is not None:
                settled.add(r.nomad_job_id or "")
            safety = self.WATCH_SAFETY_WATCHED if live and r.state == State.RUNNING else self.WATCH_SAFETY
            timed_out = r.state == State.RUNNING and now >= _timeout_at(r)
            # a run back from a backoff (or a requeue it asked for) is looked at: the change that made its
            # failed step happen was consumed by that step
            retry = r.next_try_at is not None
            if changes is None or last is None or named or timed_out or retry or mono - last >= safety:
                self._last_watch[r.id] = mono
                due.append(r)
        if live:
            with self._steps_lock:
                # what was looked at (or needs no look) is forgotten; a change of a run being stepped right
                # now, or waiting out a backoff, stays until it is looked at; a change of no run of ours ages out
                # (after the safety look's interval: a run in backoff is not listed, yet its change must survive)
                for job_id in list(self._job_changes):
                    if job_id in settled or mono - self._job_changes[job_id][0] >= self.WATCH_SAFETY_WATCHED:
                        del self._job_changes[job_id]
        if ctx.head is not None:
            free = ctx.settings.loop.max_in_flight - ctx.store.in_flight()
            # a few more than the free slots (some will be rejected, not bound), and never more than
            # the workers can take now: a queue of pending steps would delay everything behind it
            room = min(max(0, free) + 8, max(0, 2 * self._workers - queued))
            if room:
                pending = ctx.store.briefs([State.PENDING], kinds=["vault-action"], due_by=stamp, limit=room + queued)
                due.extend([r for r in pending if r.id not in busy and _due(r, now)][:room])
        due.sort(key=lambda r: (State(r.state) == State.PENDING, r.created_at))
        # Full records only for the runs stepped now; one that moved since the listing is left for the next pass.
        listed = {r.id: r.state for r in due}
        chosen = [run for run in ctx.store.get_many(listed) if State(run.state) == listed[run.id]]
        return chosen

    def _step_done(self, run_id: str) -> None:
        with self._steps_lock:
            self._stepping.pop(run_id, None)
            self._stepping_pending.discard(run_id)
        self._wake.set()

    def allocations_changed(self, jobs: dict[str, set[str]] | None) -> None:
        """From the allocation watcher: these jobs' allocations changed to these client statuses
        (None: the watch is failing)."""
        with self._steps_lock:
            if jobs is None:
                self._watch_live = False
                return
            self._watch_live = True
            now = time.monotonic()
            for job_id, statuses in jobs.items():
                seen, known = self._job_changes.get(job_id, (now, set()))
                self._job_changes[job_id] = (seen, known | statuses)

    def nomad_watch_state(self, state: str, why: str | None) -> None:
        """From the watcher: the Nomad watch is ``live`` or ``failing`` (``why``): a metric and a line of `status`."""
        if state in ("live", "failing"):
            self.ctx.observe("nomad_watch", state == "live")
        record = {"state": state, "since": self.ctx.now(), "why": why}
        if state == "failing":
            record["fallback"] = (
                f"listing allocations every {self.FALLBACK_LIST_EVERY:g} s and looking at every in-flight run every {self.WATCH_SAFETY:g} s"
            )
        try:
            self.ctx.store.set_value("nomad_watch", json.dumps(record))
        except Exception:  # the store being busy must not stop the watcher thread
            log.exception("could not record the Nomad watch state")

    def remote_changed(self, head: str | None = None) -> None:
        """The ops remote's head moved (to ``head``): fetch at the next pass - unless it is our own
        result push, which changes nothing desired (the next periodic fetch catches up)."""
        if head is not None and head == getattr(self.ctx.ops, "pushed_head", None):
            return
        self._remote_dirty.set()
        self._wake.set()

    def _step(self, run: RunRecord) -> str | None:
        ctx = self.ctx
        if self.leadership is not None and not self.leadership.is_leader:
            return "leadership lost: step skipped"
        step = step_for(run)
        try:
            current = run
            for _ in range(3):  # follow quick progress (pending -> bound -> dispatched) in one pass
                before = State(current.state)
                current = step(ctx, current)
                after = State(current.state)
                if after == before or after not in STEPS or after in (State.DISPATCHED,) or before in (State.DISPATCHED, State.RUNNING):
                    break  # a watch step already decided on what it saw: looking again at once would see the same
                step = step_for(current)
            done: dict[str, Any] = {}
            if current.failures:
                done["failures"] = 0  # the step went through: the backoff counts consecutive failures only
            if current.next_try_at and current.next_try_at == run.next_try_at:
                done["next_try_at"] = None  # the retry it waited for happened (a step's own requeue is kept)
            if done:
                ctx.store.update(run.id, done)
            return None
        except StaleState:
            return None
        except TransientError as exc:
            fresh = ctx.store.get(run.id) or run
            delay = exc.delay if exc.delay is not None else ctx.backoff(fresh)
            why = f"{exc.system or 'dependency'} unavailable: {exc}"
            ctx.observe("external_error", exc.system or "unknown")
            ctx.store.update(
                run.id,
                {"waiting": why, "failures": fresh.failures + 1, "next_try_at": ctx.stamp(ctx.now() + delay)},
            )
            run_log(run).warning("transient: %s (next try in %.0f s)", why, delay)
            return f"{run.id}: {why}"
        except PermanentError as exc:
            fresh = ctx.store.get(run.id) or run
            why = f"{exc.system or 'dependency'} refused: {exc}"
            ctx.observe("external_error", exc.system or "unknown")
            ctx.store.update(run.id, {"waiting": why, "failures": fresh.failures + 1, "next_try_at": ctx.stamp(ctx.now() + 60)})
            run_log(run).error("permanent error, will look again in 60 s: %s", why)
            return f"{run.id}: {why}"
        except Exception as exc:  # a bug must not stop other runs
            log.exception("step of run %s failed", run.id)
            try:
                ctx.store.update(run.id, {"waiting": f"internal error: {type(exc).__name__}: {exc}", "next_try_at": ctx.stamp(ctx.now() + 30)})
            except Exception:
                pass
            return f"{run.id}: internal error {exc}"

    # -- many passes --------------------------------------------------------------
    def serve(self, stop: threading.Event, *, until_idle: bool = False, timeout: float | None = None) -> bool:
        """Run passes until ``stop`` is set (or, with ``until_idle``, no run is active).

        Returns False when ``timeout`` ran out first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = self.ctx.settings.loop.interval
        self._remote_dirty.set()  # the first pass of every serve() reads the remote afresh
        # A local remote is polled every second (a cheap ls-remote). A network one (HTTPS, ssh) is not polled: the
        # pass fetches it once per interval anyway, and an ls-remote over HTTPS costs what that fetch costs (a 401
        # challenge, the authenticated ref advertisement, an upload-pack process on the forge).
        local = getattr(self.ctx.ops, "remote_is_local", True)
        watchers = Watchers(
            self.ctx.nomad,
            self.ctx.ops,
            self.wake,
            on_remote=self.remote_changed,
            on_allocations=self.allocations_changed,
            on_state=self.nomad_watch_state,
            remote_poll=1.0 if local else None,
        ).start()
        try:
            return self._serve(stop, watchers, until_idle=until_idle, deadline=deadline, interval=interval)
        finally:
            watchers.stop()
            with self._steps_lock:
                self._watch_live = False
            self.nomad_watch_state("stopped", None)

    def _serve(self, stop: threading.Event, watchers: Watchers, *, until_idle: bool, deadline: float | None, interval: float) -> bool:
        last_standby = ""
        while not stop.is_set():
            if not self.leads():
                why = self.standby_reason()
                if self.leadership is not None and self.leadership.unreachable:
                    log.error("%s; retrying", why)
                elif why != last_standby:
                    log.info("%s; waiting", why)
                last_standby = why
                self._wake.wait(min(interval, self.ctx.settings.loop.lock_ttl / 3))
                self._wake.clear()
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                continue
            summary = self.run_pass(wait=False)
            counts = self.ctx.store.counts()
            active = {state: n for state, n in counts.items() if State(state) in ACTIVE and n}
            with self._steps_lock:
                stepping = bool(self._stepping)
            stepping = stepping or self.reporting()
            if until_idle and not active and not stepping:
                return True
            if self._drained(active):
                log.warning("drained: nothing in flight any more; exiting as `reconciler drain` asked")
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            wait = interval
            if active or stepping:
                wait = min(interval, self._next_due())
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            log.debug("pass done in %.3f s: %s; next in %.2f s", summary.duration, summary, wait)
            if self._wake.wait(wait):
                # Coalesce: steps finishing together share the next pass.
                time.sleep(self.COALESCE)
            self._wake.clear()
        return True

    def _drained(self, active: dict[str, int]) -> bool:
        """``active``: runs per active state."""
        from reconciler import brakes

        if not brakes.read(self.ctx.store).draining:
            return False
        return not any(State(state) != State.PENDING for state in active)

    def _next_due(self) -> float:
        """Seconds until the next pass: soon (at most 0.5 s) while runs are active, sooner for a requeue due earlier."""
        soonest = 0.5
        earliest = self.ctx.store.earliest_retry(ACTIVE)
        if earliest:
            soonest = min(soonest, max(0.05, parse_rfc3339(earliest) - self.ctx.now()))
        return max(0.1, min(soonest, 0.5))


def _store_owner(store: Any) -> StoreOwner | None:
    """The owner lock beside an on-disk store (None for an in-memory one: nothing survives a restart)."""
    path = getattr(store, "path", None)
    if path is None or str(path) == ":memory:":
        return None
    return StoreOwner(f"{path}.owner")


#: Active states other than pending: every such run is listed each pass (pending ones only as admitted).
ACTIVE_PAST_PENDING = frozenset(ACTIVE - {State.PENDING})


def _timeout_at(run: RunBrief) -> float:
    """When a started run's timeout falls due (the context's clock), so a live watch need not poll for it."""
    if not run.started_at:
        return float("inf")
    try:
        return parse_rfc3339(run.started_at) + int(run.timeout_minutes or 60) * 60 + TIMEOUT_GRACE + 1.0
    except ValueError:
        return float("inf")


def _due(run: RunBrief, now: float) -> bool:
    if not run.next_try_at:
        return True
    try:
        return parse_rfc3339(run.next_try_at) <= now
    except ValueError:
        return True
