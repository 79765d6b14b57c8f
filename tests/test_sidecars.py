"""Which sidecar runs the project's bug reports ask for (pure: plain values only)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings, strategies as st

from reconciler.facts import Issue
from reconciler.sidecars import (
    DEFAULT_FORMULAS,
    IssueIndex,
    SidecarWant,
    kind_for,
    parse_sidecar_run_id,
    sidecar_run_id,
    sub_issues_of,
    to_start,
    trigger_of,
    wants,
)
from states.machine import State
from store.models import RunRecord

if "trigger" in RunRecord.model_fields:
    Run = RunRecord
else:  # until the store grows its ``trigger`` column

    class Run(RunRecord):  # type: ignore[no-redef]
        trigger: str | None = None


def bug(number: int, *labels: str, state: str = "open", body: str = "", updated_at: str = "") -> Issue:
    return Issue(number=number, title=f"bug {number}", body=body, state=state,
                 labels=("bug-report", *labels), updated_at=updated_at)


def sub(number: int, parent: int, state: str = "closed", updated_at: str = "") -> Issue:
    return Issue(number=number, title=f"part of {parent}", body=f"Fix the parser.\n\nDecomposed from #{parent}",
                 state=state, updated_at=updated_at)


def run(issue: int, kind: str, seq: int, state: State, trigger: str | None) -> RunRecord:
    return Run(id=sidecar_run_id(issue, kind, seq), kind=kind, issue=issue, state=state, trigger=trigger,
               created_at=f"2026-11-27T04:0{seq}:00Z")


def want_for(issue: Issue, known: list[Issue] = ()) -> SidecarWant:
    found = wants([issue], {i.number: i for i in [issue, *known]})
    assert len(found) == 1, found
    return found[0]


# -- what applies ------------------------------------------------------------------------------


def test_bug_report_without_outcome_label_asks_for_reproduce():
    assert kind_for(bug(7), []) == ("reproduce", "bug-report without an outcome label")
    assert kind_for(bug(7, "priority/high"), [])[0] == "reproduce"


def test_bug_report_in_triage_asks_for_triage():
    assert kind_for(bug(7, "in-triage"), [])[0] == "triage"


def test_in_progress_with_every_sub_issue_closed_asks_for_verify():
    subs = [sub(14, 7), sub(15, 7)]
    assert kind_for(bug(7, "in-progress"), subs) == (
        "verify", "in-progress and all 2 sub-issues (#14, #15) closed")


@pytest.mark.parametrize("subs", [[], [sub(14, 7), sub(15, 7, state="open")]], ids=["no sub-issue", "one open"])
def test_in_progress_without_all_sub_issues_closed_asks_for_nothing(subs):
    assert kind_for(bug(7, "in-progress"), subs) is None


@pytest.mark.parametrize("label", ["blocked", "rejected"])
def test_blocked_or_rejected_asks_for_nothing(label):
    assert kind_for(bug(7, label), []) is None
    assert kind_for(bug(7, label, "in-triage"), []) is None
    assert kind_for(bug(7, label, "in-progress"), [sub(14, 7)]) is None


def test_not_a_bug_report_or_closed_asks_for_nothing():
    plain = Issue(number=7, title="t", body="", state="open", labels=("in-triage",))
    assert kind_for(plain, []) is None
    assert kind_for(bug(7, state="closed"), []) is None
    assert wants([plain, bug(8, state="closed")], {}) == []


def test_contradictory_outcome_labels_ask_for_nothing():
    assert kind_for(bug(7, "in-triage", "in-progress"), [sub(14, 7)]) is None


def test_labels_are_checked_client_side_in_wants():
    """The forge may hand back issues a label filter should have dropped."""
    stray = Issue(number=3, title="t", body="", state="open", labels=("enhancement",))
    assert [w.issue for w in wants([stray, bug(4)], {})] == [4]


# -- sub-issues --------------------------------------------------------------------------------


def test_decomposed_from_longer_number_does_not_count():
    other = Issue(number=20, title="t", body="Decomposed from #123", state="closed")
    assert sub_issues_of(12, [other]) == []
    assert sub_issues_of(1, [other]) == []
    assert sub_issues_of(123, [other]) == [other]


@pytest.mark.parametrize("body", ["Decomposed from #12", "Decomposed from #12.", "See.\nDecomposed from #12\n",
                                  "Decomposed from #12, part 2"])
def test_decomposed_from_exact_number_counts(body):
    child = Issue(number=20, title="t", body=body, state="closed")
    assert sub_issues_of(12, [child]) == [child]


def test_sub_issues_are_sorted_and_never_the_issue_itself():
    issues = [sub(30, 12), sub(21, 12), Issue(number=12, title="t", body="Decomposed from #12", state="open")]
    assert [i.number for i in sub_issues_of(12, issues)] == [21, 30]


def test_wants_finds_sub_issues_among_all_known():
    parent = bug(12, "in-progress")
    known = {i.number: i for i in [parent, sub(14, 12), sub(15, 12), sub(16, 123, state="open")]}
    [want] = wants([parent], known)
    assert (want.kind, want.formula, want.issue) == ("verify", "verify", 12)
    assert "#14, #15" in want.reason and "#16" not in want.reason


def test_wants_uses_the_configured_formula_and_refuses_a_missing_one():
    [want] = wants([bug(5, "in-triage")], {}, {**DEFAULT_FORMULAS, "triage": "triage-v2"})
    assert want.formula == "triage-v2"
    with pytest.raises(ValueError, match="no formula configured for verify"):
        wants([bug(5)], {}, {"reproduce": "r", "triage": "t"})
    with pytest.raises(ValueError, match="not a formula name"):
        wants([bug(5)], {}, {**DEFAULT_FORMULAS, "reproduce": "../evil"})


# -- triggers ----------------------------------------------------------------------------------


def test_trigger_is_stable_and_short_and_follows_labels_and_sub_issues():
    a = trigger_of(bug(7, "x", "in-progress"), "verify", [sub(14, 7)])
    assert a == trigger_of(bug(7, "in-progress", "x", "x"), "verify", [sub(14, 7)])
    assert re.fullmatch(r"[0-9a-f]{16}", a)
    assert a != trigger_of(bug(7, "in-progress"), "verify", [sub(14, 7)])
    assert a != trigger_of(bug(7, "x", "in-progress"), "verify", [sub(14, 7), sub(15, 7)])
    assert a != trigger_of(bug(7, "x", "in-progress"), "verify", [sub(14, 7)], {7: 1})


# -- which wants start -------------------------------------------------------------------------


def test_a_new_issue_gets_its_first_run():
    want = want_for(bug(7))
    started, notes = to_start([want], [], cap=5, in_flight=0)
    assert [(w.issue, w.kind, w.seq, w.run_id) for w in started] == [(7, "reproduce", 1, "issue-7-reproduce-1")]
    assert notes == []


@pytest.mark.parametrize("state", [s for s in State if s is not State.REPORTED])
def test_an_issue_with_an_active_run_gets_nothing_new(state):
    want = want_for(bug(7))
    existing = [run(7, "reproduce", 1, state, "something-else")]
    assert to_start([want], existing, cap=5, in_flight=1) == ([], [])


def test_a_reported_run_with_an_unchanged_trigger_gets_nothing_new():
    want = want_for(bug(7))
    existing = [run(7, "reproduce", 1, State.REPORTED, want.trigger)]
    assert to_start([want], existing, cap=5, in_flight=0) == ([], [])


def test_a_reported_run_without_a_trigger_counts_as_unchanged():
    want = want_for(bug(7))
    assert to_start([want], [run(7, "reproduce", 1, State.REPORTED, None)], cap=5, in_flight=0) == ([], [])


def test_a_label_change_earns_a_new_run_with_the_next_seq():
    before = want_for(bug(7))
    existing = [run(7, "reproduce", 1, State.REPORTED, "older"), run(7, "reproduce", 2, State.REPORTED, before.trigger)]
    after = want_for(bug(7, "needs-info"))
    assert after.trigger != before.trigger
    started, _ = to_start([after], existing, cap=5, in_flight=0)
    assert [(w.run_id, w.trigger) for w in started] == [("issue-7-reproduce-3", after.trigger)]


def test_runs_of_another_kind_or_issue_do_not_interfere():
    want = want_for(bug(7, "in-triage"))
    existing = [run(7, "reproduce", 1, State.RUNNING, "t"), run(8, "triage", 1, State.RUNNING, "t")]
    started, _ = to_start([want], existing, cap=5, in_flight=2)
    assert [w.run_id for w in started] == ["issue-7-triage-1"]


def test_the_cap_holds_and_names_what_it_holds_back():
    wanted = wants([bug(n) for n in (4, 2, 3, 1)], {})
    started, notes = to_start(wanted, [], cap=5, in_flight=3)
    assert [w.issue for w in started] == [1, 2]
    assert len(notes) == 2
    assert all("cap of 5 sidecars in flight reached" in n for n in notes)
    assert "issue #3 reproduce" in notes[0]
    assert to_start(wanted, [], cap=5, in_flight=9)[0] == []


def test_duplicate_wants_start_once():
    want = want_for(bug(7))
    started, _ = to_start([want, want], [], cap=5, in_flight=0)
    assert len(started) == 1


KINDS = st.sampled_from(["reproduce", "triage", "verify"])
ISSUES = st.integers(min_value=1, max_value=6)
TRIGGERS = st.sampled_from(["t1", "t2", "t3", None])


@st.composite
def scenarios(draw):
    wanted = draw(st.lists(st.builds(lambda i, k, t: SidecarWant(i, k, k, t or "t0", "r"), ISSUES, KINDS, TRIGGERS),
                           max_size=20))
    runs = []
    for _ in range(draw(st.integers(min_value=0, max_value=12))):
        issue, kind = draw(ISSUES), draw(KINDS)
        seq = 1 + sum(1 for r in runs if (r.issue, r.kind) == (issue, kind))
        runs.append(run(issue, kind, seq, draw(st.sampled_from(list(State))), draw(TRIGGERS)))
    return wanted, runs, draw(st.integers(min_value=0, max_value=8)), draw(st.integers(min_value=0, max_value=10))


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_to_start_never_doubles_a_run_nor_exceeds_the_cap(scenario):
    wanted, runs, cap, in_flight = scenario
    started, notes = to_start(wanted, runs, cap=cap, in_flight=in_flight)
    keys = [(w.issue, w.kind) for w in started]
    assert len(keys) == len(set(keys))
    assert len(started) <= max(0, cap - in_flight)
    ids = {r.id for r in runs}
    for w in started:
        assert w.run_id not in ids
        mine = [r for r in runs if (r.issue, r.kind) == (w.issue, w.kind)]
        assert all(r.state == State.REPORTED for r in mine)
        assert w.seq == len(mine) + 1
    assert len(notes) <= len(wanted)


# -- run ids -----------------------------------------------------------------------------------


def test_run_ids_suit_nomad_tokens_and_variable_paths():
    rid = sidecar_run_id(12, "verify", 3)
    assert rid == "issue-12-verify-3"
    assert re.fullmatch(r"[A-Za-z0-9_~/-]+", rid)
    assert parse_sidecar_run_id(rid) == (12, "verify", 3)
    assert parse_sidecar_run_id("issue:12:verify:3") == (12, "verify", 3)
    assert parse_sidecar_run_id("release-v120-abc") is None


@pytest.mark.parametrize("args", [(0, "verify", 1), (12, "deploy", 1), (12, "verify", 0), (True, "verify", 1)])
def test_run_ids_refuse_bad_parts(args):
    with pytest.raises(ValueError):
        sidecar_run_id(*args)


# -- the issue index ---------------------------------------------------------------------------


def test_index_keeps_bug_reports_and_sub_issues_and_tracks_since():
    index = IssueIndex()
    assert index.since() is None
    index.update([
        bug(7, "in-progress", updated_at="2026-11-27T04:00:00Z"),
        sub(14, 7, state="open", updated_at="2026-11-27T04:05:00+00:00"),
        Issue(number=9, title="chore", body="", state="open", updated_at="2026-11-27T04:10:00Z"),
    ])
    assert sorted(index.issues()) == [7, 14]
    assert [i.number for i in index.open_bug_reports()] == [7]
    assert index.since() == "2026-11-27T04:10:00Z"
    assert wants(index.open_bug_reports(), index.issues(), revisions=index.revisions()) == []

    index.update([sub(14, 7, state="closed", updated_at="2026-11-27T04:20:00Z")])
    [want] = wants(index.open_bug_reports(), index.issues(), revisions=index.revisions())
    assert want.kind == "verify"
    assert index.since() == "2026-11-27T04:20:00Z"
    assert index.since(overlap_seconds=90) == "2026-11-27T04:18:30Z"


def test_index_ignores_an_older_copy_and_compares_times_not_strings():
    index = IssueIndex()
    index.update([bug(7, "in-triage", updated_at="2026-11-27T05:00:00+01:00")])  # 04:00Z
    index.update([bug(7, updated_at="2026-11-27T03:59:00Z")])
    assert index.get(7).labels == ("bug-report", "in-triage")
    assert index.since() == "2026-11-27T05:00:00+01:00"
    index.update([bug(7, updated_at="2026-11-27T04:30:00Z")])
    assert index.get(7).labels == ("bug-report",)
    assert index.since() == "2026-11-27T04:30:00Z"


def test_a_label_detour_changes_the_trigger_but_a_quiet_rescan_does_not():
    index = IssueIndex()
    index.update([bug(7, updated_at="2026-11-27T04:00:00Z")])
    first = wants(index.open_bug_reports(), index.issues(), revisions=index.revisions())[0]
    index.update([bug(7, updated_at="2026-11-27T04:00:00Z")])  # the inclusive `since` returns it again
    index.update([bug(7, updated_at="2026-11-27T04:02:00Z")])  # a comment: labels unchanged
    assert wants(index.open_bug_reports(), index.issues(), revisions=index.revisions())[0].trigger == first.trigger

    index.update([bug(7, "in-triage", updated_at="2026-11-27T04:05:00Z")])
    index.update([bug(7, updated_at="2026-11-27T04:09:00Z")])  # back to plain bug-report
    again = wants(index.open_bug_reports(), index.issues(), revisions=index.revisions())[0]
    assert again.kind == "reproduce" and again.trigger != first.trigger
    started, _ = to_start([again], [run(7, "reproduce", 1, State.REPORTED, first.trigger)], cap=5, in_flight=0)
    assert [w.run_id for w in started] == ["issue-7-reproduce-2"]


def test_an_issue_leaving_and_reentering_the_index_gets_a_new_revision():
    index = IssueIndex()
    index.update([bug(7, updated_at="2026-11-27T04:00:00Z")])
    index.update([bug(7, state="closed", updated_at="2026-11-27T04:01:00Z")])
    assert 7 not in index
    index.update([bug(7, updated_at="2026-11-27T04:02:00Z")])
    assert 7 in index and index.revision(7) == 1


def test_index_round_trips_through_json():
    index = IssueIndex()
    index.update([bug(7, "in-progress", body="crash", updated_at="2026-11-27T04:00:00Z"), sub(14, 7, "open"),
                  sub(15, 7, updated_at="2026-11-27T04:01:00Z")])
    index.update([sub(14, 7, "closed", updated_at="2026-11-27T04:02:00Z")])
    copy = IssueIndex.from_json(index.to_json())
    assert copy.issues() == index.issues()
    assert copy.revisions() == index.revisions() == {14: 1}
    assert copy.since() == index.since()
    assert copy.to_json() == index.to_json()
    json.loads(copy.to_json())


@pytest.mark.parametrize("text", ["not json", "[]", '{"format": 99}', '{"format": 1, "bug_label": "b"}'])
def test_index_refuses_an_unreadable_document(text):
    with pytest.raises(ValueError, match="saved issue index is unreadable"):
        IssueIndex.from_json(text)
