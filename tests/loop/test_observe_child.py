"""observe_child: the job is read only when the allocations do not settle whether it still stands."""

from __future__ import annotations

from types import SimpleNamespace

from reconciler.decide import Transition
from reconciler.steps import decide_for, observe_child
from states.machine import State
from store.models import RunRecord


class Nomad:
    def __init__(self, allocations, job):
        self._allocations, self._job = allocations, job
        self.reads: list[str] = []

    def allocations(self, job_id):
        self.reads.append("allocations")
        return self._allocations

    def job(self, job_id):
        self.reads.append("job")
        return self._job

    def evaluations(self, job_id):
        self.reads.append("evaluations")
        return []


def alloc(desired="run", client="complete", exit_code=0):
    return {"ID": "a1b2c3d4-0000-0000-0000-000000000000", "ClientStatus": client, "DesiredStatus": desired, "CreateIndex": 5,
            "TaskStates": {"runner": {"State": "dead", "Events": [{"Type": "Started"}, {"Type": "Terminated", "ExitCode": exit_code}]}}}


def run(state=State.RUNNING):
    return RunRecord(id="r@1", action_id="r", state=state, nomad_job_id="vault-runner/dispatch-1", attempt=1,
                     dispatched_at="2026-12-04T10:00:00Z", started_at="2026-12-04T10:00:01Z", timeout_minutes=60)


def ctx_with(nomad):
    settings = SimpleNamespace(loop=SimpleNamespace(placement_deadline=600, max_attempts=3))
    return SimpleNamespace(nomad=nomad, settings=settings, now=lambda: 1_796_378_500.0)


def test_a_finished_allocation_nomad_still_wants_settles_the_run_without_the_job_read():
    nomad = Nomad([alloc()], job=None)
    view = observe_child(ctx_with(nomad), run())
    assert nomad.reads == ["allocations"]
    decision = decide_for(ctx_with(nomad), run(), view)
    assert decision.transition == Transition.COLLECT and decision.changes["outcome"] == "success"


def test_no_allocation_needs_the_job_read_a_missing_job_lists_as_empty():
    nomad = Nomad([], job=None)
    view = observe_child(ctx_with(nomad), run())
    assert nomad.reads == ["allocations", "job"]
    decision = decide_for(ctx_with(nomad), run(), view)
    assert decision.transition == Transition.COLLECT and decision.changes["outcome"] == "unknown"


def test_an_allocation_told_to_stop_needs_the_job_read_someone_may_have_purged_it():
    nomad = Nomad([alloc(desired="stop", client="complete", exit_code=0)], job=None)
    view = observe_child(ctx_with(nomad), run())
    assert nomad.reads == ["allocations", "job"]
    decision = decide_for(ctx_with(nomad), run(), view)
    assert decision.changes["outcome"] == "unknown"  # the job vanished: a stopped task's exit 0 proves nothing


def test_a_run_without_a_child_reads_nothing():
    nomad = Nomad([alloc()], job={"ID": "x"})
    bare = run().model_copy(update={"nomad_job_id": None})
    view = observe_child(ctx_with(nomad), bare)
    assert nomad.reads == [] and view.job is None
