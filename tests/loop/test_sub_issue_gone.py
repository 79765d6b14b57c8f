"""A sub-issue deleted from the tracker stops blocking its parent's ``verify`` (#10).

Incremental scans (``since``) never return a deleted issue again, so the reconciler looks
open sub-issues of ``in-progress`` reports up one by one (404 = gone) every
``SUB_ISSUE_RECHECK_SECONDS``. The double's ``delete_issue`` follows Forgejo's ``DeleteIssue``.
"""

from __future__ import annotations

import pytest

from reconciler import sidecar_runs
from reconciler.local_cluster import PROJECT_REPO
from tests.conftest import Harness

pytestmark = pytest.mark.timeout(180)


def test_a_deleted_sub_issue_stops_blocking_verify(cluster, tmp_path, monkeypatch):
    h = Harness(cluster, tmp_path, sidecars=True, interval=0.05)
    try:
        forge = cluster.forge
        parent = forge.add_issue(PROJECT_REPO, title="fixed soon", labels=["bug-report", "in-progress"])
        forge.add_issue(PROJECT_REPO, title="part 1", body=f"Decomposed from #{parent}", state="closed")
        stray = forge.add_issue(PROJECT_REPO, title="part 2", body=f"Decomposed from #{parent}", state="open")
        h.until_idle()
        assert [r.kind for r in h.store.runs() if r.issue == parent] == []  # #stray is open: no verify

        forge.delete_issue(PROJECT_REPO, stray)
        monkeypatch.setattr(sidecar_runs, "SUB_ISSUE_RECHECK_SECONDS", 0)
        h.reconciler._last_sidecar_scan = float("-inf")
        h.until_idle()
        assert [r.kind for r in h.store.runs() if r.issue == parent] == ["verify"]
    finally:
        h.close()
