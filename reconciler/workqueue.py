"""A keyed work queue: deduplicating, delaying, rate-limited - the shape controller-runtime uses.

The service's loop (``reconciler.loop``) is built around it: run ids are the keys.

* **Keys** (run ids) are queued at most once: adding a queued key again does nothing.
* **A key is handed to one worker at a time.** A key added while a worker holds it is marked
  dirty and queued again when that worker calls :meth:`WorkQueue.done` - so a change that arrives
  during a step is never lost, and never stepped concurrently.
* **Delays**: :meth:`WorkQueue.add_after` queues a key once its delay has passed; the earliest
  pending time of a key wins (a step's "look again in 30 s" does not postpone an event's "now").
* **Rate limit**: :meth:`WorkQueue.add_rate_limited` delays a key by the larger of its own
  exponential backoff (``base * 2**failures``, capped) and an overall token bucket (``qps``,
  ``burst``); :meth:`WorkQueue.forget` resets the key's failures after a success.
* **Shutdown**: :meth:`WorkQueue.shutdown` wakes every waiting :meth:`WorkQueue.get`, which then
  returns None; adds after shutdown are ignored.
* **Admission**: :class:`CapacityGate` lets waiting keys (pending runs) into a queue only as far as
  capacity allows, oldest first, and frees a slot when a key it admitted has been handled.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)


class RateLimiter(Generic[K]):
    """When a key may be tried again: per-key exponential backoff, and a shared token bucket."""

    def __init__(
        self,
        *,
        base: float = 0.05,
        cap: float = 300.0,
        qps: float = 50.0,
        burst: int = 200,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if base <= 0 or cap < base or qps <= 0 or burst < 1:
            raise ValueError("rate limiter needs base > 0, cap >= base, qps > 0 and burst >= 1")
        self.base, self.cap, self.qps, self.burst = base, cap, qps, burst
        self._clock = clock
        self._failures: dict[K, int] = {}
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def when(self, key: K) -> float:
        """Seconds to wait before ``key`` is tried again (counts one more failure of it)."""
        with self._lock:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
            backoff = min(self.cap, self.base * (2 ** min(failures, 62)))
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0
            bucket = 0.0 if self._tokens >= 0 else -self._tokens / self.qps
            return max(backoff, bucket)

    def failures(self, key: K) -> int:
        with self._lock:
            return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        with self._lock:
            self._failures.pop(key, None)


class WorkQueue(Generic[K]):
    """See the module docstring. ``clock`` is injectable; waits use real time."""

    def __init__(self, *, limiter: RateLimiter[K] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.limiter: RateLimiter[K] = limiter or RateLimiter(clock=clock)
        self._cond = threading.Condition()
        self._queue: deque[K] = deque()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._delayed: list[tuple[float, int, K]] = []
        self._due_at: dict[K, float] = {}
        self._seq = itertools.count()
        self._shutdown = False

    # -- adding -------------------------------------------------------------------------------
    def add(self, key: K) -> None:
        """Queue ``key`` now (once; again after its current step when a worker holds it)."""
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: K) -> None:
        if self._shutdown:
            return
        self._due_at.pop(key, None)  # a delayed add of it is now moot (its heap entry is skipped)
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.append(key)
        self._cond.notify()

    def add_after(self, key: K, delay: float) -> None:
        """Queue ``key`` after ``delay`` seconds (at once when ``delay <= 0``); the earliest time wins."""
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutdown or key in self._queued:
                return
            at = self._clock() + delay
            current = self._due_at.get(key)
            if current is not None and current <= at:
                return
            self._due_at[key] = at
            heapq.heappush(self._delayed, (at, next(self._seq), key))
            self._cond.notify()

    def add_rate_limited(self, key: K) -> None:
        """Queue ``key`` after the rate limiter's delay for it (a failed step's retry)."""
        self.add_after(key, self.limiter.when(key))

    def forget(self, key: K) -> None:
        """The key's step succeeded: its backoff starts over."""
        self.limiter.forget(key)

    # -- working ------------------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> K | None:
        """The next key to step (now held by the caller until :meth:`done`), or None on shutdown or timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._shutdown:
                    return None
                self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                waits = []
                if self._delayed:
                    waits.append(max(0.0, self._delayed[0][0] - self._clock()))
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    waits.append(left)
                self._cond.wait(min(waits) if waits else None)

    def _promote_due(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            at, _, key = heapq.heappop(self._delayed)
            if self._due_at.get(key) != at:
                continue  # superseded by an earlier delay or an immediate add
            del self._due_at[key]
            self._add_locked(key)

    def done(self, key: K) -> None:
        """The worker finished ``key``; if it was added meanwhile, it is queued again."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add_locked(key)

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    # -- looking ------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Keys ready to be handed out now (delayed ones not counted)."""
        with self._cond:
            return len(self._queue)

    def pending(self) -> int:
        """Keys waiting for their delay."""
        with self._cond:
            return len(self._due_at)

    def busy(self) -> bool:
        """Some key is queued now or held by a worker (delayed keys not counted)."""
        with self._cond:
            return bool(self._queue) or bool(self._processing)

    @property
    def is_shut_down(self) -> bool:
        with self._cond:
            return self._shutdown


class CapacityGate(Generic[K]):
    """Admits waiting keys into a queue only as far as there is room.

    ``waiting(limit)`` lists up to ``limit`` keys that wait for admission, oldest first (the pending runs
    that are due); ``free()`` says how many more the system may take on now (free in-flight slots).
    :meth:`admit` queues up to ``min(free() + slack, most)`` keys, counting those admitted and not yet
    handled; :meth:`handled` frees the key's slot (its step took it out of waiting, or left it waiting for
    a later admission). A key is never admitted twice while it is admitted.
    """

    def __init__(
        self,
        queue: WorkQueue[K],
        *,
        waiting: Callable[[int], list[K]],
        free: Callable[[], int],
        most: int,
        slack: int = 0,
    ) -> None:
        if most < 1 or slack < 0:
            raise ValueError("a capacity gate needs most >= 1 and slack >= 0")
        self._queue = queue
        self._waiting = waiting
        self._free = free
        self.most = most
        self.slack = slack
        self._admitted: set[K] = set()
        self._lock = threading.Lock()

    def admit(self) -> list[K]:
        """Queue as many waiting keys as there is room for; returns the keys admitted now."""
        with self._lock:
            room = min(max(0, self._free()) + self.slack, self.most) - len(self._admitted)
            if room <= 0:
                return []
            fresh = [k for k in self._waiting(room + len(self._admitted)) if k not in self._admitted][:room]
            self._admitted.update(fresh)
        for key in fresh:
            self._queue.add(key)
        return fresh

    def handled(self, key: K) -> bool:
        """``key``'s step ended; True when it was admitted here (its slot is free again)."""
        with self._lock:
            if key in self._admitted:
                self._admitted.discard(key)
                return True
            return False

    def admitted(self) -> int:
        with self._lock:
            return len(self._admitted)
