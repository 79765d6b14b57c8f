"""Operator brakes: pause, resume, drain - persisted in the store and journaled.

* **pause**: nothing new is dispatched (pending runs are not bound, bound runs
  not dispatched); running work is watched to its end and reported.
* **drain**: pause, and ``reconciler run`` exits 0 once nothing is in flight.
* **resume**: lifts both.

The state lives in the store's key-value table; every change is appended to
the ``control`` journal, so ``reconciler show brakes`` (and the status line)
say who did what, when and why.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from store.runs import RunStore

KEY = "brakes"


@dataclass(frozen=True)
class Brakes:
    paused: bool = False
    draining: bool = False
    reason: str = ""
    by: str = ""
    since: str = ""

    @property
    def holds_new_work(self) -> bool:
        return self.paused or self.draining

    def describe(self) -> str:
        if not self.holds_new_work:
            return "running (not paused)"
        what = "draining" if self.draining else "paused"
        return f"{what} since {self.since} by {self.by}" + (f": {self.reason}" if self.reason else "")


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = os.environ.get("USER", "unknown")
    return f"{user}@{socket.gethostname()}"


def read(store: RunStore) -> Brakes:
    raw = store.get_value(KEY)
    if not raw:
        return Brakes()
    data: dict[str, Any] = json.loads(raw)
    return Brakes(**{k: data[k] for k in ("paused", "draining", "reason", "by", "since") if k in data})


def set_brakes(store: RunStore, *, paused: bool, draining: bool = False, reason: str = "") -> Brakes:
    brakes = Brakes(paused=paused, draining=draining, reason=reason, by=_who(), since=store.now())
    action = "drain" if draining else "pause" if paused else "resume"
    store.set_value(KEY, json.dumps(brakes.__dict__))
    store.control_event(action, reason=reason, by=brakes.by)
    return brakes
