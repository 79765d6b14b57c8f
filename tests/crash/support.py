"""Helpers for the crash tests: the reconciler as a killable subprocess, and the three checks.

The reconciler runs as ``python -m reconciler run`` in its own session, against
a :class:`~reconciler.local_cluster.LocalCluster` living in the test process
(so the doubles, and the runner processes the Nomad double starts, survive the
kill). What it did is judged only by the state of the world afterwards:

* **ran once** - every formula written by :func:`install_marker_formula`
  appends one line per start to a marker file; no action may have two;
* **reported once** - ``git log`` of the bare ops repo shows exactly one commit
  touching each action's result file;
* **no token left alive** - no live Vault token minted for a finished run,
  except the *unreachable* ones (see :func:`token_audit`).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import requests

from reconciler.local_cluster import LocalCluster

RUNNER_PARENT = "vault-runner"
NAMESPACE = "runners"
CLAIM_PREFIX = "reconciler/runs/"
LEADER_PATH = "reconciler/leader"


# --------------------------------------------------------------------------- actions and formulas
def action_toml(action_id: str, formula: str, secrets: Iterable[str] = (), **extra: Any) -> str:
    """A valid action file (the gate still needs an approved pull request)."""
    lines = [
        f'id = "{action_id}"',
        f'formula = "{formula}"',
        'context = "crash test"',
        "secrets = [" + ", ".join(f'"{s}"' for s in secrets) + "]",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@dataclass
class MarkerFormula:
    """A shell formula that records each start in ``marker`` and sleeps a per-action duration."""

    name: str
    marker: Path
    durations: Path

    def set_duration(self, action_id: str, seconds: float) -> None:
        (self.durations / action_id).write_text(f"{seconds:.2f}\n")

    def starts(self) -> Counter[str]:
        """How many times the formula started, by action id."""
        if not self.marker.exists():
            return Counter()
        return Counter(line.split()[0] for line in self.marker.read_text().splitlines() if line.strip())

    def finished(self) -> Counter[str]:
        done = self.marker.with_suffix(".done")
        if not done.exists():
            return Counter()
        return Counter(line.split()[0] for line in done.read_text().splitlines() if line.strip())


def install_marker_formula(cluster: LocalCluster, name: str, default_seconds: float = 1.0) -> MarkerFormula:
    """Write ``formulas/<name>.sh``: one marker line per start, then sleep, then one ``.done`` line."""
    base = cluster.workdir / f"formula-{name}"
    base.mkdir(parents=True, exist_ok=True)
    marker = base / "starts.log"
    durations = base / "durations"
    durations.mkdir(exist_ok=True)
    script = f"""#!/usr/bin/env bash
echo "$ACTION_ID $RUN_ID $ATTEMPT $$" >> "{marker}"
d=$(cat "{durations}/$ACTION_ID" 2>/dev/null || echo {default_seconds})
echo "formula {name} started for $ACTION_ID (attempt $ATTEMPT), sleeping $d s"
sleep "$d"
echo "$ACTION_ID $RUN_ID $ATTEMPT $$" >> "{marker.with_suffix('.done')}"
echo "formula {name} done for $ACTION_ID"
"""
    (cluster.factory_root / "formulas" / f"{name}.sh").write_text(script)
    return MarkerFormula(name, marker, durations)


def merge_actions(cluster: LocalCluster, actions: dict[str, str], title: str = "crash-test actions") -> None:
    """Merge several action files through one approved pull request (retrying a merge that lost a race)."""
    files = {f"vault/actions/{aid}.toml": text.encode() for aid, text in actions.items()}
    for attempt in range(5):
        try:
            cluster.merge_files(files, title=title)
            return
        except Exception:  # the base moved under the forge double's merge (a result push): try again
            if attempt == 4:
                raise
            time.sleep(0.2)


def remove_action(cluster: LocalCluster, action_id: str) -> None:
    cluster.merge_files({f"vault/actions/{action_id}.toml": None}, title=f"drop {action_id}")


# --------------------------------------------------------------------------- the reconciler as a process
class Service:
    """One reconciler installation (its own database and clone) run as subprocesses."""

    def __init__(self, cluster: LocalCluster, workdir: Path, name: str = "r", **env: str) -> None:
        self.cluster = cluster
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db = self.workdir / "state" / "reconciler.db"
        self.ops_root = self.workdir / "ops"
        self.log = self.workdir / "reconciler.log"
        self.env = {
            **os.environ,
            **cluster.environment(),
            "RECONCILER_DB": str(self.db),
            "OPS_REPO_ROOT": str(self.ops_root),
            "RECONCILER_LOCK_TTL": "10",  # Nomad's minimum (nomad/structs/variables.go)
            "RECONCILER_LOCK_DELAY": "1",
            "RECONCILER_INTERVAL": "0.3",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    # -- lifecycle ------------------------------------------------------------------
    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Start ``reconciler -v run [args]`` in its own session; stderr goes to ``self.log``."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log.open("ab") as log:
            log.write(f"\n===== start {' '.join(args) or 'run'} at {time.time():.3f}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "-v", "run", *args],
                env=self.env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self.proc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Pull the plug: SIGKILL the reconciler's whole process group."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.kills += 1
        with self.log.open("ab") as log:
            log.write(f"\n===== SIGKILL at {time.time():.3f}\n".encode())

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def until_idle(self, timeout: float = 60.0) -> None:
        """``reconciler run --until-idle --timeout``; fails the test with the log tail if it does not finish."""
        self.start("--until-idle", "--timeout", str(timeout))
        try:
            code = self.proc.wait(timeout=timeout + 30)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            self.kill()
            code = -9
        assert code == 0, f"run --until-idle exited {code}; log tail:\n{self.log_tail()}"

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    # -- the store, read directly (cheap enough to poll) --------------------------
    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        if not self.db.exists():
            return []
        conn = sqlite3.connect(str(self.db), timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return list(conn.execute(sql, args))
        except sqlite3.OperationalError:  # schema not created yet
            return []
        finally:
            conn.close()

    def runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query("select * from runs")]

    def run_of(self, action_id: str) -> dict[str, Any] | None:
        rows = [r for r in self.runs() if r.get("action_id") == action_id]
        rows.sort(key=lambda r: r.get("created_at") or "")
        return rows[-1] if rows else None

    def journal(self, action_id: str) -> list[dict[str, Any]]:
        """The journal of the action's newest run, oldest entry first (what ``show --json`` lists as events)."""
        run = self.run_of(action_id)
        if run is None:
            return []
        return [dict(r) for r in self._query("select * from journal where run_id = ? order by id", (run["id"],))]

    def leadership(self) -> dict[str, Any] | None:
        rows = self._query("select value from kv where key = 'leadership'")
        return json.loads(rows[0]["value"]) if rows else None

    def is_leader(self) -> bool:
        info = self.leadership()
        return bool(info and info.get("role") == "leader" and info.get("identity", "").endswith(f":{self.pid}"))

    def recorded_accessors(self) -> set[str]:
        """Every token accessor this store ever recorded (run rows and journal details)."""
        return accessors_in_db(self.db)


def accessors_in_db(db: Path) -> set[str]:
    if not db.exists():
        return set()
    conn = sqlite3.connect(str(db), timeout=10)
    try:
        found: set[str] = set()
        try:
            for a, b in conn.execute("select token_accessor, wrapping_accessor from runs"):
                found.update(x for x in (a, b) if x)
            for (details,) in conn.execute("select details from journal"):
                found.update(_strings(json.loads(details or "{}")))
        except sqlite3.OperationalError:
            pass
        return found
    finally:
        conn.close()


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- git hooks on the bare ops repo
class PushGate:
    """A hook of the bare ops repo that, when armed, blocks one push of the reconciler.

    ``pre-receive`` blocks before the refs move (the push is not applied if killed);
    ``post-receive`` blocks after they moved (applied, the reply never reaches the
    reconciler). The hook writes its session id, so the test can kill the git
    processes too - the reconciler runs git in a session of its own.
    """

    def __init__(self, cluster: LocalCluster, hook: str) -> None:
        assert hook in ("pre-receive", "post-receive")
        self.dir = cluster.workdir / f"gate-{hook}"
        self.dir.mkdir(exist_ok=True)
        path = cluster.bare / "hooks" / hook
        path.write_text(
            f"""#!{sys.executable}
import os, sys, time
d = {str(self.dir)!r}
sys.stdin.read()
try:
    os.unlink(os.path.join(d, "armed"))
except FileNotFoundError:
    sys.exit(0)
with open(os.path.join(d, "arrived"), "w") as f:
    f.write(str(os.getsid(0)))
while not os.path.exists(os.path.join(d, "release")):
    time.sleep(0.05)
"""
        )
        path.chmod(0o755)

    def arm(self) -> None:
        for name in ("arrived", "release"):
            (self.dir / name).unlink(missing_ok=True)
        (self.dir / "armed").write_text("1")

    def wait_arrived(self, timeout: float) -> int:
        wait_for(lambda: (self.dir / "arrived").exists() and (self.dir / "arrived").read_text(), timeout, "a held push")
        return int((self.dir / "arrived").read_text())

    def kill_git(self) -> None:
        sid = int((self.dir / "arrived").read_text())
        try:
            os.killpg(sid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def release(self) -> None:
        (self.dir / "armed").unlink(missing_ok=True)
        (self.dir / "release").write_text("1")


# --------------------------------------------------------------------------- the checks
def result(cluster: LocalCluster, action_id: str) -> dict[str, Any] | None:
    raw = cluster.remote_file(f"vault/actions/{action_id}.result.json")
    return json.loads(raw) if raw else None


def result_commits(cluster: LocalCluster, action_id: str) -> int:
    return len(cluster.remote_log(f"vault/actions/{action_id}.result.json"))


def children_of(cluster: LocalCluster, action_id: str) -> list[dict[str, Any]]:
    return [j for j in cluster.nomad.children(RUNNER_PARENT) if (j.get("Meta") or {}).get("action_id") == action_id]


def claim_variables(cluster: LocalCluster) -> dict[str, dict[str, str]]:
    """The durable claims (Nomad variables ``reconciler/runs/*``), read over HTTP: path -> items."""
    base = cluster.nomad.address
    auth = {"X-Nomad-Token": cluster.nomad_token} if cluster.nomad_token else {}
    listing = requests.get(f"{base}/v1/vars", params={"prefix": CLAIM_PREFIX, "namespace": NAMESPACE}, headers=auth, timeout=10).json()
    out = {}
    for stub in listing or []:
        var = requests.get(f"{base}/v1/var/{stub['Path']}", params={"namespace": NAMESPACE}, headers=auth, timeout=10).json()
        out[stub["Path"]] = var.get("Items") or {}
    return out


def dispatched_accessors(cluster: LocalCluster) -> set[str]:
    """Accessors the reconciler ever sent in a dispatch's meta (children may be garbage-collected since)."""
    found = set()
    for call in cluster.nomad.calls_to("POST", rf"/v1/job/{RUNNER_PARENT}/dispatch"):
        try:
            found.add(((call.json() or {}).get("Meta") or {}).get("wrapped_accessor", ""))
        except ValueError:
            pass
    return found - {""}


def runners_past_the_claim(cluster: LocalCluster, action_id: str) -> int:
    """Allocations of the action's children whose runner ended with any code but 90 (claim already taken)."""
    count = 0
    for child in children_of(cluster, action_id):
        for alloc in cluster.nomad.allocations_of(child["ID"]):
            for task in (alloc.get("TaskStates") or {}).values():
                codes = [ev.get("ExitCode") for ev in task.get("Events") or [] if ev.get("Type") == "Terminated"]
                if codes and codes[-1] != 90:
                    count += 1
    return count


@dataclass
class TokenAudit:
    """Live Vault tokens minted for the given actions.

    ``recorded``: the reconciler wrote the accessor somewhere durable (a store, a
    claim variable, a dispatch) - it could have revoked it, so a live one is a leak.
    ``unreachable``: minted, but the process died (or the reply was lost) before
    the accessor was written anywhere; its wrapping token lived only in that
    process's memory, so nobody can use it and it expires on its TTL.
    """

    recorded: list[dict[str, Any]] = field(default_factory=list)
    unreachable: list[dict[str, Any]] = field(default_factory=list)
    unreachable_unwrapped: list[dict[str, Any]] = field(default_factory=list)


def token_audit(cluster: LocalCluster, action_ids: Iterable[str], dbs: Iterable[Path]) -> TokenAudit:
    ids = set(action_ids)
    known: set[str] = set()
    for db in dbs:
        known |= accessors_in_db(db)
    for items in claim_variables(cluster).values():
        known.update(v for k, v in items.items() if k.endswith("accessor") and v)
    known |= dispatched_accessors(cluster)
    wraps = {w["wrapped_accessor"]: w for w in cluster.vault.wrapping_tokens() if w.get("wrapped_accessor")}
    audit = TokenAudit()
    for tok in cluster.vault.live_tokens():
        if (tok.get("meta") or {}).get("action_id") not in ids:
            continue
        if tok["accessor"] in known:
            audit.recorded.append(tok)
        else:
            audit.unreachable.append(tok)
            wrap = wraps.get(tok["accessor"])
            if wrap is not None and wrap.get("used"):
                audit.unreachable_unwrapped.append(tok)
    return audit


@dataclass
class Verdict:
    starts: Counter[str]
    commits: dict[str, int]
    outcomes: dict[str, str | None]
    tokens: TokenAudit

    def summary(self) -> str:
        return (
            f"outcomes {dict(Counter(self.outcomes.values()))}; "
            f"formula starts {sum(self.starts[a] for a in self.outcomes)} for {len(self.outcomes)} actions; "
            f"live tokens recorded {len(self.tokens.recorded)}, unreachable {len(self.tokens.unreachable)}"
        )


def verify(
    cluster: LocalCluster,
    formula: MarkerFormula,
    action_ids: Iterable[str],
    dbs: Iterable[Path],
    *,
    allowed_outcomes: tuple[str, ...] = ("success",),
) -> Verdict:
    """The three checks: ran at most once (exactly once when it succeeded), one result commit, no live token."""
    ids = list(action_ids)
    starts = formula.starts()
    outcomes: dict[str, str | None] = {}
    commits: dict[str, int] = {}
    problems: list[str] = []
    for aid in ids:
        res = result(cluster, aid)
        outcomes[aid] = res["outcome"] if res else None
        commits[aid] = result_commits(cluster, aid)
        if res is None:
            problems.append(f"{aid}: no result on main")
            continue
        if res["outcome"] not in allowed_outcomes:
            problems.append(f"{aid}: outcome {res['outcome']!r} ({res.get('reason')})")
        if starts[aid] > 1:
            problems.append(f"{aid}: the formula started {starts[aid]} times")
        if res["outcome"] == "success" and starts[aid] != 1:
            problems.append(f"{aid}: reported success but the formula started {starts[aid]} times")
        if commits[aid] != 1:
            problems.append(f"{aid}: {commits[aid]} commits touch its result file")
        past = runners_past_the_claim(cluster, aid)  # children garbage-collected since are not counted
        if past > 1:
            problems.append(f"{aid}: {past} runner allocations got past the claim")
    tokens = token_audit(cluster, ids, dbs)
    for tok in tokens.recorded:
        problems.append(f"live token {tok['accessor']} of {tok['meta']} was recorded, so it should have been revoked")
    for tok in tokens.unreachable_unwrapped:
        problems.append(f"unrecorded token {tok['accessor']} of {tok['meta']} was unwrapped by someone")
    verdict = Verdict(starts, commits, outcomes, tokens)
    assert not problems, "\n".join(problems) + "\n" + verdict.summary()
    return verdict
