"""The keyed work queue: dedupe, one worker per key, delays, rate limit, shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.workqueue import CapacityGate, RateLimiter, WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_added_twice_is_queued_once_in_order() -> None:
    q: WorkQueue[str] = WorkQueue()
    for key in ("a", "b", "a", "c", "b"):
        q.add(key)
    assert len(q) == 3
    assert [q.get(timeout=0), q.get(timeout=0), q.get(timeout=0)] == ["a", "b", "c"]
    assert q.get(timeout=0) is None


def test_a_key_added_while_held_is_handed_out_again_after_done_never_twice_at_once() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("run-1")
    held = q.get(timeout=0)
    assert held == "run-1"
    q.add("run-1")  # an event arrives during the step
    q.add("run-1")
    assert q.get(timeout=0) is None  # not handed to a second worker meanwhile
    q.done("run-1")
    assert q.get(timeout=0) == "run-1"  # stepped again after, once
    q.done("run-1")
    assert q.get(timeout=0) is None


def test_delays_hold_a_key_back_and_the_earliest_time_wins() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    q.add_after("late", 30)
    q.add_after("late", 60)  # a later look does not postpone the earlier one
    q.add_after("soon", 5)
    assert q.pending() == 2 and q.get(timeout=0) is None
    clock.now += 5
    assert q.get(timeout=0) == "soon"
    clock.now += 24
    assert q.get(timeout=0) is None
    clock.now += 1
    assert q.get(timeout=0) == "late"
    clock.now += 60
    assert q.get(timeout=0) is None  # the superseded 60 s entry hands out nothing more
    q.add_after("now", 0)
    assert q.get(timeout=0) == "now"


def test_an_immediate_add_overrides_a_pending_delay() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock=clock)
    q.add_after("run", 30)
    q.add("run")
    assert q.get(timeout=0) == "run"
    q.done("run")
    clock.now += 31
    assert q.get(timeout=0) is None  # the delayed entry was moot


def test_get_waits_for_a_delayed_key_in_real_time() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add_after("k", 0.2)
    started = time.monotonic()
    assert q.get(timeout=2) == "k"
    assert 0.15 <= time.monotonic() - started < 1.5


def test_rate_limited_retries_back_off_per_key_and_forget_resets() -> None:
    clock = Clock()
    limiter: RateLimiter[str] = RateLimiter(base=1.0, cap=8.0, qps=1000, burst=1000, clock=clock)
    assert [limiter.when("a") for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert limiter.when("b") == 1.0  # per key
    limiter.forget("a")
    assert limiter.failures("a") == 0 and limiter.when("a") == 1.0
    q: WorkQueue[str] = WorkQueue(limiter=RateLimiter(base=2.0, cap=60, qps=1000, burst=1000, clock=clock), clock=clock)
    q.add_rate_limited("x")
    assert q.get(timeout=0) is None
    clock.now += 2
    assert q.get(timeout=0) == "x"


def test_the_token_bucket_spreads_a_burst() -> None:
    clock = Clock()
    limiter: RateLimiter[int] = RateLimiter(base=0.001, cap=1.0, qps=10, burst=3, clock=clock)
    delays = [limiter.when(i) for i in range(6)]
    assert delays[:3] == [0.001] * 3  # the burst
    assert delays[3:] == pytest.approx([0.1, 0.2, 0.3])  # then 10 per second
    with pytest.raises(ValueError):
        RateLimiter(qps=0)


def test_shutdown_wakes_waiting_workers_and_ignores_later_adds() -> None:
    q: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    workers = [threading.Thread(target=lambda: got.append(q.get())) for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(0.1)
    q.shutdown()
    for w in workers:
        w.join(2)
    assert got == [None, None, None] and not any(w.is_alive() for w in workers)
    q.add("late")
    q.add_after("later", 1)
    assert len(q) == 0 and q.pending() == 0 and q.is_shut_down


def test_many_workers_never_hold_one_key_together() -> None:
    q: WorkQueue[int] = WorkQueue()
    holding: set[int] = set()
    overlap: list[int] = []
    steps = {k: 0 for k in range(5)}
    lock = threading.Lock()

    def worker() -> None:
        while (key := q.get(timeout=0.5)) is not None:
            with lock:
                if key in holding:
                    overlap.append(key)
                holding.add(key)
                steps[key] += 1
            time.sleep(0.002)
            with lock:
                holding.discard(key)
            q.done(key)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(50):
        for k in range(5):
            q.add(k)
        time.sleep(0.001)
    for t in threads:
        t.join(5)
    assert overlap == []
    assert all(n >= 1 for n in steps.values())


# -- the capacity gate ------------------------------------------------------------------------------
class Backlog:
    """Waiting keys oldest first, and a number of free slots, as the loop's store would give them."""

    def __init__(self, keys: list[str], free: int) -> None:
        self.keys, self.free = list(keys), free
        self.asked: list[int] = []

    def waiting(self, limit: int) -> list[str]:
        self.asked.append(limit)
        return self.keys[:limit]


def test_the_gate_admits_only_as_many_as_there_are_free_slots_plus_its_slack_oldest_first() -> None:
    q: WorkQueue[str] = WorkQueue()
    backlog = Backlog([f"r{i}" for i in range(10)], free=3)
    gate = CapacityGate(q, waiting=backlog.waiting, free=lambda: backlog.free, most=8, slack=1)
    assert gate.admit() == ["r0", "r1", "r2", "r3"]
    assert gate.admit() == []  # all four are still admitted: nothing more fits
    assert [q.get(timeout=0) for _ in range(4)] == ["r0", "r1", "r2", "r3"]
    assert q.get(timeout=0) is None


def test_a_handled_key_frees_its_slot_and_is_never_admitted_twice_while_admitted() -> None:
    q: WorkQueue[str] = WorkQueue()
    backlog = Backlog(["a", "b", "c"], free=1)
    gate = CapacityGate(q, waiting=backlog.waiting, free=lambda: backlog.free, most=5)
    assert gate.admit() == ["a"]
    assert gate.admit() == []
    key = q.get(timeout=0)
    assert gate.handled(key) is True and gate.handled(key) is False
    backlog.keys.remove("a")  # its step took it out of waiting (bound, or rejected)
    assert gate.admit() == ["b"]
    assert gate.admitted() == 1


def test_the_gate_never_lets_in_more_than_most_whatever_is_free() -> None:
    q: WorkQueue[str] = WorkQueue()
    backlog = Backlog([f"r{i}" for i in range(100)], free=1000)
    gate = CapacityGate(q, waiting=backlog.waiting, free=lambda: backlog.free, most=16, slack=8)
    assert len(gate.admit()) == 16
    backlog.free = -5  # more in flight than the limit (limits lowered): no room, not a negative count
    for _ in range(16):
        gate.handled(q.get(timeout=0) or "")
    assert gate.admit() == ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"]  # only the slack
    with pytest.raises(ValueError):
        CapacityGate(q, waiting=backlog.waiting, free=lambda: 1, most=0)
