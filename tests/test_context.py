"""The pass cache: one computation per key however many steps ask at once; kept for at most an age."""

import threading
import time

from reconciler.context import Context


def _ctx() -> Context:
    return Context(settings=None, store=None, nomad=None, vault=None, ops=None)  # type: ignore[arg-type]


def test_concurrent_callers_of_one_key_share_one_computation():
    ctx = _ctx()
    calls = []
    gate = threading.Event()

    def compute():
        calls.append(1)
        gate.wait(5)
        return "answer"

    answers = []
    threads = [threading.Thread(target=lambda: answers.append(ctx.cached(("k",), compute))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(5)
    assert answers == ["answer"] * 8
    assert len(calls) == 1


def test_a_failed_computation_is_not_cached_and_the_next_caller_computes():
    ctx = _ctx()

    def boom():
        raise ValueError("forge down")

    try:
        ctx.cached(("k",), boom)
    except ValueError:
        pass
    assert ctx.cached(("k",), lambda: 42) == 42


def test_begin_pass_keeps_answers_younger_than_max_age():
    ctx = _ctx()
    ctx.begin_pass()
    ctx.cached(("k",), lambda: 1)
    ctx.begin_pass(max_age=60)
    assert ctx.cached(("k",), lambda: 2) == 1
    ctx.begin_pass()  # a pass on its own asks afresh
    assert ctx.cached(("k",), lambda: 3) == 3


def test_together_runs_calls_at_once_and_keeps_their_order():
    ctx = _ctx()
    a, b = threading.Event(), threading.Event()

    def first():
        a.set()
        assert b.wait(5), "the second call never ran beside the first"
        return 1

    def second():
        b.set()
        assert a.wait(5)
        return 2

    assert ctx.together(first, second) == [1, 2]
    assert ctx.together() == [] and ctx.together(lambda: 3) == [3]


def test_together_raises_the_first_error_after_every_call_ended():
    ctx = _ctx()
    done = []

    def slow():
        time.sleep(0.2)
        done.append("slow")

    def boom():
        raise ValueError("vault down")

    try:
        ctx.together(boom, slow)
    except ValueError as exc:
        assert str(exc) == "vault down"
    else:
        raise AssertionError("the error was swallowed")
    assert done == ["slow"]
