"""Arbitrary bytes merged as an action file never crash the loop, nor disturb its other runs.

In-process: each example merges one file ``vault/actions/fuzz-<n>.toml`` through
an approved pull request and runs ONE pass. The pass must not raise; the file's
run must be rejected and reported in that pass (or, for the rare valid file,
be on its way); a long-running neighbour dispatched before stays running, with
one child, untouched by every pass.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import actions
from states.machine import State
from tests.conftest import Harness

from .support import action_toml, children_of, merge_actions, result

pytestmark = pytest.mark.timeout(180)

NEIGHBOUR = "fuzz-neighbour"
KEYS = ["id", "formula", "context", "secrets", "mounts", "model", "tools", "timeout_minutes", "blast_radius", "dispatch_mode", "colour"]
VALUES = st.one_of(
    st.text(max_size=20).map(json.dumps),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.lists(st.text(max_size=8), max_size=3).map(lambda xs: "[" + ", ".join(json.dumps(x) for x in xs) + "]"),
    st.sampled_from(['"release"', '"crash"', '["GITHUB_TOKEN"]', '["ssh"]', "true", "1e999", "{}", "[[]]", '"""', "'", "nan"]),
)
TOMLISH = st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=8).map(
    lambda pairs: "\n".join(f"{k} = {v}" for k, v in pairs).encode("utf-8", "surrogatepass")
)
CONTENT = st.one_of(
    st.binary(max_size=2048),
    TOMLISH,
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(min_size=1, max_size=64).map(lambda b: b * 2000),  # larger than one read, often past the size limit
)


@pytest.fixture(scope="module")
def fuzz_harness(cluster, formula, tmp_path_factory):
    h = Harness(cluster, tmp_path_factory.mktemp("fuzz"))
    formula.set_duration(NEIGHBOUR, 120)
    merge_actions(cluster, {NEIGHBOUR: action_toml(NEIGHBOUR, formula.name)})
    for _ in range(100):
        h.run_pass()
        if h.store.find(NEIGHBOUR).state == State.RUNNING:
            break
        cluster.nomad.wait_until(lambda: False, timeout=0.1)
    assert h.store.find(NEIGHBOUR).state == State.RUNNING
    yield h
    h.close()


_names = (f"fuzz-{n}" for n in itertools.count())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(content=CONTENT)
def test_arbitrary_bytes_as_an_action_file_never_crash_a_pass(cluster, fuzz_harness, content):
    h = fuzz_harness
    action_id = next(_names)
    path = f"vault/actions/{action_id}.toml"
    neighbour_before = h.store.find(NEIGHBOUR)
    cluster.merge_files({path: content}, title=f"fuzz {action_id}")

    summary = h.run_pass()  # must not raise

    runs = [r for r in h.store.runs() if r.path == path]
    assert len(runs) <= 1
    try:
        actions.parse_action(f"{action_id}.toml", content, h.settings.actions)
        valid = True
    except actions.ActionInvalid:
        valid = False
    if valid:
        assert runs and runs[0].state != State.REJECTED
    else:
        assert runs, "a run records the rejection"
        run = runs[0]
        assert run.state == State.REPORTED and run.outcome == "rejected", (run.state, run.waiting, run.error)
        res = result(cluster, action_id)
        assert res is not None and res["outcome"] == "rejected" and res["exit_code"] == 1
        assert res["reason"]
        assert children_of(cluster, action_id) == []

    neighbour = h.store.find(NEIGHBOUR)
    assert neighbour.state == State.RUNNING
    assert neighbour.attempt == neighbour_before.attempt and neighbour.nomad_job_id == neighbour_before.nomad_job_id
    assert len(children_of(cluster, NEIGHBOUR)) == 1
    assert not [e for e in summary.errors if neighbour.id in e or "internal error" in e], summary.errors
