"""The reconcile loop: sources turn changes into run ids on a keyed work queue; workers step them.

The service (``serve``) is shaped like a controller-runtime manager:

* **sources** put run ids on the queue (``reconciler.workqueue``): the ops repo (its head moved, or
  once per ``RECONCILER_INTERVAL``: the runs a scan created or cancelled), the Nomad watch (an
  allocation or job event: the run owning the job; ``reconciler.watchers``), other processes'
  writes to the store (``cancel``, ``retry``, ``pause``: every active run, at most once per
  ``RECONCILER_STORE_POLL``), and each step's own "look again in N s" (``decide.look_again``:
  a retry, the placement deadline, the timeout; at the latest ``RECONCILER_RESYNC``);
* a **capacity gate** admits pending vault actions, oldest first, only as far as in-flight slots
  are free, and frees a slot when an admitted run has been stepped;
* **workers** take one run id at a time - never one run on two workers; a run named again while
  it is stepped is stepped again after - and advance it by one idempotent step (``steps``);
* a **reporter** thread pushes the results of every run whose outcome is known, in one push
  (``publish``); results finishing during a push share the next one.

``run_pass`` is one level-triggered pass instead (``reconciler run --once``, tests): read the ops
repo, step every due active run, report, and return.

Transient errors leave a run where it is with a persisted ``next_try_at`` and a visible
``waiting`` reason; a failing system slows only the runs that need it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from reconciler import desired, publish, sidecar_runs
from reconciler.clients.errors import PermanentError, TransientError
from reconciler.context import Context, run_log
from reconciler.decide import look_again
from reconciler.leader import Leadership, StoreOwner, record_to_store
from reconciler.step_table import step_for
from reconciler.steps import STEPS
from reconciler.watchers import UnclaimedChanges, Watchers
from reconciler.workqueue import CapacityGate, WorkQueue
from states.machine import ACTIVE, AWAITING_REPORT, IN_FLIGHT, State
from store.models import KINDS, RunRecord
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
    """Runs passes (``run_pass``), or serves the work queue until told to stop (``serve``)."""

    def __init__(self, ctx: Context, *, workers: int | None = None) -> None:
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
        self._workers = max(2, workers or ctx.settings.loop.workers)
        self.queue: WorkQueue[str] = WorkQueue()
        self.admission: CapacityGate[str] = self._gate(self.queue)
        self.unclaimed = UnclaimedChanges()
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="step")
        # The durable claims of reported runs are marked done beside the next push, not before it.
        self._mark_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mark")
        self._marking: set[Any] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._report_wanted = threading.Event()
        self._reporting = False
        self._ready = False
        self._last_sidecar_scan = float("-inf")
        self._remote_dirty = threading.Event()
        self._last_fetch = float("-inf")
        self._watch_live = False
        """True while the Nomad watch follows changes (a started run then needs no look before its resync)."""

    def _gate(self, queue: WorkQueue[str]) -> CapacityGate[str]:
        """Pending runs are let in as far as in-flight slots are free, and take at most half the workers:
        watching and collecting never wait behind a burst of new dispatches."""
        return CapacityGate(queue, waiting=self._pending_due, free=self._free_slots, most=self._workers // 2, slack=ADMIT_BEYOND_FREE)

    def close(self) -> None:
        self.queue.shutdown()
        self._pool.shutdown(wait=True)
        self._mark_pool.shutdown(wait=True)
        if self.leadership is not None:
            self.leadership.release()

    def leads(self) -> bool:
        """True when this instance may act (it holds the leadership lock, or runs without one)."""
        return self.leadership is None or self.leadership.try_acquire()

    def _leading(self) -> bool:
        """True unless a leadership lock is in use and no longer held (no Nomad call: for workers)."""
        return self.leadership is None or self.leadership.is_leader

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

    def wake(self) -> None:
        self._wake.set()

    # -- the desired state: the ops repo and the issue tracker ----------------------------------------
    def _sync_desired(self, summary: PassSummary, *, force: bool, periodic: bool = True) -> None:
        """Fetch the ops repo (when asked, when its head moved, or once per interval) and update the runs
        from the action files; scan the issue tracker once per interval. The ids of runs created or
        cancelled go to the queue, the gate or the reporter."""
        ctx = self.ctx
        interval = ctx.settings.loop.interval
        try:
            if not self._ready:
                ctx.ops.ensure_ready()
                self._ready = True
            due = periodic and time.monotonic() - self._last_fetch >= interval
            if force or due or self._remote_dirty.is_set() or ctx.head is None:
                self._remote_dirty.clear()
                ctx.head = ctx.ops.fetch()
                self._last_fetch = time.monotonic()
                ctx.begin_pass()  # approvals and brakes are read afresh with every fetch
            head = summary.head = ctx.head
            ctx.gate_head = desired.approval_head(ctx, ctx.gate_head, head)
            scan = desired.scan(ctx, head)  # nothing to do (one read) when the head did not move
            summary.created = len(scan.created)
            if scan.results_missing:
                self._keep_repush(scan.results_missing)
            if scan.cancelled or scan.results_missing:
                self._report_wanted.set()
        except (TransientError, PermanentError) as exc:
            summary.errors.append(f"ops repo: {exc}")
            ctx.observe("external_error", exc.system or "git")
            log.warning("ops repo unavailable, watching runs only: %s", exc)
        except Exception as exc:  # a bug or an input nobody foresaw must not stop the service
            summary.errors.append(f"ops repo: internal error {type(exc).__name__}: {exc}")
            log.exception("desired-state scan failed; watching runs only")
        now = time.monotonic()
        if sidecar_runs.enabled(ctx) and (force or now - self._last_sidecar_scan >= interval):
            self._last_sidecar_scan = now
            try:
                created = sidecar_runs.scan(ctx, cap=ctx.settings.loop.max_sidecars)
                summary.created += len(created)
                for run_id in created:
                    self.queue.add(run_id)
            except (TransientError, PermanentError) as exc:
                summary.errors.append(f"issue tracker: {exc}")
                log.warning("issue tracker unavailable, sidecar discovery skipped: %s", exc)

    # -- what is due ---------------------------------------------------------------------------------
    def _pending_due(self, limit: int) -> list[str]:
        """Pending vault actions that are due, oldest first (the capacity gate's waiting keys)."""
        if self.ctx.head is None:
            return []
        stamp = self.ctx.stamp(self.ctx.now())
        return [r.id for r in self.ctx.store.briefs([State.PENDING], kinds=["vault-action"], due_by=stamp, limit=limit)]

    def _free_slots(self) -> int:
        return self.ctx.settings.loop.max_in_flight - self.ctx.store.in_flight()

    def _active_ids(self, *, due_only: bool) -> list[str]:
        """Every active run the gate does not admit (``due_only``: only those due now): what a pass looks at,
        and what a resync puts on the queue."""
        stamp = self.ctx.stamp(self.ctx.now()) if due_only else None
        sidecar_kinds = [k for k in KINDS if k != "vault-action"]
        briefs = self.ctx.store.briefs(ACTIVE_PAST_PENDING, due_by=stamp) + self.ctx.store.briefs(
            [State.PENDING], kinds=sidecar_kinds, due_by=stamp
        )
        return [r.id for r in briefs if step_for(r) is not None or not due_only]

    def _resync(self) -> None:
        """Put every active run on the queue (start, leadership regained, another process wrote the store):
        each one's step decides what is due and when to look again."""
        for run_id in self._active_ids(due_only=False):
            self.queue.add(run_id)
        self.admission.admit()
        self._report_wanted.set()

    # -- one pass ------------------------------------------------------------------------------------
    def run_pass(self, *, fetch: bool = True) -> PassSummary:
        """One level-triggered pass: read the ops repo, step every due active run (and as many pending
        ones as capacity admits) at once, wait for them, report. ``fetch=False``: on the head already
        read (a fetch only when there is none yet, or the remote watch said the head moved)."""
        ctx = self.ctx
        started = time.monotonic()
        summary = PassSummary()
        if not self.leads():
            summary.errors.append(self.standby_reason())
            ctx.observe("set_leader", False)
            ctx.observe("alive")
            return summary
        ctx.observe("set_leader", True)
        ctx.begin_pass()
        self._sync_desired(summary, force=fetch, periodic=fetch)
        due = self._active_ids(due_only=True)
        if ctx.head is not None:
            due += self._pending_due(min(max(0, self._free_slots()) + ADMIT_BEYOND_FREE, self._workers // 2))
        chosen = ctx.store.get_many(due)
        chosen.sort(key=lambda r: (State(r.state) == State.PENDING, r.created_at))
        summary.stepped = len(chosen)
        for err in self._pool.map(self._step, chosen):
            if err:
                summary.errors.append(err)
        if self._leading():
            reported, errors = self._report(ctx.head)
            summary.reported, summary.errors = len(reported), summary.errors + errors
        summary.duration = time.monotonic() - started
        self._observe_pass(summary.duration)
        return summary

    def _observe_pass(self, duration: float | None) -> None:
        ctx = self.ctx
        if duration is not None:
            ctx.observe("pass_duration", duration)
        ctx.observe("set_runs_by_state", ctx.store.counts())
        if ctx.metrics is not None:
            ctx.observe("set_oldest_by_state", ctx.store.oldest_by_state())

    # -- reporting -----------------------------------------------------------------------------------
    def _report(self, head: str | None, *, wait_marks: bool = True) -> tuple[list[str], list[str]]:
        """Report every run whose outcome is known (one push) and the finished sidecar runs.

        ``wait_marks=False``: the durable claims are marked done on the mark pool, so the next
        push need not wait for those Nomad writes (``reporting()`` covers them until they end).
        """
        ctx = self.ctx
        reported: list[str] = []
        errors: list[str] = []
        if head is not None:
            repush = self._repush_wanted()
            try:
                reported = publish.report_ready(ctx, repush, mark_later=None if wait_marks else self._mark_later)
                if repush:
                    self._drop_repush(repush)
            except (TransientError, PermanentError) as exc:
                errors.append(f"report: {exc}")
        reported += sidecar_runs.report_ready(ctx)
        return reported, errors

    def _repush_wanted(self) -> list[str]:
        """Reported runs whose result file left main: pushed again with the next report (kept in the store)."""
        raw = self.ctx.store.get_value(REPUSH_KEY)
        return list(json.loads(raw)) if raw else []

    def _keep_repush(self, run_ids: list[str]) -> None:
        with self._lock:
            self.ctx.store.set_value(REPUSH_KEY, json.dumps(sorted(set(self._repush_wanted()) | set(run_ids))))

    def _drop_repush(self, run_ids: list[str]) -> None:
        with self._lock:
            left = sorted(set(self._repush_wanted()) - set(run_ids))
            self.ctx.store.set_value(REPUSH_KEY, json.dumps(left))

    def _report_forever(self, stop: threading.Event) -> None:
        """The reporter thread: a push whenever a result is waiting; results finishing during a push
        share the next one. Without news it looks once per interval (retries of a settle or a comment)."""
        failures = 0
        last_push = float("-inf")
        while not stop.is_set():
            self._report_wanted.wait(self._report_wait())
            if stop.is_set():
                return
            # results finishing together share one push: at most one push starts per RECONCILER_REPORT_EVERY
            stop.wait(max(0.0, last_push + self.ctx.settings.loop.report_every - time.monotonic()))
            last_push = time.monotonic()
            self._report_wanted.clear()
            if not self._leading() or self.ctx.head is None:
                continue
            with self._lock:
                self._reporting = True
            try:
                reported, errors = self._report(self.ctx.head, wait_marks=False)
                for err in errors:
                    log.warning("%s", err)
                failures = failures + 1 if errors else 0
                if reported:
                    self._wake.set()  # runs that waited on the push may end the serve, or free capacity
            except Exception:  # a bug must not stop the reporter thread for good
                log.exception("report failed")
                failures += 1
            finally:
                with self._lock:
                    self._reporting = False
            if failures:
                stop.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))  # a failing push is retried with backoff
                self._report_wanted.set()

    def _report_wait(self) -> float:
        """Seconds the reporter waits without news: until a held result's retry is due, at most an interval."""
        wait = self.ctx.settings.loop.interval
        earliest = self.ctx.store.earliest_retry(AWAITING_REPORT)
        if earliest:
            wait = min(wait, max(0.05, parse_rfc3339(earliest) - self.ctx.now()))
        return wait

    def _mark_later(self, runs: list[RunRecord]) -> None:
        if not runs:
            return
        future = self._mark_pool.submit(publish.mark_all_done, self.ctx, runs)
        with self._lock:
            self._marking.add(future)
        future.add_done_callback(self._marked)

    def _marked(self, future: Any) -> None:
        with self._lock:
            self._marking.discard(future)

    def reporting(self) -> bool:
        """A report, or the marking of its claims, is under way (or asked for)."""
        with self._lock:
            return bool(self._marking) or self._reporting or self._report_wanted.is_set()

    # -- sources -------------------------------------------------------------------------------------
    def allocations_changed(self, jobs: dict[str, set[str]] | None) -> None:
        """From the Nomad watch: these jobs' allocations changed to these client statuses (None: the watch
        is failing). The run owning each job goes on the queue - unless it is started and all it heard is
        "still running" (task events), which decides nothing."""
        if jobs is None:
            self._watch_live = False
            return
        self._watch_live = True
        if not jobs:
            return
        owned: set[str] = set()
        for run_id, state, job in self.ctx.store.runs_for_jobs(jobs):
            owned.add(job)
            if state == State.RUNNING and jobs[job] <= {"running"}:
                continue
            self.queue.add(run_id)
        unclaimed = {job: statuses for job, statuses in jobs.items() if job not in owned}
        if unclaimed:
            self.unclaimed.note(unclaimed)

    def nomad_watch_state(self, state: str, why: str | None) -> None:
        """From the watcher: the Nomad watch is ``live`` or ``failing`` (``why``): a metric and a line of `status`."""
        if state in ("live", "failing"):
            self.ctx.observe("nomad_watch", state == "live")
        record = {"state": state, "since": self.ctx.now(), "why": why}
        if state == "failing":
            loop = self.ctx.settings.loop
            record["fallback"] = (
                f"listing the namespace's allocations every {loop.watch_fallback:g} s (RECONCILER_WATCH_FALLBACK) "
                f"and looking at every in-flight run at least every {loop.resync:g} s (RECONCILER_RESYNC)"
            )
        try:
            self.ctx.store.set_value("nomad_watch", json.dumps(record))
        except Exception:  # the store being busy must not stop the watcher thread
            log.exception("could not record the Nomad watch state")

    def remote_changed(self, head: str | None = None) -> None:
        """The ops remote's head moved (to ``head``): fetch at once - unless it is our own result push,
        which changes nothing desired (the next periodic fetch catches up)."""
        if head is not None and head == getattr(self.ctx.ops, "pushed_head", None):
            return
        self._remote_dirty.set()
        self._wake.set()

    # -- a worker's step -----------------------------------------------------------------------------
    def _work_forever(self) -> None:
        while True:
            run_id = self.queue.get()
            if run_id is None:
                return
            try:
                self._work(run_id)
            except Exception:  # a bug must not stop a worker
                log.exception("working on run %s failed", run_id)
                self.queue.add_after(run_id, 30.0)
            finally:
                self.queue.done(run_id)

    def _work(self, run_id: str) -> None:
        """Step one run and plan its next look: the step's own deadline, at the latest a resync."""
        try:
            left_flight = self._work_on(run_id)
        finally:
            admitted = self.admission.handled(run_id)
        if admitted or left_flight:
            self.admission.admit()  # its place at the gate, or its in-flight slot, is free

    def _work_on(self, run_id: str) -> bool:
        """The step of ``_work``; True when the run left flight (a slot is free)."""
        ctx = self.ctx
        if not self._leading():
            return False  # leadership regained later resyncs every run
        run = ctx.store.get(run_id)
        if run is None or State(run.state) not in ACTIVE:
            return False
        if step_for(run) is None:  # outcome known: the reporter's
            self._report_wanted.set()
            return False
        if not _due_record(run, ctx.now()):
            if not (State(run.state) == State.PENDING and run.kind == "vault-action"):
                self.queue.add_after(run_id, (_parsed(run.next_try_at) or 0.0) - ctx.now())
            return False  # the gate lists a pending vault action again once it is due
        self._step(run)
        after = ctx.store.get(run_id) or run
        before, state = State(run.state), State(after.state)
        if state in AWAITING_REPORT:
            self._report_wanted.set()
        if state == State.DISPATCHED and before != State.DISPATCHED and after.nomad_job_id:
            if self.unclaimed.claim(after.nomad_job_id) is not None:
                self.queue.add(run_id)  # its child's first events came before the dispatch was committed
                return False
        delay = self._look_again(after)
        if state != before:
            self.queue.forget(run_id)
        if delay == 0.0 and state == before:
            self.queue.add_rate_limited(run_id)  # "again at once" without moving (a rebind): per-run backoff, no hot loop
        elif delay is not None:
            self.queue.add_after(run_id, delay)
        return before in IN_FLIGHT and state not in IN_FLIGHT

    def _look_again(self, run: RunRecord) -> float | None:
        """When to step ``run`` again without news (None: news, the gate or the reporter bring it back)."""
        ctx = self.ctx
        state = State(run.state)
        if state not in ACTIVE or step_for(run) is None:
            return None
        if state == State.PENDING and run.kind == "vault-action":
            return None  # the capacity gate lets it in again once it is due
        own = look_again(
            state=state,
            now=ctx.now(),
            next_try_at=_parsed(run.next_try_at),
            dispatched_at=_parsed(run.dispatched_at),
            started_at=_parsed(run.started_at),
            timeout_minutes=run.timeout_minutes,
            placement_deadline=float(ctx.settings.loop.placement_deadline),
        )
        resync = ctx.settings.loop.resync
        if own is None:
            return resync if state in IN_FLIGHT or state == State.PENDING else None
        return min(own, resync)

    def _step(self, run: RunRecord) -> str | None:
        ctx = self.ctx
        if not self._leading():
            return "leadership lost: step skipped"
        step = step_for(run)
        try:
            current = run
            for _ in range(3):  # follow quick progress (pending -> bound -> dispatched) in one step
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

    # -- the service ---------------------------------------------------------------------------------
    def serve(self, stop: threading.Event, *, until_idle: bool = False, timeout: float | None = None) -> bool:
        """Serve the work queue until ``stop`` is set (or, with ``until_idle``, no run is active).

        Returns False when ``timeout`` ran out first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        loop = self.ctx.settings.loop
        self._remote_dirty.set()  # every serve() reads the remote afresh first
        # A local remote is polled every second (a cheap ls-remote). A network one (HTTPS, ssh) is not polled: the
        # ops repo is fetched once per interval anyway, and an ls-remote over HTTPS costs what that fetch costs (a 401
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
            fallback=loop.watch_fallback,
        ).start()
        self.queue = WorkQueue()
        self.admission = self._gate(self.queue)
        halt = threading.Event()
        threads = [threading.Thread(target=self._work_forever, name=f"step-{k}", daemon=True) for k in range(self._workers)]
        threads.append(threading.Thread(target=self._report_forever, args=(halt,), name="report", daemon=True))
        for t in threads:
            t.start()
        try:
            return self._serve(stop, until_idle=until_idle, deadline=deadline)
        finally:
            halt.set()
            self._report_wanted.set()
            self.queue.shutdown()
            for t in threads:
                t.join(timeout=60)
            watchers.stop()
            self._watch_live = False
            self.nomad_watch_state("stopped", None)

    def _serve(self, stop: threading.Event, *, until_idle: bool, deadline: float | None) -> bool:
        loop = self.ctx.settings.loop
        last_standby = ""
        leading = False
        next_store_check = 0.0
        self.ctx.store.changed_elsewhere()  # from here on, other processes' writes are news
        while not stop.is_set():
            if not self.leads():
                leading = False
                why = self.standby_reason()
                if self.leadership is not None and self.leadership.unreachable:
                    log.error("%s; retrying", why)
                elif why != last_standby:
                    log.info("%s; waiting", why)
                last_standby = why
                self.ctx.observe("set_leader", False)
                self.ctx.observe("alive")
                self._wake.wait(min(loop.interval, loop.lock_ttl / 3))
                self._wake.clear()
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                continue
            self.ctx.observe("set_leader", True)
            began = time.monotonic()
            summary = PassSummary()
            self._sync_desired(summary, force=not leading)
            now = time.monotonic()
            if not leading:
                leading = True
                self._resync()  # level-triggered start: every active run is looked at once
            elif now >= next_store_check:
                if self.ctx.store.changed_elsewhere():
                    self.ctx.begin_pass()  # brakes may have changed
                    self._resync()
            if now >= next_store_check:
                next_store_check = now + loop.store_poll
            self.admission.admit()
            self._observe_pass(time.monotonic() - began)
            counts = self.ctx.store.counts()
            active = {state: n for state, n in counts.items() if State(state) in ACTIVE and n}
            busy = self.queue.busy() or self.reporting()
            if until_idle and not active and not busy:
                return True
            if self._drained(active):
                log.warning("drained: nothing in flight any more; exiting as `reconciler drain` asked")
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            wait = min(loop.interval - (time.monotonic() - self._last_fetch), next_store_check - time.monotonic())
            wait = min(wait, self._next_admission())
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
            log.debug("loop: %s; %d queued, %d delayed; next look in %.2f s", summary, len(self.queue), self.queue.pending(), wait)
            self._wake.wait(max(0.01, wait))
            self._wake.clear()
        return True

    def _next_admission(self) -> float:
        """Seconds until a pending run waiting out a retry is due (the gate lists only due runs)."""
        earliest = self.ctx.store.earliest_retry([State.PENDING])
        if not earliest:
            return float("inf")
        return max(0.05, parse_rfc3339(earliest) - self.ctx.now())

    def _drained(self, active: dict[str, int]) -> bool:
        """``active``: runs per active state."""
        from reconciler import brakes

        if not brakes.read(self.ctx.store).draining:
            return False
        return not any(State(state) != State.PENDING for state in active)


def _store_owner(store: Any) -> StoreOwner | None:
    """The owner lock beside an on-disk store (None for an in-memory one: nothing survives a restart)."""
    path = getattr(store, "path", None)
    if path is None or str(path) == ":memory:":
        return None
    return StoreOwner(f"{path}.owner")


#: Pending runs let in beyond the free in-flight slots: while every slot is taken, the first in line are
#: still assessed, so an invalid one is rejected at once and the others show why they wait ("waiting for
#: capacity", looked at again by their step every 2 s) instead of a silent queue.
ADMIT_BEYOND_FREE = 8

#: Store key of the reported runs whose result file must be pushed again (it left main).
REPUSH_KEY = "results_to_repush"

#: Active states other than pending: a pass and a resync look at each of these (pending ones only as admitted).
ACTIVE_PAST_PENDING = frozenset(ACTIVE - {State.PENDING})


def _parsed(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError:
        return None


def _due_record(run: RunRecord, now: float) -> bool:
    when = _parsed(run.next_try_at)
    return when is None or when <= now
