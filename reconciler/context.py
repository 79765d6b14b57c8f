"""What every part of a reconcile pass shares: settings, store, clients, clock, claims in memory."""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from reconciler.ports import ForgeAPI, NomadAPI, OpsRepoAPI, VaultAPI
from reconciler.settings import Settings
from store.models import RunRecord
from states.machine import IN_FLIGHT
from store.runs import RunStore, rfc3339

log = logging.getLogger("reconciler")

#: Longest wait, in seconds, after consecutive transient failures of one run (a run retries at
#: least this often during an outage: cheap, and it recovers within seconds once the system is back).
BACKOFF_CAP = 10.0


@dataclass
class Claim:
    """A minted, wrapped claim token held in memory only (never stored: the wrapping token is a secret)."""

    wrapping_token: str
    wrapping_accessor: str
    token_accessor: str
    expires_at: float


@dataclass
class Context:
    settings: Settings
    store: RunStore
    nomad: NomadAPI
    vault: VaultAPI
    ops: OpsRepoAPI
    forge: ForgeAPI | None = None
    clock: Callable[[], float] = time.time
    claims: dict[str, Claim] = field(default_factory=dict)
    """Wrapping tokens by run id. Lost on restart on purpose: the run then rebinds."""
    head: str | None = None
    """The ops repo commit this pass reads desired state from."""
    gate_head: str | None = None
    """The commit approvals are read at: ``head``, or an older head when all that changed since are
    result files (the reconciler's own pushes change nothing an approval depends on)."""
    approval_heads: dict[tuple[str, str], str] = field(default_factory=dict)
    """``desired.approval_head``'s last answer (commits do not change: asked once per pair)."""
    claim_records: dict[str, Any] = field(default_factory=dict)
    """Durable claim records as this process last wrote them (saves a read before each rewrite)."""
    commit_times: dict[str, float] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    """Accessors this process revoked (revoking is idempotent; this only saves repeat calls)."""
    pass_cache: dict[Any, Any] = field(default_factory=dict)
    """Answers shared by every step of one pass; cleared by ``begin_pass``."""
    parent_checks: dict[str, float] = field(default_factory=dict)
    """When each parent job was last found unchanged (drift guard)."""
    parent_warned: set[str] = field(default_factory=set)
    metrics: Any = None
    """``reconciler.metrics.Metrics`` when metrics are collected."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _slot_lock: threading.Lock = field(default_factory=threading.Lock)
    """Reserving in-flight slots (reads the store under it: kept apart from the pass cache's lock)."""
    _reserved_runs: list[RunRecord] = field(default_factory=list)
    _helpers: Any = None
    _cache_born: float = float("-inf")
    _computing: dict[Any, threading.Event] = field(default_factory=dict)

    def now(self) -> float:
        return self.clock()

    def begin_pass(self, max_age: float = 0.0) -> None:
        """Forget what earlier passes learned from the forge (approvals may have changed since).

        ``max_age``: keep the answers while they are younger than this many seconds (the
        service runs several passes a second under load; each need not ask again).
        """
        with self._lock:
            now = time.monotonic()
            if now - self._cache_born >= max_age:
                self.pass_cache.clear()
                self._cache_born = now

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        """A value computed at most once per pass (gate readers, trusted tiers); concurrent callers
        of the same key wait for the one computing it instead of computing it again."""
        while True:
            with self._lock:
                if key in self.pass_cache:
                    return self.pass_cache[key]
                busy = self._computing.get(key)
                if busy is None:
                    busy = self._computing[key] = threading.Event()
                    break
            busy.wait()
        try:
            value = compute()
            with self._lock:
                self.pass_cache[key] = value
            return value
        finally:
            with self._lock:
                self._computing.pop(key, None)
            busy.set()

    def together(self, *calls: Callable[[], Any]) -> list[Any]:
        """Run independent calls at once (a log read, a revocation: one round trip instead of several);
        their results in order. The first error is raised once all have ended. A call must not itself
        use ``together`` (the helpers would wait on each other)."""
        if len(calls) <= 1:
            return [call() for call in calls]
        with self._lock:
            if self._helpers is None:
                from concurrent.futures import ThreadPoolExecutor

                self._helpers = ThreadPoolExecutor(max_workers=16, thread_name_prefix="together")
            helpers = self._helpers
        futures = [helpers.submit(call) for call in calls]
        errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error
        return [f.result() for f in futures]

    def observe(self, what: str, *args: Any) -> None:
        """Record a metric if metrics are on (``what`` names a ``Metrics`` method)."""
        if self.metrics is not None:
            getattr(self.metrics, what)(*args)

    def stamp(self, ts: float | None = None) -> str:
        return rfc3339(self.now() if ts is None else ts)

    def held_back(self) -> str | None:
        """Why no run may take new work now (operator brakes), or None."""
        from reconciler import brakes

        b = self.cached(("brakes",), lambda: brakes.read(self.store))
        if b.holds_new_work:
            return f"held: dispatching is {b.describe()} (`reconciler resume` lifts it)"
        return None

    # -- in-flight capacity, reserved within a pass ---------------------------
    def reserve_slot(self, run: RunRecord) -> str | None:
        """Take an in-flight slot for ``run``: None when taken, else why not. Release with ``release_slot``.

        Checked atomically with the other steps of the pass: the global limit,
        the per-kind limit, mutual exclusion per formula or per secret.
        """
        loop = self.settings.loop
        with self._slot_lock:
            reserved = [r for r in self._reserved_runs if r.id != run.id]
            if self.store.in_flight() + len(reserved) >= loop.max_in_flight:
                return f"waiting for capacity: {loop.max_in_flight} runs in flight (RECONCILER_MAX_IN_FLIGHT)"
            why = self._limits_block(run, reserved) if (loop.kind_limits or loop.exclusive) else None
            if why:
                return why
            self._reserved_runs.append(run)
            return None

    def _limits_block(self, run: RunRecord, reserved: list[RunRecord]) -> str | None:
        loop = self.settings.loop
        flying = [r for r in self.store.runs(IN_FLIGHT) if r.id != run.id] + reserved
        limit = dict(loop.kind_limits).get(run.kind)
        if limit is not None and sum(1 for r in flying if r.kind == run.kind) >= limit:
            return f"waiting for capacity: {limit} {run.kind} runs in flight (RECONCILER_KIND_LIMITS)"
        exclusive = set(loop.exclusive)
        if run.formula and f"formula:{run.formula}" in exclusive:
            other = next((r for r in flying if r.formula == run.formula), None)
            if other is not None:
                return f"waiting: formula {run.formula} runs one at a time; {other.id} is in flight (RECONCILER_EXCLUSIVE)"
        for secret in run.secrets:
            if f"secret:{secret}" in exclusive:
                other = next((r for r in flying if secret in r.secrets), None)
                if other is not None:
                    return f"waiting: secret {secret} is used by one run at a time; {other.id} is in flight (RECONCILER_EXCLUSIVE)"
        return None

    def release_slot(self, run: RunRecord) -> None:
        with self._slot_lock:
            self._reserved_runs = [r for r in self._reserved_runs if r.id != run.id]

    def backoff(self, run: RunRecord) -> float:
        """Seconds before the next try after ``run.failures`` consecutive transient failures."""
        base = min(BACKOFF_CAP, 0.5 * (2 ** min(run.failures, 6)))
        return base * (0.5 + random.random() / 2)


def run_log(run: RunRecord) -> logging.LoggerAdapter[Any]:
    """A logger whose lines carry the run id and action id."""
    return logging.LoggerAdapter(log, {"run_id": run.id, "action_id": run.action_id or f"issue:{run.issue}"})
