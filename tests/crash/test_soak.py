"""Randomized soak: 30 actions of 0.5-3 s, the reconciler SIGKILLed every 0.3-1.5 s of leadership.

Three variants: plain; with the run store deleted once mid-way (the durable
claims in Nomad Variables must carry the recovery); with the Nomad double
garbage-collecting finished children after 3 s (a child finished while the
reconciler was dead may be gone: the run is then reported ``unknown``, never
re-run). Each soak prints its seed; ``CRASH_SEED=<n>`` replays the same
durations, secrets and kill intervals (timing still varies).

A kill interval is counted from the moment the new process holds the
leadership lock: a process killed while still waiting for its predecessor's
lock to expire (TTL 2 s + LockDelay 1 s) would test nothing.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass

import pytest

from reconciler.local_cluster import LocalCluster

from .support import MarkerFormula, Service, action_toml, install_marker_formula, merge_actions, verify, wait_for

ACTIONS = 30
BATCHES = 3
KILL_EVERY = (0.3, 1.5)
KILLING_BUDGET = 50.0
"""Seconds of killing at most; then one last process runs until idle."""


def _seed() -> int:
    return int(os.environ.get("CRASH_SEED") or random.SystemRandom().randrange(2**31))


def _results_on_main(cluster: LocalCluster) -> set[str]:
    out = subprocess.run(
        ["git", "--git-dir", str(cluster.bare), "ls-tree", "--name-only", "main", "vault/actions/"],
        capture_output=True, text=True, check=True,
    ).stdout
    suffix = ".result.json"
    return {p.rsplit("/", 1)[-1][: -len(suffix)] for p in out.splitlines() if p.endswith(suffix)}


@dataclass
class SoakReport:
    seed: int
    kills: int
    seconds: float
    db_deleted: bool


def soak(
    cluster: LocalCluster, formula: MarkerFormula, svc: Service, tag: str, seed: int, *, delete_db: bool = False
) -> tuple[list[str], SoakReport, list]:
    rng = random.Random(seed)
    ids = [f"soak-{tag}-{i:02d}" for i in range(ACTIONS)]
    texts = {}
    for i, aid in enumerate(ids):
        formula.set_duration(aid, rng.uniform(0.5, 3.0))
        texts[aid] = action_toml(aid, formula.name, secrets=["GITHUB_TOKEN"] if i % 3 == 0 else [])
    per_batch = ACTIONS // BATCHES
    batches = [dict(list(texts.items())[b * per_batch:(b + 1) * per_batch]) for b in range(BATCHES)]
    ghosts = []
    started = time.monotonic()
    merge_actions(cluster, batches.pop(0), title=f"soak {tag} batch 1")
    deleted = fresh_store = False
    # A store deleted with its lock id cannot resume its own lease: the restart waits it out (2 x TTL + LockDelay).
    lease = 2 * float(svc.env["RECONCILER_LOCK_TTL"]) + float(svc.env["RECONCILER_LOCK_DELAY"])
    while time.monotonic() - started < KILLING_BUDGET:
        svc.start()
        wait_for(lambda: svc.is_leader() or not svc.alive(), 20 + (lease if fresh_store else 0), "leadership")
        fresh_store = False
        assert svc.alive(), f"the reconciler died on its own; log:\n{svc.log_tail()}"
        time.sleep(rng.uniform(*KILL_EVERY))
        assert svc.alive(), f"the reconciler died on its own; log:\n{svc.log_tail()}"
        svc.kill()
        if batches and svc.kills % 2 == 0:
            merge_actions(cluster, batches.pop(0), title=f"soak {tag} batch {BATCHES - len(batches)}")
        done = _results_on_main(cluster) & set(ids)
        if delete_db and not deleted and len(done) >= ACTIONS // 3:
            ghost = svc.workdir / f"ghost-{svc.kills}.db"
            shutil.copy(svc.db, ghost)  # kept for the token audit only
            ghosts.append(ghost)
            for suffix in ("", "-wal", "-shm"):
                (svc.db.parent / (svc.db.name + suffix)).unlink(missing_ok=True)
            deleted = fresh_store = True
        if not batches and len(done) == ACTIONS:
            break
    for batch in batches:  # the budget ran out before every batch went in
        merge_actions(cluster, batch, title=f"soak {tag} late batch")
    svc.until_idle(timeout=90)
    report = SoakReport(seed, svc.kills, time.monotonic() - started, deleted)
    return ids, report, ghosts


@pytest.mark.timeout(240)
def test_soak_sigkill(cluster, formula, tmp_path):
    seed = _seed()
    print(f"soak seed {seed} (replay with CRASH_SEED={seed})")
    svc = Service(cluster, tmp_path)
    ids, report, _ = soak(cluster, formula, svc, "plain", seed)
    verdict = verify(cluster, formula, ids, [svc.db])
    print(f"plain soak: {report}; {verdict.summary()}")
    assert report.kills >= 5, f"too few kills to mean anything: {report}"


@pytest.mark.timeout(240)
def test_soak_sigkill_with_the_store_deleted_once(cluster, formula, tmp_path):
    seed = _seed()
    print(f"soak seed {seed} (replay with CRASH_SEED={seed})")
    svc = Service(cluster, tmp_path)
    ids, report, ghosts = soak(cluster, formula, svc, "nodb", seed, delete_db=True)
    verdict = verify(cluster, formula, ids, [svc.db, *ghosts])
    print(f"store-deleted soak: {report}; {verdict.summary()}")
    assert report.db_deleted, f"the store was never deleted: {report}"


@pytest.fixture(scope="module")
def gc_cluster(tmp_path_factory):
    """A factory whose Nomad garbage-collects a finished child 3 s after it died."""
    c = LocalCluster(tmp_path_factory.mktemp("crash-gc"), gc_after=3, ops_transport="file").start()  # as tests/crash/conftest.py
    yield c
    c.stop()


@pytest.mark.timeout(240)
def test_soak_sigkill_with_children_garbage_collected(gc_cluster, tmp_path):
    seed = _seed()
    print(f"soak seed {seed} (replay with CRASH_SEED={seed})")
    formula = install_marker_formula(gc_cluster, "crash", default_seconds=1.0)
    svc = Service(gc_cluster, tmp_path)
    ids, report, _ = soak(gc_cluster, formula, svc, "gc", seed)
    # A child finished and collected while no reconciler watched: its outcome is unknown, never re-run.
    verdict = verify(gc_cluster, formula, ids, [svc.db], allowed_outcomes=("success", "unknown"))
    print(f"gc soak: {report}; {verdict.summary()}")
    unknown = [a for a, o in verdict.outcomes.items() if o == "unknown"]
    for aid in unknown:
        assert verdict.starts[aid] <= 1
