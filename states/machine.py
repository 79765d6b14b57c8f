"""The run state machine: every state and transition of INTERFACE.md, defined once.

The table below is the only place the graph is written down. It is loaded into a
``transitions.Machine`` (which checks it is well formed) and everything else -
the store's guard, the docs' state graph, the property tests - asks this module.
No I/O happens here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from transitions import Machine


class State(str, Enum):
    """A run's state, stored as the string INTERFACE.md uses."""

    PENDING = "pending"
    POLICY_BOUND = "policy-bound"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    COLLECTED = "collected"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    REPORTED = "reported"

    def __str__(self) -> str:
        return self.value


class Transition(str, Enum):
    """A transition's name: a verb, as INTERFACE.md names it."""

    BIND = "bind"
    REJECT = "reject"
    REBIND = "rebind"
    DISPATCH = "dispatch"
    START = "start"
    REPLACE = "replace"
    COLLECT = "collect"
    CANCEL = "cancel"
    REPORT = "report"
    RETRY = "retry"

    def __str__(self) -> str:
        return self.value


S, T = State, Transition


@dataclass(frozen=True)
class Edge:
    transition: Transition
    sources: tuple[State, ...]
    dest: State
    when: str


EDGES: tuple[Edge, ...] = (
    Edge(T.BIND, (S.PENDING,), S.POLICY_BOUND, "valid, authorized, every secret present; claim token minted"),
    Edge(T.REJECT, (S.PENDING,), S.REJECTED, "invalid or unauthorized (the reason is kept)"),
    Edge(T.REBIND, (S.POLICY_BOUND,), S.POLICY_BOUND, "the minted claim may be lost or stale: revoke it, mint anew"),
    Edge(T.DISPATCH, (S.POLICY_BOUND,), S.DISPATCHED, "Nomad holds the child (read back)"),
    Edge(T.START, (S.DISPATCHED,), S.RUNNING, "the allocation runs"),
    Edge(T.REPLACE, (S.DISPATCHED,), S.POLICY_BOUND, "not placed by the deadline: child stopped, claim revoked, next attempt"),
    Edge(
        T.COLLECT,
        (S.POLICY_BOUND, S.DISPATCHED, S.RUNNING),
        S.COLLECTED,
        "outcome known: exit code, timeout, never started, permanent dispatch error, or unknown (lost node)",
    ),
    Edge(
        T.CANCEL,
        (S.PENDING, S.POLICY_BOUND, S.DISPATCHED, S.RUNNING),
        S.CANCELLED,
        "operator, or the action file left main before dispatch",
    ),
    Edge(T.REPORT, (S.COLLECTED, S.REJECTED, S.CANCELLED), S.REPORTED, "result pushed (vault action) or recorded (sidecar)"),
    Edge(T.RETRY, (S.REPORTED,), S.PENDING, "operator only; next attempt; the gate is checked again"),
)

TERMINAL: frozenset[State] = frozenset({S.REPORTED})
"""States a run rests in until an operator acts."""

AWAITING_REPORT: frozenset[State] = frozenset({S.COLLECTED, S.REJECTED, S.CANCELLED})
"""States whose outcome is known and only needs reporting."""

IN_FLIGHT: frozenset[State] = frozenset({S.POLICY_BOUND, S.DISPATCHED, S.RUNNING})
"""States that hold a claim or a Nomad child: they count against the in-flight limit."""

ACTIVE: frozenset[State] = frozenset(set(State) - TERMINAL)
"""Every state but ``reported``: runs the loop still works on."""


class IllegalTransition(ValueError):
    """A transition was asked for from a state it does not leave."""


def _build_machine() -> Machine:
    machine = Machine(
        model=None,
        states=[s.value for s in State],
        transitions=[
            {"trigger": e.transition.value, "source": [s.value for s in e.sources], "dest": e.dest.value} for e in EDGES
        ],
        initial=S.PENDING.value,
        auto_transitions=False,
        ignore_invalid_triggers=False,
    )
    return machine


_MACHINE = _build_machine()


def next_state(current: State | str, transition: Transition | str) -> State:
    """The state ``transition`` leads to from ``current``, or IllegalTransition."""
    cur = State(current)
    trig = Transition(transition)
    found = _MACHINE.get_transitions(trigger=trig.value, source=cur.value)
    if not found:
        allowed = ", ".join(allowed_transitions(cur)) or "none"
        raise IllegalTransition(f"cannot {trig.value} a run in state {cur.value} (allowed from there: {allowed})")
    return State(found[0].dest)


def allowed_transitions(current: State | str) -> list[str]:
    return sorted(_MACHINE.get_triggers(State(current).value))


def edges() -> list[tuple[str, str, str]]:
    """Every (source, transition, dest) triple, for docs and tests."""
    return [(s.value, e.transition.value, e.dest.value) for e in EDGES for s in e.sources]


def mermaid() -> str:
    """The state graph as a Mermaid diagram, generated from the table above."""
    lines = ["stateDiagram-v2", f"    [*] --> {S.PENDING.value.replace('-', '_')}"]
    for src, trig, dest in edges():
        lines.append(f"    {src.replace('-', '_')} --> {dest.replace('-', '_')}: {trig}")
    return "\n".join(lines) + "\n"
