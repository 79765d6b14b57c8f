"""Shared fixtures: a local factory (doubles + real git) and a reconciler wired to it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from reconciler.app import build_context
from reconciler.loop import Reconciler
from store.runs import RunStore


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from reconciler.local_cluster import LocalCluster

    c = LocalCluster(tmp_path_factory.mktemp("factory")).start()
    yield c
    c.stop()


@pytest.fixture(autouse=True)
def _nomad_refuses_nothing_we_send(request):
    """Every test on a local factory: no request got a 400 (or a 501) from the strict Nomad double.

    A real Nomad refuses what the double refuses (go-bexpr filters, bad indexes, bad topics): a 400 here
    is a request that would fail on a real cluster. A test that provokes one on purpose says so with
    ``@pytest.mark.nomad_refusal_expected``.
    """
    if "cluster" not in request.fixturenames:
        yield
        return
    nomad = request.getfixturevalue("cluster").nomad
    before = len(nomad.malformed)
    yield
    refused = nomad.malformed[before:]
    if refused and request.node.get_closest_marker("nomad_refusal_expected") is None:
        pytest.fail(f"the Nomad double refused {len(refused)} request(s) as malformed: {refused[:5]}")


@pytest.fixture(autouse=True)
def _claims_die_before_their_formulas(request):
    """Every test on a local factory: each formula the runner started ran after its claim token was revoked.

    The runner leaves ``formula.started`` (time, claim accessor, whether its revoke-self went through) in
    the task directory; the Vault double's record of that token must show the revocation before that time.
    A revoke-self that failed is allowed only where the test made Vault fail on purpose.
    """
    if "cluster" not in request.fixturenames:
        yield
        return
    import json

    c = request.getfixturevalue("cluster")
    before = set(Path(c.nomad.workdir).glob("*/local/formula.started"))
    yield
    for marker in sorted(set(Path(c.nomad.workdir).glob("*/local/formula.started")) - before):
        try:
            note = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # the double's workdir is being torn down
        token = c.vault.token_by_accessor(note["accessor"])
        assert token is not None, f"{marker}: no claim token with accessor {note['accessor']}"
        if note["revoked"]:
            assert token["revoked"] and token["revoked_at"] <= note["at"], (
                f"{marker}: the claim was revoked at {token['revoked_at']}, after its formula started at {note['at']}"
            )
        else:
            assert c.vault.faults.injected, f"{marker}: the runner could not revoke its claim before the formula"


class Harness:
    """A reconciler over ``cluster`` with its own store and clone."""

    def __init__(self, cluster, workdir: Path, sidecars: bool = False, **loop):
        self.cluster = cluster
        self.settings = cluster.settings(db=workdir / "state" / "r.db", ops_root=workdir / "ops", sidecars=sidecars, **loop)
        self.store = RunStore(self.settings.store.db, time.time)
        self.ctx = build_context(self.settings, self.store)
        self.reconciler = Reconciler(self.ctx)

    def until_idle(self, timeout: float = 60.0) -> None:
        stop = threading.Event()
        ok = self.reconciler.serve(stop, until_idle=True, timeout=timeout)
        if not ok:
            active = [(r.id, r.state, r.waiting) for r in self.store.active()]
            raise AssertionError(f"not idle after {timeout} s: {active}")

    def run_pass(self):
        return self.reconciler.run_pass()

    def close(self):
        self.reconciler.close()
        self.store.close()


@pytest.fixture
def harness(cluster, tmp_path):
    h = Harness(cluster, tmp_path)
    yield h
    h.close()
