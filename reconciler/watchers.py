"""Wake-ups: the loop reacts to changes instead of waiting out its interval.

Two daemon threads call ``wake()`` when something the loop cares about moved:

* **Nomad**: the namespace's event stream (``topic=Allocation&topic=Job``, see
  :mod:`reconciler.clients.nomad_events`). It was chosen over blocking queries on
  ``/v1/allocations`` because it is one long-lived connection that carries only what changed:
  a blocking list answers with *every* allocation of the namespace at each change (go-bexpr has
  no ``ModifyIndex > N``, so the server cannot trim it), which under a burst of a thousand
  children is a thousand stubs per wake-up. After a drop the stream is resumed from the last
  index seen; when the server's buffer no longer holds it (``EventStream.gap``), one unfiltered
  allocation list compared client side names what changed meanwhile.
* **the ops remote**: its head is polled (``git ls-remote``) every ``remote_poll``
  seconds, so a merged action starts within seconds. The loop polls only a local remote
  (``file://``, every second). A network one gets no poll (``remote_poll=None``): the pass
  fetches it once per interval anyway, and over HTTPS an ``ls-remote`` costs as much as that
  fetch - a ``GET info/refs`` answered 401, the same GET with the token, a protocol v2
  ``ls-refs`` POST, and one ``git upload-pack`` process on the forge (about 2 kB).

A Nomad client without ``event_stream`` (test fakes) is watched with blocking queries instead.
When the Nomad watch fails, ``on_allocations(None)`` tells the loop, the failure is logged once at
WARNING (not at every retry) and ``on_state`` hears ``("failing", why)``; ``("live", None)`` when it
is back. While it fails (from ``fallback`` seconds after the failure on, between attempts to reopen
the stream) the watcher lists the namespace's allocations every ``fallback`` seconds - one request,
compared client side - and names the jobs that moved as ``listed``: the bounded safety poll.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from reconciler.clients.errors import PermanentError, TransientError

log = logging.getLogger("reconciler.watch")

FIRST_BACKOFF = 1.0
"""Seconds before the first attempt to reopen a failed watch (doubling from there)."""
MAX_BACKOFF = 30.0
"""Seconds between two attempts to reopen a failing watch, at most."""


def allocation_changes(events: tuple[dict[str, Any], ...]) -> dict[str, set[str]]:
    """Jobs named by ``events``, with what they changed to.

    Allocation events give the allocation's ``ClientStatus`` (``pending`` is left out: a placed,
    not yet started allocation decides nothing). Job events count only when the job ended or
    left: ``dead`` or ``deregistered`` (a child stopped or purged behind our back).
    """
    jobs: dict[str, set[str]] = {}
    for ev in events:
        payload = ev.get("Payload") or {}
        if ev.get("Topic") == "Allocation":
            alloc = payload.get("Allocation") or {}
            status = str(alloc.get("ClientStatus") or "")
            job_id = alloc.get("JobID")
            if job_id and status and status != "pending":
                jobs.setdefault(str(job_id), set()).add(status)
        elif ev.get("Topic") == "Job":
            job = payload.get("Job") or {}
            job_id = job.get("ID") or ev.get("Key")
            if not job_id:
                continue
            if ev.get("Type") == "JobDeregistered":
                jobs.setdefault(str(job_id), set()).add("deregistered")
            elif job.get("Status") == "dead":
                jobs.setdefault(str(job_id), set()).add("dead")
    return jobs


class UnclaimedChanges:
    """Changes of jobs no in-flight run was known to own yet, kept for a while.

    A child's first events can arrive before the step that dispatched it has committed the job id
    (the read-back sits between them): :meth:`claim` hands such a change to the run once it owns the
    job. Entries older than ``keep`` seconds are dropped, and at most ``most`` are kept.
    """

    def __init__(self, *, keep: float = 60.0, most: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.keep, self.most = keep, most
        self._clock = clock
        self._changes: dict[str, tuple[float, set[str]]] = {}
        self._lock = threading.Lock()

    def note(self, jobs: dict[str, set[str]]) -> None:
        now = self._clock()
        with self._lock:
            for job, statuses in jobs.items():
                seen, known = self._changes.pop(job, (now, set()))
                self._changes[job] = (seen, known | statuses)
            stale = [job for job, (seen, _) in self._changes.items() if now - seen > self.keep]
            for job in stale:
                del self._changes[job]
            while len(self._changes) > self.most:
                del self._changes[next(iter(self._changes))]

    def claim(self, job: str) -> set[str] | None:
        """The statuses noted for ``job`` (forgotten now), or None."""
        with self._lock:
            entry = self._changes.pop(job, None)
        return None if entry is None else entry[1]


class Watchers:
    def __init__(
        self,
        nomad: Any,
        ops: Any,
        wake: Callable[[], None],
        *,
        on_remote: Callable[[str | None], None] | None = None,
        on_allocations: Callable[[dict[str, set[str]] | None], None] | None = None,
        on_state: Callable[[str, str | None], None] | None = None,
        remote_poll: float | None = 1.0,
        nomad_wait: float = 30.0,
        fallback: float | None = None,
    ) -> None:
        self._nomad = nomad
        self._ops = ops
        self._wake = wake
        self._on_remote = on_remote or (lambda head: wake())
        self._on_allocations = on_allocations
        self._on_state = on_state
        self._remote_poll = remote_poll
        self._nomad_wait = nomad_wait
        self._fallback = fallback
        self._failing_since: float | None = None
        self._next_list = 0.0
        self._list_index = 0
        self.fallback_lists = 0
        """Allocation listings made while the watch was failing."""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stream: Any = None
        self._stream_lock = threading.Lock()
        self.first_backoff = FIRST_BACKOFF
        self._state: str | None = None
        """None before the first answer, then "live" or "failing"."""
        self.wakeups = {"nomad": 0, "remote": 0}
        self.failures = 0
        """Failure streaks of the Nomad watch so far."""

    def start(self) -> "Watchers":
        if hasattr(self._nomad, "event_stream"):
            self._threads.append(threading.Thread(target=self._watch_events, name="watch-nomad", daemon=True))
        elif hasattr(self._nomad, "wait_allocations"):
            self._threads.append(threading.Thread(target=self._watch_nomad, name="watch-nomad", daemon=True))
        if hasattr(self._ops, "remote_head") and self._remote_poll is not None:
            self._threads.append(threading.Thread(target=self._watch_remote, name="watch-remote", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            stream.close()  # unblocks the reader thread's read

    # -- health ------------------------------------------------------------------------------
    def _live(self) -> None:
        self._failing_since = None
        if self._state == "live":
            return
        if self._state == "failing":
            log.info("Nomad watch is back: following changes as they happen again")
        self._state = "live"
        if self._on_state is not None:
            self._on_state("live", None)

    def _failed(self, exc: Exception, backoff: float) -> None:
        if self._state != "failing":
            self._state = "failing"
            self.failures += 1
            log.warning(
                "Nomad watch failed (%s); falling back to the safety poll, retrying every %.0f s at most", exc, MAX_BACKOFF
            )
            if self._on_state is not None:
                self._on_state("failing", str(exc))
        else:
            log.debug("Nomad watch still failing (%s); retrying in %.0f s", exc, backoff)
        if self._on_allocations is not None and not self._stop.is_set():
            self._on_allocations(None)

    def _changed(self, jobs: dict[str, set[str]]) -> None:
        if self._on_allocations is not None and not self._stop.is_set():
            self._on_allocations(jobs)
        if jobs:
            self.wakeups["nomad"] += 1
            self._wake()

    # -- the event stream ------------------------------------------------------------------------
    def _watch_events(self) -> None:
        last = 0
        backoff = self.first_backoff
        while not self._stop.is_set():
            try:
                stream = self._nomad.event_stream(last)
                with self._stream_lock:
                    self._stream = stream
                if self._stop.is_set():
                    stream.close()
                    return
                for frame in stream:
                    if self._stop.is_set():
                        return
                    backoff = self.first_backoff
                    if frame.index is None:  # a heartbeat: the stream is alive
                        self._live()
                        self._changed({})
                        continue
                    if frame.index <= last:
                        continue  # the resume frame, delivered again
                    jobs = allocation_changes(frame.events)
                    if stream.gap:
                        stream.gap = False
                        jobs = self._catch_up(last, jobs)
                    last = frame.index
                    self._live()
                    self._changed(jobs)
            except (TransientError, PermanentError) as exc:
                if self._stop.is_set():
                    return
                self._failed(exc, backoff)
                self._poll_while_failing(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            finally:
                with self._stream_lock:
                    self._stream = None

    def _poll_while_failing(self, seconds: float) -> None:
        """Wait ``seconds`` before reopening the stream; meanwhile, once the watch has been failing for
        ``fallback`` seconds, list the namespace's allocations every ``fallback`` seconds."""
        now = time.monotonic()
        end = now + seconds
        if self._fallback is None:
            self._stop.wait(seconds)
            return
        if self._failing_since is None:
            self._failing_since = now
            self._next_list = now + self._fallback
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= self._next_list:
                self._next_list = now + self._fallback
                try:
                    self._list_index, listed = self._nomad.allocation_changes(self._list_index)
                    self.fallback_lists += 1
                    self._changed({job: {"listed"} for job in listed})
                except (TransientError, PermanentError) as exc:
                    log.debug("safety listing of allocations failed too: %s", exc)
            if now >= end:
                return
            self._stop.wait(max(0.0, min(end, self._next_list) - now))

    def _catch_up(self, since: int, jobs: dict[str, set[str]]) -> dict[str, set[str]]:
        """Events after ``since`` left the server's buffer while we were away: one list names the jobs that moved."""
        log.info("Nomad event stream resumed past a gap after index %d: listing allocations once", since)
        _, listed = self._nomad.allocation_changes(since)
        merged = {job: set(statuses) for job, statuses in jobs.items()}
        for job in listed:
            merged.setdefault(job, set()).add("listed")
        return merged

    # -- blocking queries (clients without an event stream) ------------------------------------------
    def _watch_nomad(self) -> None:
        """``on_allocations`` hears the jobs whose allocations changed (with the statuses they changed to),
        or None while the watch is failing (the loop then lists allocations itself)."""
        index = 0
        backoff = self.first_backoff
        changes = getattr(self._nomad, "wait_allocation_changes", None)
        while not self._stop.is_set():
            try:
                if changes is not None:
                    new, jobs = changes(index, self._nomad_wait)
                else:
                    new, jobs = self._nomad.wait_allocations(index, self._nomad_wait), {}
                backoff = self.first_backoff
            except (TransientError, PermanentError) as exc:
                self._failed(exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            self._live()
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
