"""The Forgejo double's git smart HTTP, fact by fact against Forgejo's source.

Traced to ``routers/web/repo/githttp.go`` (``httpBase``: public pulls need no credentials,
everything else 401 + ``WWW-Authenticate: Basic``; ``CanAccess`` failures are 404
"Repository not found"; ``serviceRPC``: wrong Content-Type is 401) and
``services/context/permission.go`` (``CheckRepoScopedToken``: a bare 403 for a token
without ``read:repository`` / ``write:repository``), with the pack exchange done by real
``git http-backend``.
"""

from __future__ import annotations

import base64
import os
import subprocess

import pytest
import requests

from reconciler.clients.git_env import GitAuth, clean_env
from doubles.forge import ForgeDouble

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def forge(tmp_path):
    f = ForgeDouble().start()
    f.add_user("owner")
    f.add_user("writer")
    f.add_user("reader")
    f.add_user("stranger")
    f.add_repo("owner/private", tmp_path / "private.git", private=True)
    f.add_repo("owner/public", tmp_path / "public.git")
    for repo in ("owner/private", "owner/public"):
        f.commit_direct(repo, author="owner", files={"README": "hello\n"}, message="init")
        f.add_collaborator(repo, "writer", "write")
        f.add_collaborator(repo, "reader", "read")
    yield f
    f.stop()


def basic(token: str, user: str = "anyone") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def info_refs(forge, repo: str, service: str, headers=None) -> requests.Response:
    return requests.get(f"{forge.address}/{repo}.git/info/refs", params={"service": service}, headers=headers or {}, timeout=10)


def git(forge, token: str | None, *args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    env = clean_env(os.environ)
    if token is not None:
        env.update(GitAuth(forge.address, forge.address, lambda: token).env())
    return subprocess.run(["git", "-c", "credential.helper=", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_public_pull_needs_no_credentials_private_one_asks_basic(forge):
    assert info_refs(forge, "owner/public", "git-upload-pack").status_code == 200
    denied = info_refs(forge, "owner/private", "git-upload-pack")
    assert denied.status_code == 401
    assert denied.headers["WWW-Authenticate"] == 'Basic realm="Gitea"'
    push = info_refs(forge, "owner/public", "git-receive-pack")
    assert push.status_code == 401  # a push always asks


def test_advertisement_comes_from_http_backend(forge):
    reply = info_refs(forge, "owner/private", "git-upload-pack", basic(forge.token_for("reader")))
    assert reply.status_code == 200
    assert reply.headers["Content-Type"] == "application/x-git-upload-pack-advertisement"
    assert reply.content.startswith(b"001e# service=git-upload-pack\n")
    assert forge.head("owner/private").encode() in reply.content


def test_token_is_the_password_under_any_user_name_or_the_user_name_alone(forge):
    token = forge.token_for("reader")
    assert info_refs(forge, "owner/private", "git-upload-pack", basic(token, "whoever")).status_code == 200
    alone = {"Authorization": "Basic " + base64.b64encode(f"{token}:x-oauth-basic".encode()).decode()}
    assert info_refs(forge, "owner/private", "git-upload-pack", alone).status_code == 200
    assert info_refs(forge, "owner/private", "git-upload-pack", basic("not-a-token")).status_code == 401


def test_scopes_read_to_fetch_write_to_push_bare_403(forge):
    read = forge.new_token("writer", scopes=["read:repository"])
    issue_only = forge.new_token("writer", scopes=["write:issue"])
    assert info_refs(forge, "owner/private", "git-upload-pack", basic(read)).status_code == 200
    refused = info_refs(forge, "owner/private", "git-receive-pack", basic(read))
    assert (refused.status_code, refused.text) == (403, "Forbidden\n")
    assert info_refs(forge, "owner/private", "git-upload-pack", basic(issue_only)).status_code == 403
    public_only = forge.new_token("writer", scopes=["public-only", "write:repository"])
    assert info_refs(forge, "owner/private", "git-upload-pack", basic(public_only)).status_code == 403
    assert info_refs(forge, "owner/public", "git-receive-pack", basic(public_only)).status_code == 200


def test_permission_failures_are_404_repository_not_found(forge):
    assert info_refs(forge, "owner/private", "git-upload-pack", basic(forge.token_for("stranger"))).status_code == 404
    reader_push = info_refs(forge, "owner/private", "git-receive-pack", basic(forge.token_for("reader")))
    assert (reader_push.status_code, reader_push.text) == (404, "Repository not found")
    assert info_refs(forge, "owner/missing", "git-upload-pack", basic(forge.token_for("owner"))).status_code == 404


def test_wrong_content_type_is_401_and_dumb_http_is_501(forge):
    reply = requests.post(f"{forge.address}/owner/public.git/git-upload-pack", data=b"0000",
                          headers={"Content-Type": "text/plain"}, timeout=10)
    assert reply.status_code == 401
    assert requests.get(f"{forge.address}/owner/public.git/info/refs", timeout=10).status_code == 501
    assert requests.get(f"{forge.address}/owner/public.git/HEAD", timeout=10).status_code == 501


def test_real_git_clones_and_pushes_with_the_token(forge, tmp_path):
    token = forge.token_for("writer")
    url = f"{forge.address}/owner/private.git"
    assert git(forge, None, "clone", "-q", url, str(tmp_path / "anon")).returncode != 0
    cloned = git(forge, token, "clone", "-q", url, str(tmp_path / "c"))
    assert cloned.returncode == 0, cloned.stderr
    (tmp_path / "c" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # > http.postBuffer: sent chunked
    subprocess.run(["git", "-C", str(tmp_path / "c"), "add", "big.bin"], check=True)
    subprocess.run(["git", "-C", str(tmp_path / "c"), "-c", "user.name=w", "-c", "user.email=w@x", "commit", "-qm", "big"], check=True)
    pushed = git(forge, token, "push", "-q", "origin", "HEAD:main", cwd=tmp_path / "c")
    assert pushed.returncode == 0, pushed.stderr
    head = subprocess.run(["git", "-C", str(tmp_path / "c"), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert forge.head("owner/private") == head
    assert "x:" not in (tmp_path / "c" / ".git" / "config").read_text() and token not in (tmp_path / "c" / ".git" / "config").read_text()


def test_askpass_gives_no_token_to_another_origin(forge, tmp_path):
    other = ForgeDouble().start()
    try:
        other.add_user("owner")
        other.add_repo("owner/private", tmp_path / "other.git", private=True)
        token = forge.token_for("owner")
        env = clean_env(os.environ)
        env.update(GitAuth(f"{forge.address}/owner/private.git", forge.address, lambda: token).env())
        proc = subprocess.run(["git", "ls-remote", f"{other.address}/owner/private.git"], env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0
        assert not any("authorization" in c.headers for c in other.calls), "the token went to another origin"
    finally:
        other.stop()
