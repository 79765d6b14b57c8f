"""One active reconciler per cluster: leadership through a Nomad Variables lock.

The leader holds the lock on ``reconciler/leader`` and renews it from a
background thread every third of its TTL. A renewal that fails (expired,
taken, Nomad unreachable for longer than the TTL) ends leadership at once: the
loop checks ``is_leader`` before every pass and every step. A standby retries
the lock each interval; Nomad lets nobody take it until LockDelay has passed
after the holder stopped renewing.

What this instance is (leader or standby) is written to the store so
``reconciler status`` can show it without talking to Nomad.

Nomad keeps a lock until 2 x TTL after its last renewal, then lets nobody take
it for LockDelay more (``nomad/structs/variables.go``, ``nomad/locks.go``): with
the defaults (TTL 15 s, LockDelay 15 s) another instance takes over about 45 s
after the leader died. A *restarted* leader need not wait: the lock's ID is kept
in the store (key ``leadership.lock``), and an instance that owns the store
(an exclusive ``flock`` on ``<db>.owner``, released by the kernel when the
process dies, ``kill -9`` included) renews that lease at once and resumes.
Renewing needs only the ID; another store, or a second process on the same
store while the first lives, never sees or uses it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable

from reconciler.clients.errors import PermanentError, TransientError

log = logging.getLogger("reconciler.leader")

LOCK_PATH = "reconciler/leader"
STORE_KEY = "leadership"
LOCK_KEY = "leadership.lock"

#: Nomad's bounds on a lock TTL (``nomad/structs/variables.go``: "TTL must be between 10 seconds and 24 hours").
MIN_TTL = 10.0
MAX_TTL = 24 * 3600.0
#: Nomad's default for a zero TTL or LockDelay.
DEFAULT_LOCK_SECONDS = 15.0


def failover_seconds(ttl: float, lock_delay: float) -> float:
    """How long after a leader's last renewal another instance may take the lock: 2 x TTL, then LockDelay."""
    return 2 * (ttl or DEFAULT_LOCK_SECONDS) + (lock_delay or DEFAULT_LOCK_SECONDS)


class StoreOwner:
    """An exclusive, non-blocking ``flock`` on a file beside the store: held by one live process at most."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


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
        lease: Any = None,
        owner: StoreOwner | None = None,
    ) -> None:
        """``lease``: the store (``get_value``/``set_value``) the lock ID is kept in; ``owner``: the
        store's owner lock. Both given: a restart resumes its own live lease (see the module text)."""
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
        self._lease = lease
        self._owner = owner
        self.unreachable: str | None = None
        """Why the last attempt could not reach the lock (Nomad down, denied); None when it answered."""
        self.holder: str | None = None
        """The identity of the instance that holds the lock, as its variable says (None: unknown)."""

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
        self.unreachable = None
        try:
            lock_id = self._resume() or self._nomad.lock_acquire(self.path, self.ttl, self.lock_delay, holder=self.identity)
        except (TransientError, PermanentError) as exc:
            self.unreachable = str(exc)
            self._record({"role": "unknown", "identity": self.identity, "why": f"cannot reach the leader lock: {exc}", "at": self._clock()})
            return False
        if not lock_id:
            self.holder = self._holder()
            who = f"another instance ({self.holder})" if self.holder else "another instance"
            self._record({"role": "standby", "identity": self.identity, "holder": self.holder, "why": f"{who} holds {self.path}", "at": self._clock()})
            return False
        self._lock_id = lock_id
        self._keep(lock_id)
        self.holder = self.identity
        self._last_renew = self._clock()
        self._leader.set()
        self._record({"role": "leader", "identity": self.identity, "since": self._clock(), "at": self._clock()})
        log.info("leadership acquired (%s, lock %s)", self.identity, self.path)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="leader-renew", daemon=True)
        self._renewer.start()
        return True

    def _resume(self) -> str | None:
        """The lock ID this store kept, when its lease is still live and renewed now; else None."""
        if self._lease is None or self._owner is None or not self._owner.acquire():
            return None
        raw = self._lease.get_value(LOCK_KEY)
        try:
            kept = json.loads(raw) if raw else None
        except ValueError:
            kept = None
        if not isinstance(kept, dict) or kept.get("path") != self.path or not kept.get("id"):
            return None
        if self._nomad.lock_renew(self.path, str(kept["id"])):
            log.info("resumed this store's own live lease on %s (no wait for it to lapse)", self.path)
            return str(kept["id"])
        self._keep(None)
        return None

    def _keep(self, lock_id: str | None) -> None:
        if self._lease is None or self._owner is None or not self._owner.acquire():
            return
        try:
            self._lease.set_value(LOCK_KEY, json.dumps({"path": self.path, "id": lock_id} if lock_id else {}))
        except Exception as exc:  # resuming is an optimisation; never lose leadership over it
            log.warning("could not keep the lock id in the store (a restart waits for the lease to lapse): %s", exc)

    def _holder(self) -> str | None:
        """Who holds the lock: the ``holder`` item its acquirer wrote (Nomad shows no lock ID to others)."""
        try:
            var = self._nomad.variable(self.path)
        except (TransientError, PermanentError):
            return None
        items = dict((var or {}).get("Items") or {})
        return str(items["holder"]) if items.get("holder") else None

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
        self._keep(None)
        self._stop.set()
        self._record({"role": "standby", "identity": self.identity, "why": f"leadership lost: {why}", "at": self._clock()})

    def release(self) -> None:
        lock_id = self._lock_id
        self._stop.set()
        self._leader.clear()
        self._lock_id = None
        self._keep(None)
        if lock_id:
            try:
                self._nomad.lock_release(self.path, lock_id)
                log.info("leadership released")
            except (TransientError, PermanentError) as exc:
                log.warning("could not release leadership (it expires after %s s): %s", self.ttl, exc)
        self._record({"role": "stopped", "identity": self.identity, "at": self._clock()})
        if self._owner is not None:
            self._owner.release()


def record_to_store(store: Any) -> Callable[[dict[str, Any]], None]:
    def record(info: dict[str, Any]) -> None:
        try:
            store.set_value(STORE_KEY, json.dumps(info))
        except Exception:  # status display only
            pass

    return record
