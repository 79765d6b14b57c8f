"""The Nomad watch: the event stream followed, resumed from its index after a drop, failures said once."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Iterator

import pytest

from reconciler.clients.errors import TransientError
from reconciler.clients.nomad_events import Frame, parse_line
from reconciler.watchers import UnclaimedChanges, Watchers, allocation_changes


def alloc_event(job: str, status: str, index: int) -> dict[str, Any]:
    return {"Topic": "Allocation", "Type": "AllocationUpdated", "Key": f"a-{job}", "Index": index,
            "Payload": {"Allocation": {"JobID": job, "ClientStatus": status}}}


class FakeStream:
    def __init__(self, frames: list[Frame], since: int, *, gap: bool = False, then: Exception | None = None) -> None:
        self.frames, self.since, self.gap, self.then = frames, since, gap, then
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()

    def __iter__(self) -> Iterator[Frame]:
        yield from self.frames
        if self.then is not None:
            raise self.then
        self.closed.wait(5)


class FakeNomad:
    """``event_stream(index)`` hands out scripted streams (or raises) in order, recording the indexes asked."""

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.asked: list[int] = []
        self.listed: list[int] = []

    def event_stream(self, index: int) -> FakeStream:
        self.asked.append(index)
        if not self.script:
            return FakeStream([], index)
        nxt = self.script.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt(index)

    def allocation_changes(self, index: int) -> tuple[int, set[str]]:
        self.listed.append(index)
        return index + 100, {"missed-job"}


class Recorder:
    def __init__(self) -> None:
        self.changes: queue.Queue[dict[str, set[str]] | None] = queue.Queue()
        self.states: list[tuple[str, str | None]] = []

    def take(self, timeout: float = 5.0) -> dict[str, set[str]] | None:
        return self.changes.get(timeout=timeout)

    def until(self, predicate: Any, timeout: float = 5.0) -> list[Any]:
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.changes.get(timeout=0.1)
            except queue.Empty:
                continue
            seen.append(item)
            if predicate(item):
                return seen
        raise AssertionError(f"not seen in {timeout} s; got {seen}")


def watch(nomad: FakeNomad, rec: Recorder) -> Watchers:
    w = Watchers(nomad, object(), lambda: None, on_allocations=rec.changes.put,
                 on_state=lambda state, why: rec.states.append((state, why)))
    w.first_backoff = 0.05
    return w.start()


def test_frames_name_the_jobs_that_moved_and_heartbeats_say_the_watch_is_live() -> None:
    nomad = FakeNomad([lambda since: FakeStream([Frame(None), Frame(7, (alloc_event("j1", "complete", 7), alloc_event("j2", "pending", 7)))], since)])
    rec = Recorder()
    w = watch(nomad, rec)
    try:
        assert rec.take() == {}  # the initial heartbeat
        assert rec.take() == {"j1": {"complete"}}  # a pending allocation decides nothing
        assert rec.states == [("live", None)]
        assert nomad.asked == [0]
    finally:
        w.stop()


def test_a_drop_resumes_from_the_last_index_skips_the_frame_delivered_again_and_lists_once_after_a_gap(caplog: pytest.LogCaptureFixture) -> None:
    drop = TransientError("Nomad event stream dropped: ChunkedEncodingError", system="nomad")
    nomad = FakeNomad(
        [
            lambda since: FakeStream([Frame(5, (alloc_event("a", "running", 5),))], since, then=drop),
            lambda since: FakeStream([Frame(5, (alloc_event("a", "running", 5),)), Frame(6, (alloc_event("b", "failed", 6),))], since),
            # a later drop whose resume index left the server's buffer: the first frame comes after it
        ]
    )
    rec = Recorder()
    caplog.set_level(logging.INFO, logger="reconciler.watch")
    w = watch(nomad, rec)
    try:
        assert rec.take() == {"a": {"running"}}
        assert rec.take() is None  # the drop: the loop falls back to its safety poll
        assert rec.take() == {"b": {"failed"}}  # frame 5 came again and was skipped
        assert nomad.asked == [0, 5]
        assert nomad.listed == []  # the resume index was still buffered: nothing was missed
        assert [s for s, _ in rec.states] == ["live", "failing", "live"]
    finally:
        w.stop()

    gap_nomad = FakeNomad(
        [
            lambda since: FakeStream([Frame(5, ())], since, then=drop),
            lambda since: FakeStream([Frame(9, (alloc_event("c", "complete", 9),))], since, gap=True),
        ]
    )
    rec = Recorder()
    w = watch(gap_nomad, rec)
    try:
        seen = rec.until(lambda item: bool(item))
        assert seen[-1] == {"c": {"complete"}, "missed-job": {"listed"}}
        assert gap_nomad.listed == [5]  # one unfiltered list, compared client side from the last index seen
    finally:
        w.stop()


def test_a_failing_watch_warns_once_per_streak_and_says_so_to_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    down = TransientError("nomad unavailable: connection refused", system="nomad")
    nomad = FakeNomad([down, down, down, down, lambda since: FakeStream([Frame(None)], since)])
    rec = Recorder()
    caplog.set_level(logging.DEBUG, logger="reconciler.watch")
    w = watch(nomad, rec)
    try:
        seen = rec.until(lambda item: item == {})
        assert seen.count(None) == 4  # every failed attempt tells the loop the watch is not live
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "falling back to the safety poll" in warnings[0].getMessage()
        assert rec.states == [("failing", str(down)), ("live", None)]
        assert w.failures == 1
    finally:
        w.stop()


def test_stop_closes_the_open_stream() -> None:
    streams: list[FakeStream] = []

    def opened(since: int) -> FakeStream:
        streams.append(FakeStream([Frame(None)], since))
        return streams[-1]

    nomad = FakeNomad([opened])
    rec = Recorder()
    w = watch(nomad, rec)
    assert rec.take() == {}
    w.stop()
    assert streams[0].closed.wait(2)


def test_lines_and_events_are_read_as_nomad_writes_them() -> None:
    """``nomad/stream/ndjson.go``: ``{}`` heartbeats, ``{"Index", "Events"}`` frames."""
    assert parse_line(b"{}") == Frame(None)
    frame = parse_line(b'{"Index": 12, "Events": [{"Topic": "Job", "Type": "JobDeregistered", "Key": "p/dispatch-1", "Payload": {"Job": {"ID": "p/dispatch-1", "Status": "running"}}}]}')
    assert frame.index == 12
    assert allocation_changes(frame.events) == {"p/dispatch-1": {"deregistered"}}
    dead = {"Topic": "Job", "Type": "JobRegistered", "Key": "x", "Payload": {"Job": {"ID": "x", "Status": "dead"}}}
    running = {"Topic": "Job", "Type": "JobRegistered", "Key": "y", "Payload": {"Job": {"ID": "y", "Status": "running"}}}
    assert allocation_changes((dead, running)) == {"x": {"dead"}}
    for bad in (b"not json", b"[1]", b'{"Events": []}'):
        with pytest.raises(TransientError):
            parse_line(bad)


def test_while_the_stream_stays_down_the_namespace_is_listed_every_fallback_seconds() -> None:
    down = TransientError("nomad unavailable: connection refused", system="nomad")
    nomad = FakeNomad([down] * 50)
    rec = Recorder()
    w = Watchers(nomad, object(), lambda: None, on_allocations=rec.changes.put,
                 on_state=lambda state, why: rec.states.append((state, why)), fallback=0.2)
    w.first_backoff = 0.5
    w.start()
    try:
        seen = rec.until(lambda item: item == {"missed-job": {"listed"}}, timeout=5)
        assert None in seen  # the loop heard the watch is failing first
        rec.until(lambda item: item == {"missed-job": {"listed"}}, timeout=5)
        assert nomad.listed[:2] == [0, 100]  # each listing compared from the index the last one answered
    finally:
        w.stop()
    assert w.fallback_lists >= 2


def test_a_stream_back_within_the_fallback_period_costs_no_listing() -> None:
    down = TransientError("nomad unavailable: connection refused", system="nomad")
    nomad = FakeNomad([down, lambda since: FakeStream([Frame(None)], since)])
    rec = Recorder()
    w = Watchers(nomad, object(), lambda: None, on_allocations=rec.changes.put, fallback=5.0)
    w.first_backoff = 0.05
    w.start()
    try:
        rec.until(lambda item: item == {})
        assert nomad.listed == []
    finally:
        w.stop()


def test_changes_no_run_owned_yet_are_kept_for_the_run_that_claims_the_job_then_forgotten() -> None:
    now = [100.0]
    kept = UnclaimedChanges(keep=60, most=3, clock=lambda: now[0])
    kept.note({"j1": {"running"}})
    kept.note({"j1": {"complete"}, "j2": {"failed"}})
    assert kept.claim("j1") == {"running", "complete"}
    assert kept.claim("j1") is None  # handed over once
    now[0] += 61
    kept.note({"j3": {"running"}})
    assert kept.claim("j2") is None  # aged out
    kept.note({"j4": set(), "j5": set(), "j6": set()})
    assert kept.claim("j3") is None and kept.claim("j6") == set()  # at most `most` kept, the oldest go first
