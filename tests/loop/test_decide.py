"""decide_watch: pure decisions from Nomad's view of a child."""

from hypothesis import given, strategies as st

from reconciler.decide import EXIT_CLAIM_TAKEN, decide_watch, placement_reason
from states.machine import IllegalTransition, State, Transition, next_state

NOW = 1_800_000_000.0
JOB = {"ID": "vault-runner/dispatch-a-1-abcd", "Status": "running"}


def alloc(i, client="running", started=True, exit_code=None, failure=None, task_state=None):
    events = [{"Type": "Received"}]
    if started:
        events.append({"Type": "Started"})
    if exit_code is not None:
        events.append({"Type": "Terminated", "ExitCode": exit_code})
    if failure:
        events.append({"Type": "Driver Failure", "DisplayMessage": failure, "FailsTask": True})
    return {
        "ID": f"{i:08d}-aaaa-bbbb-cccc-dddddddddddd",
        "ClientStatus": client,
        "DesiredStatus": "run",
        "CreateIndex": i,
        "TaskStates": {"runner": {"State": task_state or ("dead" if exit_code is not None or failure else "running"), "Events": events, "StartedAt": None}},
    }


def decide(state=State.DISPATCHED, allocs=(), job=JOB, dispatched_at=NOW - 5, started_at=None, evals=None, attempt=1, now=NOW, timeout=60):
    return decide_watch(
        state=state, attempt=attempt, dispatched_at=dispatched_at, started_at=started_at, timeout_minutes=timeout,
        job=job, allocations=list(allocs), evaluations=evals, now=now, placement_deadline=600, max_attempts=3, task="runner",
    )


def test_running_alloc_starts_the_run():
    d = decide(allocs=[alloc(1)])
    assert d.transition == Transition.START


def test_exit_code_comes_from_terminated_event():
    d = decide(state=State.RUNNING, allocs=[alloc(1, client="failed", exit_code=3)], started_at=NOW - 10)
    assert d.transition == Transition.COLLECT
    assert d.changes["exit_code"] == 3 and d.changes["outcome"] == "failure"
    assert d.revoke_claim and d.fetch_logs_from


def test_success():
    d = decide(state=State.RUNNING, allocs=[alloc(1, client="complete", exit_code=0)], started_at=NOW - 10)
    assert (d.changes["exit_code"], d.changes["outcome"]) == (0, "success")


def test_never_started_reports_the_failing_event():
    d = decide(allocs=[alloc(1, client="failed", started=False, failure="Failed to pull image: not found")])
    assert d.transition == Transition.COLLECT
    assert d.changes["exit_code"] != 0
    assert "Failed to pull image" in d.reason


def test_lost_started_alloc_is_unknown_even_if_replacement_took_nothing():
    d = decide(state=State.RUNNING, allocs=[alloc(1, client="lost"), alloc(2, client="failed", exit_code=EXIT_CLAIM_TAKEN)], started_at=NOW - 10)
    assert d.transition == Transition.COLLECT and d.changes["outcome"] == "unknown"
    assert d.stop_job and d.revoke_claim


def test_replacement_claim_taken_copy_is_not_the_worker():
    # The original finished with 0; a copy found the claim taken: the outcome is the original's.
    d = decide(state=State.RUNNING, allocs=[alloc(1, client="complete", exit_code=0), alloc(2, client="failed", exit_code=EXIT_CLAIM_TAKEN)], started_at=NOW - 10)
    assert d.changes["exit_code"] == 0 and d.changes["alloc_id"].startswith("00000001")


def test_timeout_stops_the_job():
    d = decide(state=State.RUNNING, allocs=[alloc(1)], started_at=NOW - 3600, timeout=30)
    assert d.transition == Transition.COLLECT and d.changes["outcome"] == "timeout" and d.stop_job


def test_placement_deadline_replaces_then_gives_up():
    evals = [{"ID": "e", "Status": "blocked", "CreateIndex": 3, "FailedTGAllocs": {"runner": {"NodesEvaluated": 2, "DimensionExhausted": {"memory": 2}}}}]
    d = decide(allocs=[], dispatched_at=NOW - 700, evals=evals)
    assert d.transition == Transition.REPLACE and "memory" in d.reason and d.stop_job and d.revoke_claim
    d3 = decide(allocs=[], dispatched_at=NOW - 700, evals=evals, attempt=3)
    assert d3.transition == Transition.COLLECT and "attempt 3 of 3" in d3.reason


def test_waits_before_deadline():
    d = decide(allocs=[alloc(1, client="pending", started=False)], dispatched_at=NOW - 10)
    assert d.transition is None and "placement" in d.waiting


def test_vanished_job_is_unknown():
    d = decide(state=State.RUNNING, job=None, started_at=NOW - 10)
    assert d.transition == Transition.COLLECT and d.changes["outcome"] == "unknown"


def test_placement_reason_names_the_constraint():
    evals = [{"ID": "e", "Status": "blocked", "CreateIndex": 1, "FailedTGAllocs": {"runner": {"ConstraintFiltered": {"missing host volume": 3}}}}]
    assert "missing host volume" in placement_reason(evals)


alloc_strategy = st.builds(
    lambda i, client, started, code, fail: alloc(i, client=client, started=started, exit_code=code, failure=fail),
    st.integers(1, 5),
    st.sampled_from(["pending", "running", "complete", "failed", "lost", "unknown"]),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from([0, 1, 2, EXIT_CLAIM_TAKEN, 91, 124])),
    st.one_of(st.none(), st.just("driver failure")),
)


@given(
    st.lists(st.lists(alloc_strategy, max_size=4), min_size=1, max_size=8),
    st.booleans(),
    st.integers(0, 4000),
)
def test_no_sequence_of_observations_leaves_the_table(observations, job_missing, elapsed):
    state = State.DISPATCHED
    attempt = 1
    for allocs in observations:
        if state not in (State.DISPATCHED, State.RUNNING):
            break
        d = decide(state=state, allocs=allocs, job=None if job_missing else JOB, dispatched_at=NOW - elapsed,
                   started_at=NOW - elapsed if state == State.RUNNING else None, attempt=attempt)
        if d.transition is None:
            continue
        try:
            state = next_state(state, d.transition)
        except IllegalTransition as exc:  # pragma: no cover - the property
            raise AssertionError(f"decision left the table: {exc}")
        if d.transition == Transition.REPLACE:
            break


# -- look_again: a step's own "look again in N s" -----------------------------------------------------
from reconciler.decide import DEADLINE_SLACK, TIMEOUT_GRACE, look_again  # noqa: E402


def again(state, **kw):
    base = dict(now=NOW, next_try_at=None, dispatched_at=None, started_at=None, timeout_minutes=None, placement_deadline=600.0)
    return look_again(state=state, **{**base, **kw})


def test_a_retry_the_step_asked_for_comes_first():
    assert again(State.RUNNING, next_try_at=NOW + 7, started_at=NOW - 10, timeout_minutes=1) == 7
    assert again(State.PENDING, next_try_at=NOW - 3) == 0.0  # overdue: at once


def test_a_dispatched_child_is_looked_at_just_after_its_placement_deadline():
    assert again(State.DISPATCHED, dispatched_at=NOW - 100) == 500 + DEADLINE_SLACK
    # the decision at that moment really is past the deadline: a look then replaces or fails the attempt
    later = NOW + 500 + DEADLINE_SLACK
    assert decide(dispatched_at=NOW - 100, now=later).transition == Transition.REPLACE


def test_a_running_child_is_looked_at_just_after_its_timeout():
    due = again(State.RUNNING, started_at=NOW - 60, timeout_minutes=5)
    assert due == 4 * 60 + TIMEOUT_GRACE + DEADLINE_SLACK
    running = [alloc(1, client="running")]
    assert decide(State.RUNNING, allocs=running, started_at=NOW - 60, timeout=5, now=NOW + due).transition == Transition.COLLECT
    assert decide(State.RUNNING, allocs=running, started_at=NOW - 60, timeout=5, now=NOW + due - 2 * DEADLINE_SLACK).transition is None


def test_bound_runs_are_dispatched_next_and_the_rest_wait_for_news():
    assert again(State.POLICY_BOUND) == 0.0
    assert again(State.PENDING) is None  # the capacity gate admits it
    assert again(State.COLLECTED) is None  # the reporter's
    assert again(State.RUNNING) is None  # started time unknown: only news or the resync
