"""``reconciler demo``: the whole system on one machine, with nothing but Python and git.

Starts the Nomad, Vault and Forgejo doubles, a bare ops repo served by the Forgejo double
over git smart HTTP (reached as an operator would: FORGE_URL + FORGE_OPS_REPO), merges the
sample actions through pull requests an admin approved, and runs the real
reconciler until every run is reported, printing progress as runs advance.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from reconciler.app import build_context
from reconciler.loop import Reconciler
from states.machine import ACTIVE, State
from store.runs import RunStore


def run_demo(workdir: Path | None, echo: Callable[[str], None], timeout: float = 180.0, keep: bool = False) -> int:
    from reconciler.local_cluster import LocalCluster

    base = workdir or Path(tempfile.mkdtemp(prefix="reconciler-demo-"))
    echo(f"demo: working in {base}")
    cluster = LocalCluster(base).start()
    try:
        echo(f"demo: Nomad double {cluster.nomad.address}, Vault double {cluster.vault.address}, Forgejo double {cluster.forge.address}")
        echo(f"demo: ops repo remote {cluster.http_remote} (git smart HTTP on the Forgejo double, the forge token as password; OPS_REPO_REMOTE unset)")
        for action_id, data in cluster.sample_actions().items():
            number, sha = cluster.merge_action(action_id, data)
            echo(f"demo: merged pull request #{number} adding vault/actions/{action_id}.toml (approved by admin) at {sha[:10]}")
        settings = cluster.settings()
        store = RunStore(settings.store.db, time.time)
        reconciler = Reconciler(build_context(settings, store))
        stop = threading.Event()
        seen: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        try:
            while time.monotonic() < deadline:
                reconciler.run_pass()
                for run in store.runs():
                    state = State(run.state).value
                    if seen.get(run.id) != state:
                        seen[run.id] = state
                        extra = f" ({run.waiting})" if run.waiting and state not in ("reported",) else ""
                        echo(f"  {time.monotonic() - started:6.1f}s  {run.action_id or run.id:28s} -> {state}{extra}")
                if not store.runs(ACTIVE):
                    break
                stop.wait(0.3)
        finally:
            reconciler.close()
        active = store.runs(ACTIVE)
        echo("")
        echo("demo: results on the ops remote's main:")
        for action_id in cluster.sample_actions():
            raw = cluster.remote_file(f"vault/actions/{action_id}.result.json")
            if raw is None:
                echo(f"  {action_id}: no result")
                continue
            doc = json.loads(raw)
            echo(
                f"  {action_id}: outcome {doc['outcome']}, exit {doc['exit_code']}, pull request #{doc.get('pull_request')}, "
                f"approver {doc.get('approver')}, job {doc.get('nomad_job_id')}"
            )
        echo("")
        echo(f"demo: store {settings.store.db}; try: RECONCILER_DB={settings.store.db} reconciler status --all")
        if active:
            echo(f"demo: {len(active)} run(s) still active after {timeout} s")
            return 1
        return 0
    finally:
        cluster.stop()
