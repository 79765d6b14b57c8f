"""The run store: rows, journal, transactions, migrations."""

import sqlite3

import pytest

from states.machine import IllegalTransition, State
from store.models import RunRecord
from store.runs import SCHEMA_VERSION, RunStore, StaleState, StoreError


class Clock:
    def __init__(self):
        self.t = 1_800_000_000.0

    def __call__(self):
        return self.t


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "state" / "r.db", Clock())


def test_create_is_idempotent_and_journaled(store):
    store.create(RunRecord(id="a@1", action_id="a", secrets=["GITHUB_TOKEN"]), "seen")
    again = store.create(RunRecord(id="a@1", action_id="a"), "seen again")
    assert again.secrets == ["GITHUB_TOKEN"]
    events = store.journal("a@1")
    assert [(e.from_state, e.to_state, e.transition) for e in events] == [(None, "pending", "create")]


def test_transition_writes_row_and_journal_together(store):
    store.create(RunRecord(id="a@1", action_id="a"), "seen")
    run = store.transition("a@1", "bind", expect="pending", reason="ok", changes={"attempt": 1, "token_accessor": "acc"})
    assert run.state == State.POLICY_BOUND and run.attempt == 1
    stored = store.get("a@1")
    assert stored.state == State.POLICY_BOUND and stored.token_accessor == "acc"
    assert [e.transition for e in store.journal("a@1")] == ["create", "bind"]


def test_illegal_transition_writes_nothing(store):
    store.create(RunRecord(id="a@1", action_id="a"), "seen")
    with pytest.raises(IllegalTransition):
        store.transition("a@1", "start", expect="pending", changes={"alloc_id": "x"})
    assert store.get("a@1").alloc_id is None
    assert len(store.journal("a@1")) == 1


def test_stale_expectation_is_refused(store):
    store.create(RunRecord(id="a@1", action_id="a"), "seen")
    store.transition("a@1", "reject", expect="pending", reason="bad")
    with pytest.raises(StaleState):
        store.transition("a@1", "bind", expect="pending")
    assert store.get("a@1").state == State.REJECTED


def test_find_by_action_and_issue(store):
    store.create(RunRecord(id="a@1", action_id="a"), "seen")
    store.create(RunRecord(id="issue:7:triage:1", kind="triage", issue=7), "seen")
    assert store.find("a").id == "a@1"
    assert store.find("issue:7:triage").id == "issue:7:triage:1"
    assert store.find("nope") is None


def test_counts_and_in_flight(store):
    for i in range(3):
        store.create(RunRecord(id=f"a{i}@1", action_id=f"a{i}"), "seen")
    store.transition("a0@1", "bind", expect="pending")
    assert store.counts() == {"pending": 2, "policy-bound": 1}
    assert store.in_flight() == 1


def test_survives_reopen(tmp_path):
    path = tmp_path / "r.db"
    s = RunStore(path, Clock())
    s.create(RunRecord(id="a@1", action_id="a"), "seen")
    s.transition("a@1", "bind", expect="pending")
    s.close()
    s2 = RunStore(path, Clock())
    assert s2.get("a@1").state == State.POLICY_BOUND
    assert s2.schema_version == SCHEMA_VERSION


def test_old_unversioned_file_is_migrated(tmp_path):
    path = tmp_path / "old.db"
    sqlite3.connect(path).execute("create table unrelated (x int)").connection.commit()
    s = RunStore(path, Clock())
    assert s.schema_version == SCHEMA_VERSION
    assert {"runs", "journal"} <= set(s.db.table_names())


def test_newer_schema_is_refused_with_advice(tmp_path):
    path = tmp_path / "new.db"
    RunStore(path, Clock()).close()
    conn = sqlite3.connect(path)
    conn.execute("update schema_version set version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this reconciler"):
        RunStore(path, Clock())


def test_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite file"):
        RunStore(path, Clock())


def test_version_1_file_gains_the_trigger_column(tmp_path):
    """A store written by schema 1 (no ``trigger``) is migrated on open and keeps its runs."""
    import sqlite_utils

    from store.runs import MIGRATIONS

    path = tmp_path / "v1.db"
    db = sqlite_utils.Database(path)
    db["schema_version"].insert({"version": 0})
    MIGRATIONS[1](db)
    db.execute("update schema_version set version = 1")
    db["runs"].insert({"id": "old-1", "kind": "vault-action", "state": "reported", "attempt": 1})
    db.conn.commit()
    db.close()
    assert "trigger" not in sqlite_utils.Database(path)["runs"].columns_dict
    s = RunStore(path, Clock())
    assert s.schema_version == SCHEMA_VERSION
    assert s.get("old-1").state == State.REPORTED and s.get("old-1").trigger is None
    s.update("old-1", {"trigger": "abc"})
    assert s.get("old-1").trigger == "abc"


def test_update_refuses_a_field_runs_do_not_have(store):
    store.create(RunRecord(id="a@1", action_id="a"), "seen")
    with pytest.raises(StoreError, match="no column 'colour'"):
        store.update("a@1", {"colour": "red"})
    with pytest.raises(StoreError, match="no run"):
        store.update("b@1", {"waiting": "x"})
    assert store.get("a@1").updated_at


def test_update_keeps_lists_and_returns_the_stored_row(store):
    store.create(RunRecord(id="a@1", action_id="a"), "seen")
    run = store.update("a@1", {"secrets": ["A", "B"], "attempt": 2}, note="intent", details={"n": 1})
    assert run.secrets == ["A", "B"] and run.attempt == 2 and run.state == State.PENDING
    assert store.get("a@1") == run
    assert [(e.transition, e.details) for e in store.journal("a@1")] == [("create", {}), ("note", {"n": 1})]


def test_briefs_list_cheap_columns_and_get_many_keeps_order(store):
    for name in ("a", "b", "c"):
        store.create(RunRecord(id=f"{name}@1", action_id=name), "seen")
    store.transition("b@1", "bind", expect="pending", changes={"attempt": 1})
    briefs = store.briefs([State.PENDING])
    assert [b.id for b in briefs] == ["a@1", "c@1"] and all(b.state == State.PENDING for b in briefs)
    assert [r.id for r in store.get_many(["c@1", "missing", "b@1"])] == ["c@1", "b@1"]
    assert store.get_many(["b@1"])[0].state == State.POLICY_BOUND


def test_a_batch_commits_together_and_a_refused_write_undoes_only_itself(store):
    store.create(RunRecord(id="a@1", action_id="a"), "seen")
    store.create(RunRecord(id="b@1", action_id="b"), "seen")
    with store.batch():
        store.transition("a@1", "reject", expect="pending", reason="bad")
        with pytest.raises(StaleState):
            store.transition("b@1", "bind", expect="policy-bound")
        store.set_value("k", "v")
    assert store.get("a@1").state == State.REJECTED and store.get("b@1").state == State.PENDING
    assert store.get_value("k") == "v"
    with pytest.raises(RuntimeError):
        with store.batch():
            store.transition("b@1", "reject", expect="pending", reason="bad")
            raise RuntimeError("boom")
    assert store.get("b@1").state == State.PENDING
    assert [e.transition for e in store.journal("b@1")] == ["create"]


def test_runs_for_jobs_names_the_in_flight_runs_owning_these_children(store):
    for i in range(3):
        store.create(RunRecord(id=f"a{i}@1", action_id=f"a{i}"), "seen")
        store.transition(f"a{i}@1", "bind", expect="pending")
        store.transition(f"a{i}@1", "dispatch", expect="policy-bound", changes={"nomad_job_id": f"vault-runner/dispatch-{i}"})
    store.transition("a2@1", "collect", expect="dispatched", changes={"outcome": "success"})  # no longer in flight
    found = sorted(store.runs_for_jobs(["vault-runner/dispatch-0", "vault-runner/dispatch-2", "other"]))
    assert found == [("a0@1", State.DISPATCHED, "vault-runner/dispatch-0")]
    assert store.runs_for_jobs([]) == []


def test_changed_elsewhere_hears_other_connections_only(tmp_path):
    path = tmp_path / "r.db"
    service = RunStore(path, Clock())
    assert service.changed_elsewhere() is False  # the first call only takes the mark
    service.create(RunRecord(id="a@1", action_id="a"), "seen")
    assert service.changed_elsewhere() is False  # its own writes are no news
    operator = RunStore(path, Clock())  # `reconciler cancel` in another process
    operator.transition("a@1", "cancel", expect="pending", reason="by operator")
    assert service.changed_elsewhere() is True
    assert service.changed_elsewhere() is False
    operator.close()
    service.close()
