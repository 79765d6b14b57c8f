"""The ops clone over the Forgejo double's smart HTTP: slow links, stalls, credentials in messages.

The double serves the repository through real ``git http-backend``
(``doubles/forge_git.py``, after Forgejo's ``routers/web/repo/githttp.go``);
``git_throttle_bytes_per_second`` makes the link slow.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import time

import pytest

from reconciler.clients.errors import PermanentError, TransientError
from reconciler.clients.git_env import GitAuth
from reconciler.clients.opsrepo import OpsRepo
from doubles.forge import ForgeDouble
from reconciler.settings import OpsRepoSettings

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def forge(tmp_path):
    f = ForgeDouble().start()
    f.add_user("reconciler")
    f.add_repo("factory/ops", tmp_path / "ops.git", private=True)
    f.add_collaborator("factory/ops", "reconciler", "write")
    # ~1.5 MB that does not compress: the transfer size is what the throttle acts on.
    f.commit_direct("factory/ops", author="reconciler", files={"blob.bin": os.urandom(1_500_000), "README": "x\n"}, message="big")
    yield f
    f.stop()


def ops(forge, tmp_path, token: str, **kw) -> OpsRepo:
    url = f"{forge.address}/factory/ops.git"
    return OpsRepo(OpsRepoSettings(root=tmp_path / "clone"), url, auth=GitAuth(url, forge.address, lambda: token), **kw)


def test_a_clone_slower_than_the_timeout_completes_while_data_flows(forge, tmp_path):
    """Time limits scale with progress: a 1.5 MB clone at 200 kB/s takes ~7 s, the timeout is 2 s of silence.
    (The issue's "longer than a minute" case, scaled down 30x so the suite stays fast.)"""
    forge.git_throttle_bytes_per_second = 200_000
    repo = ops(forge, tmp_path, forge.token_for("reconciler"), timeout=2.0)
    started = time.monotonic()
    try:
        repo.ensure_ready()
        elapsed = time.monotonic() - started
        assert elapsed > 3 * 2.0, f"the throttle did not slow the clone ({elapsed:.1f}s): the test proves nothing"
        assert repo.read(repo.head(), "README") == b"x\n"
    finally:
        repo.close()


def test_a_stalled_clone_is_cut_after_the_timeout_of_silence(forge, tmp_path):
    hold = forge.faults.hold(lambda r: r.path.endswith("git-upload-pack"))
    repo = ops(forge, tmp_path, forge.token_for("reconciler"), timeout=1.5)
    started = time.monotonic()
    try:
        with pytest.raises(TransientError, match="without receiving data"):
            repo.ensure_ready()
        assert hold.arrived.is_set()
        assert time.monotonic() - started < 15
    finally:
        forge.faults.release()
        repo.close()


def test_a_revoked_token_is_named_and_never_shown(forge, tmp_path):
    token = forge.new_token("reconciler")
    forge.revoke_token(token)
    repo = ops(forge, tmp_path, token, timeout=10)
    try:
        with pytest.raises(PermanentError) as err:
            repo.ensure_ready()
        assert "did not accept the token" in str(err.value) and token not in str(err.value)
    finally:
        repo.close()


def test_a_token_without_read_scope_names_read_repository(forge, tmp_path):
    token = forge.new_token("reconciler", scopes=["write:issue"])
    repo = ops(forge, tmp_path, token, timeout=10)
    try:
        with pytest.raises(PermanentError, match="read:repository"):
            repo.ensure_ready()
    finally:
        repo.close()


def test_an_interrupted_first_clone_resumes_instead_of_starting_over(tmp_path):
    """The clone arrives head first, then ``clone_step`` commits per step; a failure after the
    first steps keeps them, and the next attempt asks only for the rest (its first request
    names the shallow boundary it already has)."""
    f = ForgeDouble().start()
    try:
        f.add_user("reconciler")
        f.add_repo("factory/ops", tmp_path / "ops.git", private=True)
        f.add_collaborator("factory/ops", "reconciler", "write")
        for n in range(12):
            f.commit_direct("factory/ops", author="reconciler", files={f"f{n}.bin": os.urandom(20_000)}, message=f"c{n}")
        posts = []

        def third_and_later(req):
            if not req.path.endswith("git-upload-pack") or req.method != "POST":
                return False
            posts.append(req)
            return len(posts) >= 3  # the head step (--depth=1: ls-refs and fetch POSTs) gets through, every deepen step fails

        f.faults.set_rate(1.0, kinds=("error",), match=third_and_later)
        token = f.token_for("reconciler")
        first = ops(f, tmp_path, token, timeout=10, clone_step=4)
        with pytest.raises(TransientError):
            first.ensure_ready()
        first.close()
        staging = tmp_path / ".clone.cloning"
        assert (staging / "shallow").exists(), "the finished steps were not kept"
        kept = subprocess.run(["git", "--git-dir", str(staging), "rev-list", "--count", "refs/remotes/origin/main"],
                              capture_output=True, text=True).stdout.strip()
        assert 1 <= int(kept) < 12  # some history kept, not all of it

        f.faults.clear()
        seen = len(f.calls)
        again = ops(f, tmp_path, token, timeout=10, clone_step=4)
        try:
            again.ensure_ready()
            assert again.read(again.head(), "f0.bin") is not None  # the full history arrived
            assert subprocess.run(["git", "--git-dir", str(tmp_path / "clone"), "rev-parse", "--is-shallow-repository"],
                                  capture_output=True, text=True).stdout.strip() == "false"
        finally:
            again.close()
        resumed = [c for c in f.calls[seen:] if c.method == "POST" and c.path.endswith("git-upload-pack")]
        bodies = [gzip.decompress(c.body) if c.headers.get("content-encoding") == "gzip" else c.body for c in resumed]
        fetches = [b for b in bodies if b"command=fetch" in b]
        assert fetches and b"shallow " in fetches[0], "the second attempt did not build on what the first one fetched"
        assert b"deepen-relative" in fetches[0] and b"deepen 4" in fetches[0]
        assert not staging.exists()
    finally:
        f.stop()


@pytest.mark.skipif(not os.environ.get("RECONCILER_SLOW_TESTS"), reason="takes over a minute: set RECONCILER_SLOW_TESTS=1")
@pytest.mark.timeout(400)
def test_a_clone_that_transfers_for_more_than_a_minute_completes_under_the_default_timeout(forge, tmp_path):
    """The issue's case as it is: the default 60 s limit, a transfer of ~75 s (1.5 MB at 20 kB/s)."""
    forge.git_throttle_bytes_per_second = 20_000
    repo = ops(forge, tmp_path, forge.token_for("reconciler"))  # timeout: the default, 60 s
    started = time.monotonic()
    try:
        repo.ensure_ready()
        elapsed = time.monotonic() - started
        print(f"throttled clone: {elapsed:.1f}s")
        assert elapsed > 60.0
        assert repo.read(repo.head(), "README") == b"x\n"
    finally:
        repo.close()
