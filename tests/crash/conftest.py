"""Fixtures of the crash tests: one local factory per module, with a marker formula."""

from __future__ import annotations

import pytest

from reconciler.local_cluster import LocalCluster

from .support import MarkerFormula, install_marker_formula


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A factory (doubles + bare ops repo) for the whole module; every runner process is killed at the end."""
    # file:// remote: the PushGate hooks run in the reconciler's own git session (kill_git kills that
    # session); over smart HTTP they would run in the double's http-backend instead.
    c = LocalCluster(tmp_path_factory.mktemp("crash"), ops_transport="file").start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def formula(cluster) -> MarkerFormula:
    """``formulas/crash.sh``: one marker line per start, then a per-action sleep (default 1 s)."""
    return install_marker_formula(cluster, "crash", default_seconds=1.0)
