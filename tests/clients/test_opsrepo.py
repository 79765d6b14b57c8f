"""OpsRepo against real git: a bare remote reached by ``file://``, real clones, real push races.

Conformance with CONTRACTS.md "Git": a bare repository on local disk is a real remote;
a rejected non-fast-forward push is retried on the new head; a result already upstream
means another writer won; a killed process's ``index.lock`` or half-done rebase is cleaned.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from reconciler.clients.errors import NotFoundError, PermanentError, TransientError
from reconciler.clients.opsrepo import OpsRepo, PushOutcome, redact
from reconciler.settings import OpsRepoSettings

IDENTITY = {
    "GIT_AUTHOR_NAME": "Human",
    "GIT_AUTHOR_EMAIL": "human@example.org",
    "GIT_COMMITTER_NAME": "Human",
    "GIT_COMMITTER_EMAIL": "human@example.org",
}
SEED = {
    "README.md": b"ops repo\n",
    "vault/policy.toml": b"[tiers]\nrelease = \"high\"\n",
    "vault/actions/a.toml": b'id = "a"\nformula = "release"\n',
    "vault/actions/b.toml": b'id = "b"\nformula = "deploy"\n',
    "vault/actions/nested/c.toml": b"not directly in the dir\n",
}


def git(cwd: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> str:
    """Run git as a human would (test side), return stdout."""
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith("GIT_")
    } | IDENTITY | (env or {})
    proc = subprocess.run(
        ["git", "-C", str(cwd), *args], input=input, capture_output=True, env=full_env, timeout=30, check=False
    )
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr.decode()}"
    return proc.stdout.decode()


class Clone:
    """A human's working clone of the remote, used to make commits and race the reconciler."""

    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        git(path.parent, "clone", "-q", url, str(path))

    def write(self, files: dict[str, bytes], message: str) -> str:
        for name, content in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "-m", message)
        return self.head()

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD").strip()

    def push(self) -> None:
        git(self.path, "push", "-q", "origin", "HEAD:main")

    def pull(self) -> None:
        git(self.path, "pull", "-q", "--ff-only", "origin", "main")


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A bare remote seeded with one commit on ``main``."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "init", "-q", "-b", "main", str(seed))
    for name, content in SEED.items():
        (seed / name).parent.mkdir(parents=True, exist_ok=True)
        (seed / name).write_bytes(content)
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "seed")
    git(seed, "push", "-q", str(bare), "main")
    return bare


@pytest.fixture
def url(remote: Path) -> str:
    return f"file://{remote}"


@pytest.fixture
def other(tmp_path: Path, url: str) -> Clone:
    return Clone(tmp_path / "other", url)


@pytest.fixture
def make_repo(tmp_path: Path, url: str) -> Iterator:
    opened: list[OpsRepo] = []

    def make(name: str = "ops", remote: str | None = None, **kwargs) -> OpsRepo:
        settings = OpsRepoSettings(
            root=tmp_path / name, remote=remote or url, author_name="reconciler", author_email="rec@example.org"
        )
        kwargs.setdefault("sleep", lambda s: None)
        repo = OpsRepo(settings, remote or url, **kwargs)
        opened.append(repo)
        return repo

    yield make
    for repo in opened:
        repo.close()


def remote_head(remote: Path) -> str:
    return git(remote, "rev-parse", "refs/heads/main").strip()


def remote_file(remote: Path, path: str, rev: str = "main") -> bytes:
    return subprocess.run(
        ["git", "-C", str(remote), "show", f"{rev}:{path}"], capture_output=True, check=True
    ).stdout


# ------------------------------------------------------------------ setup and recovery


def test_clones_a_bare_cache_on_first_use(make_repo, remote: Path, tmp_path: Path) -> None:
    repo = make_repo()
    assert not (tmp_path / "ops").exists()
    files = repo.list_dir(repo.fetch())
    assert set(files) == {"vault/actions/a.toml", "vault/actions/b.toml"}
    assert git(tmp_path / "ops", "rev-parse", "--is-bare-repository").strip() == "true"
    assert repo.head() == remote_head(remote)
    assert not list(tmp_path.glob(".ops.cloning-*"))


def test_clone_failure_names_the_remote_and_is_permanent(make_repo, tmp_path: Path) -> None:
    missing = f"file://{tmp_path}/nope.git"
    repo = make_repo(remote=missing)
    with pytest.raises(PermanentError) as err:
        repo.ensure_ready()
    assert f"cannot clone ops repo from {missing}" in str(err.value)
    assert "check OPS_REPO_REMOTE" in str(err.value)
    assert err.value.system == "git"
    assert not (tmp_path / "ops").exists()
    assert not list(tmp_path.glob(".ops.cloning-*"))


def test_unreachable_remote_is_transient_and_credentials_never_appear(make_repo) -> None:
    repo = make_repo(remote="http://robot:s3cr3t-token@127.0.0.1:1/ops.git")
    with pytest.raises(TransientError) as err:
        repo.ensure_ready()
    assert "s3cr3t-token" not in str(err.value)
    assert "robot" not in str(err.value)
    assert "http://127.0.0.1:1/ops.git" in str(err.value)
    assert redact("https://u:p@host/x and ssh://git@h/y") == "https://host/x and ssh://h/y"


def test_a_remote_that_never_answers_times_out_as_transient(make_repo) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts connections; nobody ever answers
    try:
        port = silent.getsockname()[1]
        repo = make_repo(remote=f"http://127.0.0.1:{port}/ops.git", timeout=1.0)
        started = time.monotonic()
        with pytest.raises(TransientError, match="timed out after 1s"):
            repo.ensure_ready()
        assert time.monotonic() - started < 5
    finally:
        silent.close()


def test_root_that_is_not_a_repository_is_refused(make_repo, tmp_path: Path) -> None:
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "stray.txt").write_text("x")
    with pytest.raises(PermanentError, match="not a git repository"):
        make_repo().ensure_ready()


def test_stale_locks_left_by_a_killed_process_are_removed(make_repo, tmp_path: Path) -> None:
    first = make_repo()
    first.fetch()
    first.close()  # "killed": no instance alive any more
    git_dir = tmp_path / "ops"
    fresh_locks = [
        git_dir / "index.lock",
        git_dir / "HEAD.lock",
        git_dir / "refs" / "remotes" / "origin" / "main.lock",
    ]
    for lock in fresh_locks:
        lock.write_text("")
    (git_dir / "reconciler-tmp" / "push-leftover").mkdir()
    repo = make_repo()
    repo.ensure_ready()
    assert [lock for lock in fresh_locks if lock.exists()] == []
    assert not (git_dir / "reconciler-tmp" / "push-leftover").exists()
    assert repo.fetch() == repo.head()  # the ref lock no longer blocks fetching
    assert repo.push_files({"vault/actions/a.result.json": b"{}"}, "result").commit


def test_only_old_locks_are_removed_while_another_instance_is_alive(make_repo, tmp_path: Path) -> None:
    alive = make_repo(stale_lock_seconds=5)
    alive.fetch()  # holds the shared process lock
    git_dir = tmp_path / "ops"
    fresh = git_dir / "refs" / "remotes" / "origin" / "main.lock"
    old = git_dir / "index.lock"
    fresh.write_text("")
    old.write_text("")
    past = time.time() - 60
    os.utime(old, (past, past))
    make_repo(stale_lock_seconds=5).ensure_ready()
    assert fresh.exists(), "a neighbour's fresh lock must survive"
    assert not old.exists()
    fresh.unlink()


def test_half_done_rebase_in_a_legacy_working_clone_is_cleaned(
    make_repo, tmp_path: Path, url: str, other: Clone, remote: Path
) -> None:
    legacy = Clone(tmp_path / "ops", url)  # the old dispatcher's working clone at OPS_REPO_ROOT
    other.write({"README.md": b"upstream\n"}, "upstream edit")
    other.push()
    legacy.write({"README.md": b"local\n"}, "conflicting local edit")
    git(legacy.path, "fetch", "-q", "origin")
    rebase = subprocess.run(
        ["git", "-C", str(legacy.path), "rebase", "origin/main"],
        capture_output=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | IDENTITY,
    )
    assert rebase.returncode != 0 and (legacy.path / ".git" / "rebase-merge").is_dir()

    repo = make_repo()
    repo.ensure_ready()

    assert not (legacy.path / ".git" / "rebase-merge").exists()
    assert git(legacy.path, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    head = repo.fetch()
    assert head == remote_head(remote)
    assert repo.read(head, "README.md") == b"upstream\n"
    outcome = repo.push_files({"vault/actions/a.result.json": b'{"id": "a"}'}, "result for a")
    assert remote_file(remote, "vault/actions/a.result.json") == b'{"id": "a"}'
    assert outcome.commit == remote_head(remote)


def test_changed_remote_url_is_fixed(make_repo, tmp_path: Path, url: str) -> None:
    make_repo().fetch()
    git(tmp_path / "ops", "remote", "set-url", "origin", "file:///somewhere/else.git")
    repo = make_repo()
    repo.ensure_ready()
    assert git(tmp_path / "ops", "config", "remote.origin.url").strip() == url
    assert repo.fetch()


# ------------------------------------------------------------------ reading


def test_list_read_and_changed_paths(make_repo, other: Clone) -> None:
    repo = make_repo()
    old = repo.fetch()
    listing = repo.list_dir(old)
    assert listing["vault/actions/a.toml"] == git(other.path, "rev-parse", "HEAD:vault/actions/a.toml").strip()
    policy_blob = git(other.path, "rev-parse", "HEAD:vault/policy.toml").strip()
    assert repo.list_dir(old, "vault") == {"vault/policy.toml": policy_blob}  # files only, not subdirs
    assert repo.list_dir(old, "vault/") == repo.list_dir(old, "vault")
    assert repo.list_dir(old, "nowhere") == {}
    assert repo.read(old, "vault/actions/a.toml") == SEED["vault/actions/a.toml"]
    assert repo.read(old, "vault/actions/missing.toml") is None
    assert repo.read(old, "vault/actions") is None  # a directory is not a file

    other.write({"vault/actions/new file.toml": b"x", "vault/actions/a.toml": b"changed"}, "two changes")
    other.push()
    assert repo.head() == old  # not fetched yet
    new = repo.fetch()
    assert new == other.head() and repo.head() == new
    assert repo.changed_paths(old, new) == ["vault/actions/a.toml", "vault/actions/new file.toml"]
    assert repo.changed_paths(new, new) == []
    assert repo.read(new, "vault/actions/new file.toml") == b"x"
    assert repo.read(old, "vault/actions/a.toml") == SEED["vault/actions/a.toml"]
    assert repo.remote_head() == new


def test_unknown_commits(make_repo) -> None:
    repo = make_repo()
    head = repo.fetch()
    unknown = "0123456789abcdef0123456789abcdef01234567"
    assert repo.read(unknown, "README.md") is None
    with pytest.raises(NotFoundError):
        repo.list_dir(unknown)
    with pytest.raises(NotFoundError):
        repo.changed_paths(unknown, head)
    with pytest.raises(NotFoundError):
        repo.last_change(unknown, "README.md")
    with pytest.raises(NotFoundError):
        repo.commit_message(unknown)
    assert repo.is_ancestor(unknown, head) is False
    with pytest.raises(ValueError):
        repo.list_dir("--output=/tmp/x")
    with pytest.raises(ValueError):
        repo.read(head, "../etc/passwd")


def test_read_of_a_big_file_is_cut_and_the_batch_stays_in_step(make_repo, other: Clone) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    other.write({"vault/actions/big.toml": big}, "big")
    other.push()
    repo = make_repo()
    head = repo.fetch()
    cut = repo.read(head, "vault/actions/big.toml", max_bytes=1000)
    assert cut == big[:1001]
    assert repo.read(head, "vault/actions/a.toml", max_bytes=1000) == SEED["vault/actions/a.toml"]
    exact = repo.read(head, "vault/actions/a.toml", max_bytes=len(SEED["vault/actions/a.toml"]))
    assert exact == SEED["vault/actions/a.toml"]
    assert repo.read(head, "vault/actions/big.toml") == big


def test_many_reads_share_one_process_which_sees_new_packs_and_is_restarted(make_repo) -> None:
    reader = make_repo("reader")
    old = reader.fetch()
    assert reader.read(old, "README.md") == SEED["README.md"]  # the cat-file process is now running
    files = {f"vault/actions/r{i}.toml": f"id = 'r{i}'\n".encode() for i in range(3000)}
    make_repo("writer").push_files(files, "many actions")  # arrives in the reader as a pack
    head = reader.fetch()
    listing = reader.list_dir(head)
    assert len(listing) == 3002
    contents = reader.read_many(head, list(files) + ["vault/actions/absent.toml", "vault/actions/r1.toml"])
    assert {p: c for p, c in contents.items() if p in files} == files
    assert contents["vault/actions/absent.toml"] is None
    cat = reader._cat_file()
    pid = cat._proc.pid
    cat._proc.kill()
    cat._proc.wait()
    assert reader.read(head, "vault/policy.toml") == SEED["vault/policy.toml"]  # not read before: not cached
    assert reader._cat_file()._proc.pid != pid
    reader._blobs.clear()  # the concurrent reads below go through the cat-file pipe, not the blob cache

    wrong: list[str] = []

    def read_concurrently(offset: int) -> None:
        for i in range(offset, 3000, 8):
            path = f"vault/actions/r{i}.toml"
            if reader.read(head, path) != files[path]:
                wrong.append(path)

    threads = [threading.Thread(target=read_concurrently, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert wrong == []
    assert reader.read_many(head, ["vault/actions/r1.toml"]) == {"vault/actions/r1.toml": b"id = 'r1'\n"}


def test_a_blob_read_again_comes_from_the_cache_cut_as_cat_file_would(make_repo) -> None:
    reader = make_repo("reader")
    head = reader.fetch()
    path = "vault/actions/a.toml"
    assert reader.read(head, path) == SEED[path]
    cat = reader._cat_file()
    cat._proc.kill()
    cat._proc.wait()
    pid = cat._proc.pid
    assert reader.read(head, path) == SEED[path]  # from the cache: no new process
    assert reader._cat_file()._proc.pid == pid
    assert reader.read(head, path, max_bytes=4) == SEED[path][:5]  # a too-big file: its first max_bytes + 1 bytes
    assert reader.read(head, "vault/actions/b.toml", max_bytes=4) == SEED["vault/actions/b.toml"][:5]
    assert reader.read(head, "vault/actions/b.toml") == SEED["vault/actions/b.toml"]  # a cut read is never cached


# ------------------------------------------------------------------ history


def test_last_change_through_a_no_ff_merge_names_the_merge_commit(make_repo, other: Clone, remote: Path) -> None:
    git(other.path, "checkout", "-q", "-b", "add-action")
    branch_commit = other.write({"vault/actions/d.toml": b'id = "d"\n'}, "propose d")
    git(other.path, "checkout", "-q", "main")
    other.write({"README.md": b"meanwhile\n"}, "unrelated")
    git(other.path, "merge", "-q", "--no-ff", "add-action", "-m", "Merge pull request 'd' (#7) from add-action into main")
    merge = other.head()
    other.push()

    repo = make_repo()
    head = repo.fetch()
    change = repo.last_change(head, "vault/actions/d.toml")
    assert change is not None
    assert change.sha == merge
    assert change.message.startswith("Merge pull request 'd' (#7)")
    assert len(change.parents) == 2 and change.parents[1] == branch_commit
    assert change.author == "Human <human@example.org>"
    assert change.committed_at.endswith("Z") and len(change.committed_at) == 20
    assert repo.is_ancestor(branch_commit, head) and not repo.is_ancestor(head, branch_commit)

    direct = other.write({"vault/actions/d.toml": b'id = "d"\n# edited\n'}, "direct edit")
    other.write({"README.md": b"later\n"}, "unrelated again")
    other.push()
    head = repo.fetch()
    assert repo.last_change(head, "vault/actions/d.toml").sha == direct
    assert [c.sha for c in repo.history(head, "vault/actions/d.toml")] == [direct, merge]
    assert repo.last_change(head, "vault/actions/never.toml") is None
    assert repo.history(head, "vault/actions/never.toml") == []
    assert repo.commit_message(direct) == "direct edit\n"


# ------------------------------------------------------------------ pushing results


def test_push_creates_exactly_one_commit_with_all_files(make_repo, remote: Path) -> None:
    repo = make_repo()
    before = repo.fetch()
    before_tree = git(remote, "ls-tree", "-r", before)
    files = {
        "vault/actions/a.result.json": b'{"id": "a", "exit_code": 0}\n',
        "vault/actions/b.result.json": b'{"id": "b", "exit_code": 1}\n',
        "vault/actions/new/dir/x.json": b"{}",
    }
    outcome = repo.push_files(files, "results: run-1, run-2")
    assert outcome == PushOutcome(commit=remote_head(remote), pushed=sorted(files), already_upstream=[], attempts=1)
    assert git(remote, "rev-list", "--parents", "-n1", outcome.commit).split() == [outcome.commit, before]
    assert sorted(git(remote, "diff", "--name-only", before, outcome.commit).split("\n")[:-1]) == sorted(files)
    for path, content in files.items():
        assert remote_file(remote, path) == content
    after_tree = git(remote, "ls-tree", "-r", outcome.commit)
    unchanged = [line for line in before_tree.splitlines()]
    assert all(line in after_tree.splitlines() for line in unchanged), "nothing outside the given paths changes"
    shown = git(remote, "show", "-s", "--format=%an <%ae>|%cn <%ce>|%B", outcome.commit)
    assert shown.startswith("reconciler <rec@example.org>|reconciler <rec@example.org>|results: run-1, run-2")
    assert repo.head() == outcome.commit


def test_identical_content_upstream_makes_no_commit(make_repo, remote: Path, other: Clone) -> None:
    repo = make_repo()
    first = repo.push_files({"vault/actions/a.result.json": b"A"}, "result a")
    again = repo.push_files({"vault/actions/a.result.json": b"A"}, "result a again")
    assert again == PushOutcome(commit=None, pushed=[], already_upstream=["vault/actions/a.result.json"], attempts=1)
    assert remote_head(remote) == first.commit

    other.pull()
    other.write({"vault/actions/b.result.json": b"B"}, "another writer won b")
    other.push()
    mixed = repo.push_files({"vault/actions/b.result.json": b"B", "vault/actions/c.result.json": b"C"}, "b and c")
    assert mixed.pushed == ["vault/actions/c.result.json"]
    assert mixed.already_upstream == ["vault/actions/b.result.json"]
    assert git(remote, "diff", "--name-only", f"{mixed.commit}^", mixed.commit).split() == ["vault/actions/c.result.json"]
    assert repo.push_files({}, "nothing") == PushOutcome(commit=None)


def test_concurrent_push_between_fetch_and_push_is_survived(make_repo, remote: Path, other: Clone) -> None:
    repo = make_repo()
    real_fetch = repo.fetch
    raced: list[str] = []

    def fetch_then_lose_the_race() -> str:
        head = real_fetch()
        if not raced:
            other.pull()
            raced.append(other.write({"vault/actions/e.toml": b'id = "e"\n'}, "merged meanwhile"))
            other.push()
        return head

    repo.fetch = fetch_then_lose_the_race  # type: ignore[method-assign]
    outcome = repo.push_files({"vault/actions/a.result.json": b"A"}, "result a")
    assert outcome.attempts == 2
    assert outcome.commit == remote_head(remote)
    assert git(remote, "rev-parse", f"{outcome.commit}^").strip() == raced[0]  # rebuilt on the new head
    assert remote_file(remote, "vault/actions/e.toml") == b'id = "e"\n'
    assert remote_file(remote, "vault/actions/a.result.json") == b"A"


def test_race_at_the_remote_ref_update_is_retried(make_repo, remote: Path, other: Clone, tmp_path: Path) -> None:
    """Another push lands while ours is inside receive-pack (server-side "failed to update ref")."""
    other.write({"vault/actions/f.toml": b'id = "f"\n'}, "lands during our push")
    marker = tmp_path / "hook-ran"
    hook = remote / "hooks" / "pre-receive"
    hook.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            cat >/dev/null
            if [ ! -e {marker} ]; then
              touch {marker}
              env -u GIT_DIR -u GIT_OBJECT_DIRECTORY -u GIT_ALTERNATE_OBJECT_DIRECTORIES -u GIT_QUARANTINE_PATH \\
                git -C {other.path} push -q origin HEAD:main >/dev/null 2>&1
            fi
            exit 0
            """
        )
    )
    hook.chmod(0o755)
    repo = make_repo()
    outcome = repo.push_files({"vault/actions/a.result.json": b"A"}, "result a")
    assert marker.exists()
    assert outcome.attempts == 2
    assert git(remote, "rev-parse", f"{outcome.commit}^").strip() == other.head()
    assert remote_file(remote, "vault/actions/f.toml") == b'id = "f"\n'
    assert remote_file(remote, "vault/actions/a.result.json") == b"A"


def test_server_refusal_is_permanent(make_repo, remote: Path) -> None:
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'protected branch: main' >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(PermanentError, match="protected branch"):
        make_repo().push_files({"vault/actions/a.result.json": b"A"}, "result a")


def test_push_gives_up_after_max_attempts_with_a_transient_error(make_repo, other: Clone) -> None:
    slept: list[float] = []
    repo = make_repo(sleep=slept.append)
    real_fetch = repo.fetch
    counter = iter(range(100))

    def always_lose() -> str:
        head = real_fetch()
        other.pull()
        other.write({"vault/actions/busy.toml": str(next(counter)).encode()}, "busy")
        other.push()
        return head

    repo.fetch = always_lose  # type: ignore[method-assign]
    with pytest.raises(TransientError) as err:
        repo.push_files({"vault/actions/a.result.json": b"A"}, "result a", max_attempts=3)
    assert err.value.system == "git"
    assert "after 3 attempts" in str(err.value) and "rejected" in str(err.value)
    assert len(slept) == 2 and all(0 < s <= 1.5 for s in slept)


def test_many_threads_pushing_different_results_all_land(make_repo, remote: Path) -> None:
    shared = make_repo("shared", sleep=time.sleep)  # real backoff: the writers really race
    separate = [make_repo(f"ops{i}", sleep=time.sleep) for i in range(4)]
    writers = [shared] * 3 + separate
    expected: dict[str, bytes] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(writers))

    def work(n: int, repo: OpsRepo) -> None:
        try:
            start.wait()
            for k in range(2):
                files = {f"vault/actions/t{n}-{k}.result.json": f"{n}/{k}".encode()}
                repo.push_files(files, f"result t{n}-{k}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    for n in range(len(writers)):
        for k in range(2):
            expected[f"vault/actions/t{n}-{k}.result.json"] = f"{n}/{k}".encode()
    threads = [threading.Thread(target=work, args=(n, r)) for n, r in enumerate(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for path, content in expected.items():
        assert remote_file(remote, path) == content
    assert int(git(remote, "rev-list", "--count", "main")) == 1 + len(expected)


WORKER = """
import json, sys
from pathlib import Path
from reconciler.clients.opsrepo import OpsRepo
from reconciler.settings import OpsRepoSettings
root, url, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
repo = OpsRepo(OpsRepoSettings(root=Path(root)), url)
outcomes = []
for k in range(count):
    o = repo.push_files({f"vault/actions/{prefix}-{k}.result.json": f"{prefix}/{k}".encode(),
                         f"vault/actions/{prefix}-{k}.log": b"log"}, f"results {prefix}-{k}")
    outcomes.append(o.attempts)
print(json.dumps(outcomes))
"""


def test_many_processes_pushing_different_results_all_land(tmp_path: Path, url: str, remote: Path) -> None:
    roots = ["p0", "p1", "p2", "p2", "p3", "p3"]  # two pairs of processes share a clone
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / root), url, f"w{n}", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
        )
        for n, root in enumerate(roots)
    ]
    attempts = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        attempts += json.loads(out)
    assert len(attempts) == 12 and max(attempts) <= 8
    for n in range(len(roots)):
        for k in range(2):
            assert remote_file(remote, f"vault/actions/w{n}-{k}.result.json") == f"w{n}/{k}".encode()
            assert remote_file(remote, f"vault/actions/w{n}-{k}.log") == b"log"
    assert int(git(remote, "rev-list", "--count", "main")) == 1 + 2 * len(roots)
    for commit in git(remote, "rev-list", "main", "--not", "main~12").split():
        changed = git(remote, "diff", "--name-only", f"{commit}^", commit).split()
        assert len(changed) == 2 and all(p.startswith("vault/actions/w") for p in changed)


@pytest.fixture
def forge_ops(tmp_path):
    """A forge double serving ``o/ops`` (users admin and alice), and a factory for an OpsRepo clone of it."""
    from reconciler.clients.opsrepo import OpsRepo
    from doubles.forge import ForgeDouble
    from reconciler.settings import OpsRepoSettings

    forge = ForgeDouble().start()
    try:
        forge.add_user("admin", is_admin=True)
        forge.add_user("alice")
        forge.add_repo("o/ops", tmp_path / "ops.git")
        yield forge, lambda: OpsRepo(OpsRepoSettings(root=tmp_path / "clone"), (tmp_path / "ops.git").as_uri())
    finally:
        forge.stop()


def test_last_changes_in_one_walk_match_last_change_per_file(forge_ops):
    """The batched walk attributes each file to the same commit as ``last_change`` - in particular a
    merge of a branch that started before a direct commit does not claim that direct commit's file."""
    forge, clone = forge_ops
    first = forge.open_pull("o/ops", author="alice", title="x", files={"vault/actions/x.toml": b"1"})
    forge.merge("o/ops", first, merger="admin")
    late = forge.open_pull("o/ops", author="alice", title="z", files={"vault/actions/z.toml": b"z"})
    direct = forge.commit_direct("o/ops", author="alice", files={"vault/actions/y.toml": b"y"}, message="direct")
    merge_z = forge.merge("o/ops", late, merger="admin")  # branch of z predates the direct commit
    ops = clone()
    head = ops.fetch()
    batch = ops.last_changes(head, "vault/actions")
    for name in ("x", "y", "z"):
        path = f"vault/actions/{name}.toml"
        assert batch[path].sha == ops.last_change(head, path).sha, path
    assert batch["vault/actions/y.toml"].sha == direct
    assert batch["vault/actions/z.toml"].sha == merge_z


def test_path_histories_in_one_walk_match_history_per_file(forge_ops):
    """The batched walk lists, per file, exactly the commits ``history`` lists for it, newest first:
    several changes of one file, a direct commit, a merge of a branch older than that commit."""
    forge, clone = forge_ops
    first = forge.open_pull("o/ops", author="alice", title="x", files={"vault/actions/x.toml": b"1"})
    forge.merge("o/ops", first, merger="admin")
    late = forge.open_pull("o/ops", author="alice", title="z", files={"vault/actions/z.toml": b"z", "vault/actions/x.toml": b"2"})
    forge.commit_direct("o/ops", author="alice", files={"vault/actions/y.toml": b"y"}, message="direct")
    forge.merge("o/ops", late, merger="admin")
    forge.commit_direct("o/ops", author="alice", files={"vault/actions/x.toml": b"3", "README": b"r"}, message="again")
    ops = clone()
    head = ops.fetch()
    batch = ops.path_histories(head, "vault/actions")
    assert set(batch) == {"vault/actions/x.toml", "vault/actions/y.toml", "vault/actions/z.toml"}
    for path, shas in batch.items():
        assert shas == [c.sha for c in ops.history(head, path)], path
    assert len(batch["vault/actions/x.toml"]) == 3
    assert [c.sha for c in ops.commits(batch["vault/actions/x.toml"])] == batch["vault/actions/x.toml"]


# ------------------------------------------------------------------ shallow clones


def _history(remote: Path, tmp_path: Path) -> list[str]:
    """Three more commits on the remote's main, each touching the action a.toml: their shas, oldest first."""
    clone = Clone(tmp_path / "history", f"file://{remote}")
    shas = [clone.write({"vault/actions/a.toml": f'id = "a"\n# v{i}\n'.encode()}, f"edit a v{i}") for i in range(2)]
    shas.append(clone.write({"README.md": b"newest\n"}, "unrelated newest"))
    clone.push()
    return shas


def _is_shallow(root: Path) -> bool:
    return git(root, "rev-parse", "--is-shallow-repository").strip() == "true"


@pytest.mark.parametrize("layout", ["bare", "working clone"])
def test_a_shallow_clone_at_root_is_unshallowed_before_any_answer(make_repo, remote: Path, tmp_path: Path, layout: str) -> None:
    edits = _history(remote, tmp_path)
    # file:// (not a plain path): a local clone ignores --depth
    bare = ["--bare"] if layout == "bare" else []
    git(tmp_path, "clone", "-q", *bare, "--depth", "1", f"file://{remote}", str(tmp_path / "ops"))
    assert _is_shallow(tmp_path / "ops")
    repo = make_repo()
    repo.ensure_ready()
    assert not _is_shallow(tmp_path / "ops")
    head = repo.fetch()
    assert head == remote_head(remote)
    # in the shallow clone every file was attributed to the boundary commit (the newest)
    assert repo.last_change(head, "vault/actions/a.toml").sha == edits[1]
    assert [c.sha for c in repo.history(head, "vault/actions/a.toml")][:2] == [edits[1], edits[0]]
    assert len(repo.first_parents(head, 10)) == 4


def test_a_shallow_clone_that_cannot_be_unshallowed_is_refused_with_the_fix(make_repo, remote: Path, tmp_path: Path) -> None:
    _history(remote, tmp_path)
    git(tmp_path, "clone", "-q", "--bare", "--depth", "1", f"file://{remote}", str(tmp_path / "ops"))
    repo = make_repo(remote=f"file://{tmp_path}/gone.git")
    with pytest.raises(PermanentError) as err:
        repo.ensure_ready()
    text = str(err.value)
    assert "shallow" in text and "fetch --unshallow" in text and str(tmp_path / "ops") in text
    assert "without --depth" in text
    assert _is_shallow(tmp_path / "ops")


def test_a_clone_made_shallow_later_is_unshallowed_by_fetch_and_history(make_repo, remote: Path, tmp_path: Path) -> None:
    edits = _history(remote, tmp_path)
    repo = make_repo()
    head = repo.fetch()
    shallow = tmp_path / "ops" / "shallow"
    shallow.write_text(head + "\n")  # what `git fetch --depth 1` leaves: the head as a root
    assert _is_shallow(tmp_path / "ops")
    assert repo.last_change(head, "vault/actions/a.toml").sha == edits[1]  # a history verb unshallows first
    assert not shallow.exists()
    shallow.write_text(head + "\n")
    assert repo.fetch() == head
    assert not shallow.exists() and not _is_shallow(tmp_path / "ops")


# ------------------------------------------------------------------ pushes leased on their base


def test_a_push_after_a_human_rewound_main_is_rebuilt_on_the_rewound_head(make_repo, remote: Path, other: Clone) -> None:
    repo = make_repo()
    h0 = repo.fetch()
    other.write({"vault/actions/removed.toml": b'id = "removed"\n'}, "an action merged by mistake")
    other.push()
    h1 = repo.fetch()  # the result commit will be built on h1 (the head known here)
    assert repo.head() == h1 != h0
    git(remote, "update-ref", "refs/heads/main", h0, h1)  # the human's force-push back to h0
    outcome = repo.push_files({"vault/actions/a.result.json": b"A"}, "result a")
    final = remote_head(remote)
    assert outcome.commit == final
    assert git(remote, "rev-list", "--parents", "-n1", final).split() == [final, h0], "built on the rewound head"
    ancestors = git(remote, "rev-list", final).split()
    assert h1 not in ancestors, "the removed commit is not resurrected"
    names = git(remote, "ls-tree", "-r", "--name-only", "main").split("\n")
    assert "vault/actions/removed.toml" not in names
    assert remote_file(remote, "vault/actions/a.result.json") == b"A"
    assert repo.head() == final


def test_a_moved_remote_refuses_the_lease_and_the_push_is_retried(make_repo, remote: Path, other: Clone) -> None:
    """The remote moved to a commit that is *not* a descendant of the known head (a rewrite)."""
    repo = make_repo()
    h0 = repo.fetch()
    git(other.path, "commit", "-q", "--amend", "-m", "seed, reworded by a human")
    git(other.path, "push", "-q", "--force", "origin", "HEAD:main")
    rewritten = other.head()
    outcome = repo.push_files({"vault/actions/b.result.json": b"B"}, "result b")
    assert git(remote, "rev-parse", f"{outcome.commit}^").strip() == rewritten
    assert h0 not in git(remote, "rev-list", "main").split()


# ------------------------------------------------------------------ odd tree entries


def _odd_commit(clone: Clone) -> str:
    """A commit with every odd entry CONTRACTS.md names: newline, tab and UTF-8 names, a symlink, a
    submodule (gitlink), a directory named like an action file; pushed to main."""
    actions = clone.path / "vault" / "actions"
    (actions / "new\nline.toml").write_bytes(b"newline\n")
    (actions / "\nleading.toml").write_bytes(b"leading\n")
    (actions / "trailing.toml\n").write_bytes(b"trailing\n")
    (actions / "tab\there.toml").write_bytes(b"tab\n")
    (actions / "ünï-cödé.toml").write_bytes(b"utf8\n")
    os.symlink("a.toml", actions / "link.toml")
    (actions / "dir.toml").mkdir()
    (actions / "dir.toml" / "inner.toml").write_bytes(b"inside\n")
    git(clone.path, "add", "-A")
    seed = clone.head()
    git(clone.path, "update-index", "--add", "--cacheinfo", f"160000,{seed},vault/actions/sub.toml")
    git(clone.path, "commit", "-q", "-m", "odd entries")
    clone.push()
    return clone.head()


def test_odd_entries_are_listed_with_their_modes_and_only_regular_files_read(make_repo, other: Clone) -> None:
    repo = make_repo()
    old = repo.fetch()
    new = _odd_commit(other)
    assert repo.fetch() == new
    entries = repo.list_entries(new)
    modes = {path: mode for path, (mode, _) in entries.items()}
    assert modes["vault/actions/new\nline.toml"] == "100644"
    assert modes["vault/actions/\nleading.toml"] == "100644"
    assert modes["vault/actions/trailing.toml\n"] == "100644"
    assert modes["vault/actions/tab\there.toml"] == "100644"
    assert modes["vault/actions/ünï-cödé.toml"] == "100644"
    assert modes["vault/actions/link.toml"] == "120000"
    assert modes["vault/actions/sub.toml"] == "160000"
    assert modes["vault/actions/dir.toml"] == "40000"
    assert entries["vault/actions/sub.toml"][1] == git(other.path, "rev-parse", "HEAD^").strip()
    listing = repo.list_dir(new)
    assert set(listing) == {p for p, m in modes.items() if m in ("100644", "100755")}
    assert "vault/actions/link.toml" not in listing and "vault/actions/sub.toml" not in listing
    assert repo.read(new, "vault/actions/new\nline.toml") == b"newline\n"
    assert repo.read(new, "vault/actions/tab\there.toml") == b"tab\n"
    assert repo.read(new, "vault/actions/link.toml") is None, "a symlink is not a file"
    assert repo.read(new, "vault/actions/sub.toml") is None
    assert repo.read(new, "vault/actions/dir.toml") is None
    changed = repo.changed_paths(old, new)
    assert "vault/actions/new\nline.toml" in changed and "vault/actions/trailing.toml\n" in changed
    assert "vault/actions/\nleading.toml" in changed and "vault/actions/sub.toml" in changed
    assert "vault/actions/dir.toml/inner.toml" in changed
    histories = repo.path_histories(new, "vault/actions")
    for name in ("new\nline.toml", "\nleading.toml", "trailing.toml\n", "tab\there.toml", "ünï-cödé.toml", "link.toml", "sub.toml"):
        assert histories[f"vault/actions/{name}"] == [new], name
    assert histories["vault/actions/dir.toml/inner.toml"] == [new]
    assert histories["vault/actions/a.toml"] == [old]
    assert repo.last_change(new, "vault/actions/new\nline.toml").sha == new
    assert repo.last_changes(new, "vault/actions")["vault/actions/trailing.toml\n"].sha == new
    with pytest.raises(ValueError):
        repo.push_files({"vault/actions/x\ny.result.json": b"x"}, "never written")


def test_a_name_that_is_not_utf8_comes_back_escaped(make_repo, other: Clone) -> None:
    blob = git(other.path, "hash-object", "-w", "--stdin", input=b"bytes\n").strip()
    # -z: the name travels verbatim (one byte 0xff, not UTF-8)
    git(other.path, "update-index", "-z", "--index-info", input=b"100644 " + blob.encode() + b"\tvault/actions/bad-\xff.toml\0")
    git(other.path, "commit", "-q", "-m", "a name that is not UTF-8")
    other.push()
    repo = make_repo()
    head = repo.fetch()
    odd = "vault/actions/bad-\udcff.toml"
    assert repo.list_entries(head)[odd][0] == "100644"
    assert repo.read(head, odd) == b"bytes\n"
    assert repo.path_histories(head, "vault/actions")[odd] == [head]


# ------------------------------------------------------------------ commits of pull requests, merge bases


def test_merge_base_and_first_parents(make_repo, other: Clone, remote: Path) -> None:
    seed = other.head()
    git(other.path, "checkout", "-q", "-b", "topic")
    topic = other.write({"vault/actions/t.toml": b"t"}, "topic")
    git(other.path, "checkout", "-q", "main")
    m1 = other.write({"README.md": b"m1\n"}, "m1")
    git(other.path, "merge", "-q", "--no-ff", "topic", "-m", "merge topic")
    merge = other.head()
    git(other.path, "push", "-q", "origin", "main", "topic")
    git(other.path, "checkout", "-q", "--orphan", "lonely")
    lonely = other.write({"x": b"x"}, "unrelated root")
    git(other.path, "push", "-q", "origin", "lonely")
    repo = make_repo()
    head = repo.fetch()
    assert head == merge
    assert repo.ensure_commit(topic) is True  # reachable from main: already here
    assert repo.merge_base(topic, m1) == seed
    assert repo.merge_base(topic, head) == topic
    assert repo.first_parents(head, 10) == [merge, m1, seed]
    assert repo.first_parents(head, 2) == [merge, m1]
    assert repo.first_parents(head, 0) == []
    # after the topic commit: where it landed (the merge), not m1 (made beside the branch)
    assert repo.first_parents_after(head, topic, 5) == [merge]
    assert repo.first_parents_after(head, seed, 5) == [m1, merge]
    assert repo.first_parents_after(head, seed, 1) == [m1]
    assert repo.first_parents_after(head, head, 5) == []
    unknown = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(NotFoundError):
        repo.merge_base(unknown, head)
    with pytest.raises(NotFoundError):
        repo.first_parents(unknown, 3)
    with pytest.raises(NotFoundError):
        repo.first_parents_after(head, unknown, 3)
    assert repo.ensure_commit(lonely) is True  # fetched by id: the remote has it (branch lonely)
    assert repo.merge_base(lonely, head) is None
    assert git(repo._root, "rev-parse", "refs/remotes/origin/main").strip() == head


def test_ensure_commit_fetches_a_pull_request_head_into_its_own_ref(make_repo, other: Clone, remote: Path) -> None:
    repo = make_repo()
    head = repo.fetch()
    git(other.path, "checkout", "-q", "-b", "proposal")
    proposed = other.write({"vault/actions/p.toml": b'id = "p"\n'}, "proposal")
    # the forge keeps a pull request's head as refs/pull/<n>/head, on no branch
    git(other.path, "push", "-q", "origin", f"{proposed}:refs/heads/tmp")
    git(remote, "update-ref", "refs/pull/7/head", proposed)
    git(remote, "update-ref", "-d", "refs/heads/tmp")
    assert repo.ensure_commit(proposed, 7) is True
    root = repo._root
    assert git(root, "rev-parse", "refs/reconciler/pull/7").strip() == proposed
    assert git(root, "rev-parse", "refs/remotes/origin/main").strip() == head, "the branch never moves"
    assert repo.head() == head
    assert repo.merge_base(proposed, head) == head
    assert repo.commit(proposed).message == "proposal\n"
    assert repo.ensure_commit(proposed, 7) is True  # present now: no fetch
    # a pull request ref the remote does not have, and a commit nobody has: False
    missing = "0123456789abcdef0123456789abcdef01234567"
    assert repo.ensure_commit(missing, 8) is False
    assert repo.ensure_commit(missing) is False
    # a commit still reachable from the remote, though no ref of ours names it: fetched by id
    git(other.path, "checkout", "-q", "main")
    git(other.path, "checkout", "-q", "-b", "later")
    later = other.write({"vault/actions/q.toml": b'id = "q"\n'}, "later proposal")
    git(other.path, "push", "-q", "origin", "later")
    assert repo.ensure_commit(later, 9) is True  # no refs/pull/9/head: the id itself is fetched


def test_ensure_commit_over_a_broken_network_is_transient(make_repo, other: Clone, tmp_path: Path) -> None:
    repo = make_repo()
    repo.fetch()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    git(repo._root, "remote", "set-url", "origin", f"http://127.0.0.1:{port}/ops.git")
    with pytest.raises(TransientError):
        repo.ensure_commit("0123456789abcdef0123456789abcdef01234567", 3)


def test_commit_graph_answers_between_full_ids_are_kept_and_refs_or_absent_commits_are_asked_again(make_repo) -> None:
    reader = make_repo("reader")
    head = reader.fetch()
    calls: list[str] = []
    original = reader._run

    def counted(args, *a, **kw):  # type: ignore[no-untyped-def]
        calls.append(" ".join(args[:2]))
        return original(args, *a, **kw)

    reader._run = counted  # type: ignore[method-assign]
    first = reader.commit(head).parents[0] if reader.commit(head).parents else head
    assert reader.is_ancestor(first, head) and reader.is_ancestor(first, head)
    assert reader.merge_base(first, head) == reader.merge_base(first, head) == first
    assert calls.count("merge-base --is-ancestor") == 1 and calls.count("merge-base " + first) == 1
    unknown = "0123456789abcdef0123456789abcdef01234567"
    assert reader.is_ancestor(unknown, head) is False and reader.is_ancestor(unknown, head) is False
    assert calls.count("merge-base --is-ancestor") == 3  # an unknown commit may arrive with a fetch: not kept
    before = len(calls)
    assert reader.is_ancestor(first, "origin/main") and reader.is_ancestor(first, "origin/main")
    assert len(calls) == before + 2  # a ref moves: never kept
