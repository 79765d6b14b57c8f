"""What every part of a reconcile pass shares: settings, store, clients, clock, claims in memory."""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from reconciler.ports import ForgeAPI, NomadAPI, OpsRepoAPI, VaultAPI
from reconciler.settings import Settings
from store.models import RunRecord
from store.runs import RunStore, rfc3339

log = logging.getLogger("reconciler")


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
    clock: Callable[[], float] = field(default=lambda: __import__("time").time())
    claims: dict[str, Claim] = field(default_factory=dict)
    """Wrapping tokens by run id. Lost on restart on purpose: the run then rebinds."""
    head: str | None = None
    """The ops repo commit this pass reads desired state from."""
    parent_checks: dict[str, float] = field(default_factory=dict)
    """When each parent job was last found unchanged (drift guard)."""
    parent_warned: set[str] = field(default_factory=set)
    metrics: Any = None
    """``reconciler.metrics.Metrics`` when metrics are collected."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _reserved: int = 0

    def now(self) -> float:
        return self.clock()

    def observe(self, what: str, *args: Any) -> None:
        """Record a metric if metrics are on (``what`` names a ``Metrics`` method)."""
        if self.metrics is not None:
            getattr(self.metrics, what)(*args)

    def stamp(self, ts: float | None = None) -> str:
        return rfc3339(self.now() if ts is None else ts)

    # -- in-flight capacity, reserved within a pass ---------------------------
    def reserve_slot(self) -> bool:
        """Take one in-flight slot if the limit allows; release with ``release_slot``."""
        with self._lock:
            if self.store.in_flight() + self._reserved >= self.settings.loop.max_in_flight:
                return False
            self._reserved += 1
            return True

    def release_slot(self) -> None:
        with self._lock:
            self._reserved = max(0, self._reserved - 1)

    def backoff(self, run: RunRecord) -> float:
        """Seconds before the next try after ``run.failures`` consecutive transient failures."""
        base = min(60.0, 1.0 * (2 ** min(run.failures, 6)))
        return base * (0.5 + random.random() / 2)


def run_log(run: RunRecord) -> logging.LoggerAdapter[Any]:
    """A logger whose lines carry the run id and action id."""
    return logging.LoggerAdapter(log, {"run_id": run.id, "action_id": run.action_id or f"issue:{run.issue}"})
