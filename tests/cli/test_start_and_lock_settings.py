"""`reconciler run` at start: lock settings Nomad would refuse are a usage error, and an unreachable
Nomad is said as such (address, error), never as "another reconciler leads"."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .test_cli import cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    bare = tmp_path / "ops.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    return {
        "RECONCILER_DB": str(tmp_path / "state" / "r.db"),
        "OPS_REPO_ROOT": str(tmp_path / "ops"),
        "OPS_REPO_REMOTE": bare.as_uri(),
        **extra,
    }


def test_lock_ttl_outside_nomads_bounds_is_a_usage_error(tmp_path: Path) -> None:
    """nomad/structs/variables.go: a lock TTL outside 10 s - 24 h is refused on every acquire."""
    for ttl in ("5", "86401"):
        out = cli("run", "--once", env=_env(tmp_path / ttl, RECONCILER_LOCK_TTL=ttl))
        assert out.returncode == 2, out.stderr
        assert "RECONCILER_LOCK_TTL" in out.stderr and "between 10 seconds and 24 hours" in out.stderr
    out = cli("status", env={"RECONCILER_DB": str(tmp_path / "s.db"), "RECONCILER_LOCK_TTL": "10"})
    assert out.returncode == 0, out.stderr


def test_unreachable_nomad_is_named_at_start_and_never_read_as_another_leader(tmp_path: Path) -> None:
    addr = f"http://127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOMAD_", "VAULT_", "FORGE_", "RECONCILER_"))}
    env.update(_env(tmp_path, NOMAD_ADDR=addr, VAULT_ADDR=f"http://127.0.0.1:{_free_port()}"))
    log = tmp_path / "run.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "reconciler", "run"], stderr=err, stdout=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and "nomad not reachable" not in log.read_text():
                time.sleep(0.1)
            time.sleep(1.5)  # a retry or two
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
    text = log.read_text()
    assert code == 0, text
    assert f"nomad not reachable at {addr}" in text and " error " in text, text  # logged at ERROR
    assert "set NOMAD_ADDR" in text, "the fix is named"
    assert "another reconciler" not in text and "standby" not in text, text


def test_once_with_unreachable_nomad_fails_naming_it(tmp_path: Path) -> None:
    addr = f"http://127.0.0.1:{_free_port()}"
    out = cli("run", "--once", env=_env(tmp_path, NOMAD_ADDR=addr, VAULT_ADDR=f"http://127.0.0.1:{_free_port()}"))
    assert out.returncode == 1
    assert f"nomad not reachable at {addr}" in out.stderr and "another reconciler" not in out.stderr


def test_unreachable_ops_remote_is_named_at_start(tmp_path: Path) -> None:
    """The ops remote is checked through the reconciler's own git client before the loop starts."""
    from reconciler.preflight import failures
    from reconciler.clients.errors import TransientError

    class Ops:
        def ensure_ready(self) -> None:
            raise TransientError("git clone file:///nowhere failed: repository does not exist", system="git")

    from reconciler.settings import OpsRepoSettings, Settings

    settings = Settings(ops=OpsRepoSettings(root=tmp_path / "ops", remote="file:///nowhere"))
    checks = failures(settings, ops=Ops(), check_servers=False)
    assert [c.system for c in checks] == ["git"]
    assert "ops remote file:///nowhere not reachable" in checks[0].what and "OPS_REPO_REMOTE" in checks[0].fix
