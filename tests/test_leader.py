"""Leadership on Nomad's variable locks (nomad/structs/variables.go, nomad/locks.go): a restarted
instance resumes its own live lease at once; nobody else can, and a standby names the holder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from reconciler.clients.nomad import NomadClient
from doubles.nomad import NomadDouble
from reconciler.leader import LOCK_KEY, Leadership, StoreOwner, failover_seconds
from reconciler.settings import NomadSettings
from store.runs import RunStore

TOKEN = "management"


@pytest.fixture
def double(tmp_path: Path) -> Iterator[NomadDouble]:
    d = NomadDouble(token=TOKEN, mode="simulate", workdir=tmp_path / "nomad")
    d.start()
    d.set_policy("reconciler", (Path(__file__).resolve().parents[1] / "jobspecs" / "nomad-acl" / "reconciler.hcl").read_text())
    yield d
    d.stop()


def _instance(double: NomadDouble, db: Path, identity: str, records: list[dict[str, Any]] | None = None) -> tuple[Leadership, RunStore]:
    """One reconciler's leadership: its own store, the shipped reconciler policy's token."""
    client = NomadClient(NomadSettings(addr=double.address, token=double.add_token(["reconciler"]), namespace="runners"))
    store = RunStore(db, time.time)
    lead = Leadership(
        client, ttl=15, lock_delay=15, record=(records if records is not None else []).append, clock=time.monotonic,
        lease=store, owner=StoreOwner(f"{db}.owner"),
    )
    lead.identity = identity
    return lead, store


def test_restart_resumes_its_own_live_lease_at_once(double: NomadDouble, tmp_path: Path) -> None:
    db = tmp_path / "a" / "r.db"
    first, store = _instance(double, db, "host-a:1")
    assert first.try_acquire()
    kept = json.loads(store.get_value(LOCK_KEY))
    assert kept["path"] == "reconciler/leader" and kept["id"] == first._lock_id
    # kill -9: nothing released, the renewer is gone; the kernel drops the store owner's flock.
    first._stop.set()
    first._owner.release()
    store.close()

    started = time.monotonic()
    again, store2 = _instance(double, db, "host-a:2")
    assert again.try_acquire(), "the restarted instance resumed its lease"
    assert time.monotonic() - started < 5
    assert again._lock_id == kept["id"]
    again.release()
    store2.close()
    assert json.loads(RunStore(db, time.time).get_value(LOCK_KEY)) == {}, "a released lease is forgotten"


def test_another_store_never_resumes_and_a_standby_names_the_holder(double: NomadDouble, tmp_path: Path) -> None:
    leader, _ = _instance(double, tmp_path / "a" / "r.db", "host-a:1")
    assert leader.try_acquire()
    records: list[dict[str, Any]] = []
    other, _ = _instance(double, tmp_path / "b" / "r.db", "host-b:1", records)
    assert not other.try_acquire()
    assert other.holder == "host-a:1" and other.unreachable is None
    assert records[-1]["role"] == "standby" and "host-a:1" in records[-1]["why"]
    leader.release()


def test_a_second_process_on_the_same_store_cannot_use_the_lease(double: NomadDouble, tmp_path: Path) -> None:
    """The kept lock ID is usable only by the store's owner (an exclusive flock beside it)."""
    db = tmp_path / "a" / "r.db"
    leader, _ = _instance(double, db, "host-a:1")
    assert leader.try_acquire()
    intruder, _ = _instance(double, db, "host-a:99")
    assert not intruder.try_acquire(), "the owner lock is held by the live leader"
    assert leader.is_leader
    leader.release()


def test_unreachable_nomad_is_not_standby(tmp_path: Path) -> None:
    client = NomadClient(NomadSettings(addr="http://127.0.0.1:9", namespace="runners"))
    records: list[dict[str, Any]] = []
    lead = Leadership(client, ttl=15, lock_delay=15, record=records.append, clock=time.monotonic)
    assert not lead.try_acquire()
    assert lead.unreachable and records[-1]["role"] == "unknown"


def test_failover_time_is_two_ttls_plus_lock_delay() -> None:
    assert failover_seconds(15, 15) == 45
    assert failover_seconds(10, 1) == 21
