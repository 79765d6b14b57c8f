"""The state machine is exactly INTERFACE.md's table."""

import pytest
from hypothesis import given, strategies as st

from states.machine import EDGES, IllegalTransition, State, Transition, allowed_transitions, edges, mermaid, next_state

# INTERFACE.md "Run states and transitions", transcribed by hand on purpose.
INTERFACE_TABLE = {
    ("pending", "bind"): "policy-bound",
    ("pending", "reject"): "rejected",
    ("policy-bound", "rebind"): "policy-bound",
    ("policy-bound", "dispatch"): "dispatched",
    ("dispatched", "start"): "running",
    ("dispatched", "replace"): "policy-bound",
    ("policy-bound", "collect"): "collected",
    ("dispatched", "collect"): "collected",
    ("running", "collect"): "collected",
    ("pending", "cancel"): "cancelled",
    ("policy-bound", "cancel"): "cancelled",
    ("dispatched", "cancel"): "cancelled",
    ("running", "cancel"): "cancelled",
    ("collected", "report"): "reported",
    ("rejected", "report"): "reported",
    ("cancelled", "report"): "reported",
    ("reported", "retry"): "pending",
}


def test_states_are_interface_states():
    assert {s.value for s in State} == {
        "pending", "policy-bound", "dispatched", "running", "collected", "rejected", "cancelled", "reported"
    }


def test_edges_are_exactly_the_interface_table():
    assert {(src, trig): dest for src, trig, dest in edges()} == INTERFACE_TABLE
    assert len(edges()) == len(INTERFACE_TABLE)


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("transition", list(Transition))
def test_every_pair_either_follows_the_table_or_is_refused(state, transition):
    key = (state.value, transition.value)
    if key in INTERFACE_TABLE:
        assert next_state(state, transition).value == INTERFACE_TABLE[key]
    else:
        with pytest.raises(IllegalTransition) as err:
            next_state(state, transition)
        assert state.value in str(err.value) and transition.value in str(err.value)


def test_only_retry_leaves_reported():
    assert allowed_transitions(State.REPORTED) == ["retry"]


@given(st.lists(st.sampled_from(list(Transition)), max_size=40))
def test_any_sequence_stays_on_table_edges(seq):
    state = State.PENDING
    for trig in seq:
        try:
            new = next_state(state, trig)
        except IllegalTransition:
            continue
        assert INTERFACE_TABLE[(state.value, trig.value)] == new.value
        state = new


def test_mermaid_graph_lists_every_edge():
    text = mermaid()
    for src, trig, dest in edges():
        assert f"{src.replace('-', '_')} --> {dest.replace('-', '_')}: {trig}" in text
    assert len(EDGES) == 10
