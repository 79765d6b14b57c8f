"""Wake-ups: the loop reacts to changes instead of waiting out its interval.

Two daemon threads call ``wake()`` when something the loop cares about moved:

* **Nomad**: a blocking query on ``/v1/allocations?index=N&wait=...`` returns
  as soon as any allocation changes (CONTRACTS.md: reads carry
  ``X-Nomad-Index``), so a finished job is collected and reported about a
  second after it ends;
* **the ops remote**: its head is polled (``git ls-remote``) every ``remote_poll``
  seconds, so a merged action starts within seconds. The loop polls only a local remote
  (``file://``, every second). A network one gets no poll (``remote_poll=None``): the pass
  fetches it once per interval anyway, and over HTTPS an ``ls-remote`` costs as much as that
  fetch - a ``GET info/refs`` answered 401, the same GET with the token, a protocol v2
  ``ls-refs`` POST, and one ``git upload-pack`` process on the forge (about 2 kB).

Both are optimisations: the loop's timer stays as the safety net, and a watcher
that fails only logs and backs off.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from reconciler.clients.errors import PermanentError, TransientError

log = logging.getLogger("reconciler.watch")


class Watchers:
    def __init__(
        self,
        nomad: Any,
        ops: Any,
        wake: Callable[[], None],
        *,
        on_remote: Callable[[str | None], None] | None = None,
        on_allocations: Callable[[dict[str, set[str]] | None], None] | None = None,
        remote_poll: float | None = 1.0,
        nomad_wait: float = 30.0,
    ) -> None:
        self._nomad = nomad
        self._ops = ops
        self._wake = wake
        self._on_remote = on_remote or (lambda head: wake())
        self._on_allocations = on_allocations
        self._remote_poll = remote_poll
        self._nomad_wait = nomad_wait
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.wakeups = {"nomad": 0, "remote": 0}

    def start(self) -> "Watchers":
        if hasattr(self._nomad, "wait_allocations"):
            self._threads.append(threading.Thread(target=self._watch_nomad, name="watch-nomad", daemon=True))
        if hasattr(self._ops, "remote_head") and self._remote_poll is not None:
            self._threads.append(threading.Thread(target=self._watch_remote, name="watch-remote", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _watch_nomad(self) -> None:
        """``on_allocations`` hears the jobs whose allocations changed (with the statuses they changed to),
        or None while the watch is failing (the loop then lists allocations itself)."""
        index = 0
        backoff = 1.0
        changes = getattr(self._nomad, "wait_allocation_changes", None)
        while not self._stop.is_set():
            try:
                if changes is not None:
                    new, jobs = changes(index, self._nomad_wait)
                else:
                    new, jobs = self._nomad.wait_allocations(index, self._nomad_wait), {}
                backoff = 1.0
            except (TransientError, PermanentError) as exc:
                log.debug("allocation watch failed (%s); retrying in %.0f s", exc, backoff)
                if self._on_allocations is not None and not self._stop.is_set():
                    self._on_allocations(None)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if self._on_allocations is not None and changes is not None and not self._stop.is_set():
                self._on_allocations(jobs)
            if index and new != index:
                self.wakeups["nomad"] += 1
                self._wake()
            index = new

    def _watch_remote(self) -> None:
        last = None
        while not self._stop.wait(self._remote_poll):
            try:
                head = self._ops.remote_head()
            except (TransientError, PermanentError) as exc:
                log.debug("remote head poll failed: %s", exc)
                continue
            if last is not None and head != last:
                self.wakeups["remote"] += 1
                self._on_remote(head)
            last = head
