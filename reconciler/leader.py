"""One active reconciler per cluster: leadership through a Nomad Variables lock.

The leader holds the lock on ``reconciler/leader`` and renews it from a
background thread every third of its TTL. A renewal that fails (expired,
taken, Nomad unreachable for longer than the TTL) ends leadership at once: the
loop checks ``is_leader`` before every pass and every step. A standby retries
the lock each interval; Nomad lets nobody take it until LockDelay has passed
after the holder stopped renewing.

What this instance is (leader or standby) is written to the store so
``reconciler status`` can show it without talking to Nomad.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from typing import Any, Callable

from reconciler.clients.errors import PermanentError, TransientError

log = logging.getLogger("reconciler.leader")

LOCK_PATH = "reconciler/leader"
STORE_KEY = "leadership"


class Leadership:
    def __init__(
        self,
        nomad: Any,
        *,
        ttl: float,
        lock_delay: float,
        record: Callable[[dict[str, Any]], None],
        clock: Callable[[], float],
        path: str = LOCK_PATH,
    ) -> None:
        self._nomad = nomad
        self.ttl = ttl
        self.lock_delay = lock_delay
        self._record = record
        self._clock = clock
        self.path = path
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        self._lock_id: str | None = None
        self._leader = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._last_renew = 0.0

    @property
    def is_leader(self) -> bool:
        if not self._leader.is_set():
            return False
        # Never act on a lock we could not renew within its TTL.
        if self._clock() - self._last_renew > self.ttl:
            self._lose("renewal overdue")
            return False
        return True

    def try_acquire(self) -> bool:
        """Take the lock if free; start renewing it. True when this instance leads."""
        if self.is_leader:
            return True
        try:
            lock_id = self._nomad.lock_acquire(self.path, self.ttl, self.lock_delay)
        except (TransientError, PermanentError) as exc:
            self._record({"role": "standby", "identity": self.identity, "why": f"cannot reach the leader lock: {exc}", "at": self._clock()})
            return False
        if not lock_id:
            self._record({"role": "standby", "identity": self.identity, "why": f"another instance holds {self.path}", "at": self._clock()})
            return False
        self._lock_id = lock_id
        self._last_renew = self._clock()
        self._leader.set()
        self._record({"role": "leader", "identity": self.identity, "since": self._clock(), "at": self._clock()})
        log.info("leadership acquired (%s, lock %s)", self.identity, self.path)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="leader-renew", daemon=True)
        self._renewer.start()
        return True

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            lock_id = self._lock_id
            if lock_id is None:
                return
            try:
                ok = self._nomad.lock_renew(self.path, lock_id)
            except (TransientError, PermanentError) as exc:
                log.warning("could not renew leadership: %s", exc)
                continue  # is_leader turns False by itself once the TTL has passed
            if not ok:
                self._lose("lock renewal refused (expired or taken)")
                return
            self._last_renew = self._clock()

    def _lose(self, why: str) -> None:
        if self._leader.is_set():
            log.error("leadership lost: %s; stopping all actions", why)
        self._leader.clear()
        self._lock_id = None
        self._stop.set()
        self._record({"role": "standby", "identity": self.identity, "why": f"leadership lost: {why}", "at": self._clock()})

    def release(self) -> None:
        lock_id = self._lock_id
        self._stop.set()
        self._leader.clear()
        self._lock_id = None
        if lock_id:
            try:
                self._nomad.lock_release(self.path, lock_id)
                log.info("leadership released")
            except (TransientError, PermanentError) as exc:
                log.warning("could not release leadership (it expires after %s s): %s", self.ttl, exc)
        self._record({"role": "stopped", "identity": self.identity, "at": self._clock()})


def record_to_store(store: Any) -> Callable[[dict[str, Any]], None]:
    def record(info: dict[str, Any]) -> None:
        try:
            store.set_value(STORE_KEY, json.dumps(info))
        except Exception:  # status display only
            pass

    return record
