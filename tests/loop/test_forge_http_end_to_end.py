"""Acceptance (#10): the ops repo over the forge's git smart HTTP, with the forge token, leaking nothing.

The Forgejo double serves ``factory/ops`` (private) through real ``git http-backend``
(``doubles/forge_git.py``, traced to Forgejo's ``routers/web/repo/githttp.go``);
``OPS_REPO_REMOTE`` is unset, so the reconciler derives ``${FORGE_URL}/factory/ops.git``
and git authenticates through the askpass helper with the token from ``FORGE_TOKEN_FILE``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from reconciler.app import build_context
from reconciler.local_cluster import OPS_REPO, LocalCluster
from reconciler.loop import Reconciler
from states.machine import State
from store.runs import RunStore

pytestmark = pytest.mark.timeout(300)


class _ArgvWatch:
    """Samples every process's argv (``/proc/*/cmdline``) while the reconciler runs."""

    def __init__(self, needles: list[str]) -> None:
        self.needles = needles
        self.hits: list[str] = []
        self.seen_git = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_ArgvWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) == me:
                    continue
                try:
                    argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode("utf-8", "replace")
                except OSError:
                    continue
                if "git" in argv:
                    self.seen_git += 1
                for needle in self.needles:
                    if needle and needle in argv:
                        self.hits.append(argv.replace("\0", " "))
            time.sleep(0.005)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _until_idle(reconciler: Reconciler, store: RunStore, timeout: float = 90.0) -> None:
    ok = reconciler.serve(threading.Event(), until_idle=True, timeout=timeout)
    assert ok, [(r.id, r.state, r.waiting) for r in store.active()]


def _basic_passwords(cluster: LocalCluster, service: str) -> list[str]:
    """The Basic-auth passwords git sent to the double for ``service`` (what reached the wire)."""
    out = []
    for call in cluster.forge.calls:
        if call.path.endswith(service) or call.query.get("service") == [service]:
            header = call.headers.get("authorization", "")
            if header.lower().startswith("basic "):
                out.append(base64.b64decode(header.split()[1]).decode().partition(":")[2])
    return out


def test_sample_actions_reported_over_smart_http_and_the_token_leaks_nowhere(tmp_path):
    cluster = LocalCluster(tmp_path / "factory").start()
    handler = _Lines()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        token_file = tmp_path / "secrets" / "forge-token"
        token_file.parent.mkdir()
        first = cluster.forge.new_token("reconciler", scopes=["write:repository", "read:user", "write:issue"])
        token_file.write_text(first + "\n")
        base = cluster.settings(db=tmp_path / "state" / "r.db", ops_root=tmp_path / "ops")
        from dataclasses import replace

        settings = replace(base, forge=replace(base.forge, token=None, token_file=token_file))
        assert settings.ops.remote is None and settings.ops_remote == cluster.http_remote

        samples = cluster.sample_actions()
        for action_id, toml in samples.items():
            cluster.merge_action(action_id, toml)

        store = RunStore(settings.store.db, time.time)
        reconciler = Reconciler(build_context(settings, store))
        try:
            with _ArgvWatch([first]) as watch:
                _until_idle(reconciler, store)
                for action_id in samples:
                    assert cluster.remote_file(f"vault/actions/{action_id}.result.json") is not None, action_id
                assert set(_basic_passwords(cluster, "git-receive-pack")) == {first}

                # Rotate: a new token in the file, the old one revoked; the next push must use the new one.
                second = cluster.forge.new_token("reconciler", scopes=["write:repository", "read:user", "write:issue"])
                watch.needles.append(second)
                token_file.write_text(second + "\n")
                cluster.forge.revoke_token(first)
                before = len(cluster.forge.calls)
                cluster.merge_action("after-rotation", samples[next(iter(samples))].replace(
                    next(iter(samples)).encode(), b"after-rotation"))
                _until_idle(reconciler, store)
                assert cluster.remote_file("vault/actions/after-rotation.result.json") is not None
                pushed_with = [
                    base64.b64decode(c.headers["authorization"].split()[1]).decode().partition(":")[2]
                    for c in cluster.forge.calls[before:]
                    if c.path.endswith("git-receive-pack") and "authorization" in c.headers
                ]
                assert pushed_with and set(pushed_with) == {second}
        finally:
            reconciler.close()
        runs = store.runs()
        assert {r.action_id for r in runs} >= set(samples) | {"after-rotation"}
        assert all(State(r.state) == State.REPORTED for r in runs)
        store.close()

        secrets = [first, second]
        assert watch.seen_git > 0, "the argv sampler saw no git process: it proves nothing"
        assert watch.hits == [], watch.hits
        for path in (tmp_path / "ops").rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for s in secrets:
                    assert s.encode() not in data, f"token in {path}"
        assert (tmp_path / "ops" / "config").exists() or (tmp_path / "ops" / ".git" / "config").exists()
        for line in handler.lines:
            for s in secrets:
                assert s not in line, f"token in log line {line!r}"
        assert handler.lines, "no log line captured: the log check proves nothing"
        for action_id in list(samples) + ["after-rotation"]:
            raw = cluster.remote_file(f"vault/actions/{action_id}.result.json") or b""
            assert json.loads(raw)["id"] == action_id
            for s in secrets:
                assert s.encode() not in raw
        db = sqlite3.connect(settings.store.db)
        dump = "\n".join(db.iterdump())
        db.close()
        for s in secrets:
            assert s not in dump
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        cluster.stop()


def test_an_unscoped_token_names_the_missing_permission_and_loses_nothing(tmp_path):
    """A token that can read but not push: results wait (collected, with the reason naming
    write:repository) and are pushed once a token with the scope is configured."""
    cluster = LocalCluster(tmp_path / "factory").start()
    try:
        read_only = cluster.forge.new_token("reconciler", scopes=["read:repository", "read:user", "read:issue"])
        token_file = tmp_path / "forge-token"
        token_file.write_text(read_only)
        from dataclasses import replace

        base = cluster.settings(db=tmp_path / "state" / "r.db", ops_root=tmp_path / "ops")
        settings = replace(base, forge=replace(base.forge, token=None, token_file=token_file))
        action_id, toml = next(iter(cluster.sample_actions().items()))
        cluster.merge_action(action_id, toml)
        store = RunStore(settings.store.db, time.time)
        reconciler = Reconciler(build_context(settings, store))
        try:
            deadline = time.monotonic() + 60
            waiting = ""
            while time.monotonic() < deadline:
                reconciler.run_pass()
                run = next((r for r in store.runs() if r.action_id == action_id), None)
                if run is not None and run.waiting and "push" in run.waiting:
                    waiting = run.waiting
                    break
                time.sleep(0.2)
            assert "write:repository" in waiting, waiting
            assert read_only not in waiting
            assert State(run.state) == State.COLLECTED
            assert cluster.remote_file(f"vault/actions/{action_id}.result.json") is None

            token_file.write_text(cluster.forge.new_token("reconciler", scopes=["write:repository", "read:user", "write:issue"]))
            _until_idle(reconciler, store)
            assert cluster.remote_file(f"vault/actions/{action_id}.result.json") is not None
        finally:
            reconciler.close()
            store.close()
    finally:
        cluster.stop()


def test_a_file_remote_still_works(tmp_path):
    """``OPS_REPO_REMOTE=file://...`` (the forge's repository reached directly): reported, no askpass."""
    cluster = LocalCluster(tmp_path / "factory", ops_transport="file").start()
    try:
        settings = cluster.settings(db=tmp_path / "state" / "r.db", ops_root=tmp_path / "ops")
        assert settings.ops.remote == cluster.file_remote
        action_id, toml = next(iter(cluster.sample_actions().items()))
        cluster.merge_action(action_id, toml)
        store = RunStore(settings.store.db, time.time)
        ctx = build_context(settings, store)
        reconciler = Reconciler(ctx)
        try:
            _until_idle(reconciler, store)
        finally:
            reconciler.close()
            store.close()
        assert cluster.remote_file(f"vault/actions/{action_id}.result.json") is not None
        assert not any(c.path.endswith(("info/refs", "git-receive-pack")) for c in cluster.forge.calls)
    finally:
        cluster.stop()


def test_ls_remote_wakeups_over_https_are_at_most_one_per_interval(tmp_path):
    """Idle service, ops remote over smart HTTP, interval 2 s: for 6 s the forge sees one fetch per
    interval and no ls-remote poll on top (a file:// remote keeps its 1 s poll)."""
    cluster = LocalCluster(tmp_path / "factory").start()
    try:
        settings = cluster.settings(db=tmp_path / "state" / "r.db", ops_root=tmp_path / "ops", interval=2.0)
        store = RunStore(settings.store.db, time.time)
        reconciler = Reconciler(build_context(settings, store))
        assert reconciler.ctx.ops.remote_is_local is False
        stop = threading.Event()
        server = threading.Thread(target=reconciler.serve, args=(stop,), daemon=True)
        try:
            server.start()
            time.sleep(2.0)  # settle: clone, first pass
            before = len(cluster.forge.calls_to("GET", r"/factory/ops(\.git)?/info/refs"))
            time.sleep(6.0)
            after = len(cluster.forge.calls_to("GET", r"/factory/ops(\.git)?/info/refs"))
        finally:
            stop.set()
            reconciler.wake()
            server.join(30)
            reconciler.close()
            store.close()
        advertisements = after - before
        assert advertisements >= 1, "no fetch at all: the test measures nothing"
        # No ls-remote poll over HTTPS; the loop's fetch, once per 2 s interval (+1 for timing), each one
        # GET answered 401 and the same GET with the token.
        assert advertisements <= 2 * (6 // 2 + 1), advertisements
    finally:
        cluster.stop()
