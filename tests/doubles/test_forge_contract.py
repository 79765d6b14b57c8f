"""Conformance of the Forgejo double with CONTRACTS.md (Forgejo), through ``requests``.

Each ``test_contract_*`` is named after the bullet it checks. The ``test_double_*`` tests
check what the scripting API promises: real git commits, merges and pushes.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

import doubles.forge as forge_module
from doubles.forge import (
    ForgeDouble,
    ForgeDoubleError,
    MergeConflict,
    NameRefused,
    NotFastForward,
    WrongCommitID,
    parse_rfc3339,
    rfc3339,
)

OPS = "disinto/ops"
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """The ops repository's bare git directory."""
    return tmp_path / "ops.git"


@pytest.fixture
def forge(bare: Path, clock: FakeClock) -> Iterator[ForgeDouble]:
    double = ForgeDouble(clock=clock)
    double.start()
    double.add_repo(OPS, bare)
    double.commit_direct(OPS, author="admin", files={"README.md": b"ops\n"}, message="initial")
    yield double
    double.stop()


@pytest.fixture
def tokens(forge: ForgeDouble) -> dict[str, str]:
    return {
        "admin": forge.add_user("admin", is_admin=True),
        "alice": forge.add_user("alice"),
        "bob": forge.add_user("bob"),
    }


def api(forge: ForgeDouble, path: str, token: str | None = None, **params: Any) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.get(f"{forge.address}/api/v1{path}", headers=headers, params=params, timeout=5)


def git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=tester", "-c", "user.email=tester@example.org", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


# -- Auth header ---------------------------------------------------------------------------------


def test_contract_auth_header_authorization_token(forge: ForgeDouble, tokens: dict[str, str]) -> None:
    assert api(forge, "/user", tokens["bob"]).json()["login"] == "bob"

    missing = api(forge, "/user")
    assert missing.status_code == 401
    assert missing.json()["message"]

    bad = api(forge, f"/repos/{OPS}", "not-a-token")
    assert bad.status_code == 401, "an unknown token is refused even where anonymous access would work"
    assert "message" in bad.json()

    # Forgejo also takes the token as a query parameter.
    query = requests.get(f"{forge.address}/api/v1/user", params={"token": tokens["alice"]}, timeout=5)
    assert query.json()["login"] == "alice"

    forge.revoke_token(tokens["alice"])
    assert api(forge, "/user", tokens["alice"]).status_code == 401


# -- Lists paginate --------------------------------------------------------------------------------


def test_contract_lists_paginate_with_page_limit_max_50_and_return_total_count_and_link(
    forge: ForgeDouble, tokens: dict[str, str]
) -> None:
    for i in range(120):
        forge.add_issue(OPS, title=f"issue {i}")

    first = api(forge, f"/repos/{OPS}", tokens["bob"])  # the repo exists
    assert first.status_code == 200

    capped = api(forge, f"/repos/{OPS}/issues", tokens["bob"], limit=100, page=1)
    assert len(capped.json()) == 50, "limit above 50 is silently capped"
    assert capped.headers["X-Total-Count"] == "120"
    links = requests.utils.parse_header_links(capped.headers["Link"])
    rels = {link["rel"]: link["url"] for link in links}
    assert set(rels) == {"next", "last"}
    assert "page=2" in rels["next"] and "page=3" in rels["last"]
    assert rels["next"].startswith(f"{forge.address}/api/v1/repos/{OPS}/issues?")

    default = api(forge, f"/repos/{OPS}/issues", tokens["bob"])
    assert len(default.json()) == 30, "the default page size is 30"

    last = api(forge, f"/repos/{OPS}/issues", tokens["bob"], limit=50, page=3)
    assert len(last.json()) == 20
    assert last.links.keys() == {"first", "prev"}
    assert "page=2" in last.links["prev"]["url"]

    beyond = api(forge, f"/repos/{OPS}/issues", tokens["bob"], limit=50, page=9)
    assert beyond.json() == [] and beyond.headers["X-Total-Count"] == "120"

    pages = [api(forge, f"/repos/{OPS}/issues", tokens["bob"], limit=50, page=p).json() for p in (1, 2, 3)]
    seen = [issue["number"] for page in pages for issue in page]
    assert len(seen) == len(set(seen)) == 120, "pages neither overlap nor skip"


def test_contract_lists_paginate_reviews_with_total_count(forge: ForgeDouble, tokens: dict[str, str]) -> None:
    number = forge.open_pull(OPS, author="bob", title="many reviews", files={"a.txt": b"a"})
    for i in range(55):
        forge.review(OPS, number, user=f"reviewer{i}", state="COMMENT")
    page1 = api(forge, f"/repos/{OPS}/pulls/{number}/reviews", tokens["bob"], limit=100)
    page2 = api(forge, f"/repos/{OPS}/pulls/{number}/reviews", tokens["bob"], limit=100, page=2)
    assert len(page1.json()) == 50 and len(page2.json()) == 5
    assert page1.headers["X-Total-Count"] == "55"


# -- GET /user, GET /users/{name} -----------------------------------------------------------------


def test_contract_get_user_is_the_user_the_token_belongs_to(forge: ForgeDouble, tokens: dict[str, str]) -> None:
    me = api(forge, "/user", tokens["admin"]).json()
    assert me["login"] == "admin" and me["is_admin"] is True and isinstance(me["id"], int)
    assert api(forge, "/user", tokens["bob"]).json()["login"] == "bob"


def test_contract_get_users_is_admin_shown_truthfully_only_to_site_admin_or_self(
    forge: ForgeDouble, tokens: dict[str, str]
) -> None:
    forge.add_user("carol", is_admin=True)
    seen_by_admin = api(forge, "/users/carol", tokens["admin"]).json()
    assert {"id", "login", "is_admin"} <= seen_by_admin.keys()
    assert seen_by_admin["is_admin"] is True
    assert api(forge, "/users/carol", tokens["bob"]).json()["is_admin"] is False, "hidden from a non-admin"
    assert api(forge, "/users/carol").json()["is_admin"] is False, "hidden from anonymous callers"
    assert api(forge, "/users/admin", tokens["admin"]).json()["is_admin"] is True, "shown to the user themself"
    assert api(forge, "/users/nobody", tokens["admin"]).status_code == 404


# -- GET /repos/{o}/{r}/pulls/{n} -----------------------------------------------------------------


def test_contract_pulls_fields_merger_is_merged_by_no_merge_user_user_is_author(
    forge: ForgeDouble, tokens: dict[str, str], clock: FakeClock
) -> None:
    number = forge.open_pull(OPS, author="bob", title="add action", files={"vault/actions/a.toml": b"id = 'a'\n"})
    opened = api(forge, f"/repos/{OPS}/pulls/{number}", tokens["alice"]).json()
    assert opened["number"] == number and opened["state"] == "open"
    assert opened["merged"] is False and opened["merged_at"] is None
    assert opened["merged_by"] is None and opened["merge_commit_sha"] is None
    assert opened["user"]["login"] == "bob"
    assert opened["head"]["ref"] == f"pr-{number}" and opened["base"]["ref"] == "main"
    assert opened["head"]["sha"] == forge.head(OPS, f"pr-{number}")

    clock.now += 60
    merge_sha = forge.merge(OPS, number, merger="alice")
    merged = api(forge, f"/repos/{OPS}/pulls/{number}", tokens["bob"]).json()
    assert merged["state"] == "closed" and merged["merged"] is True
    assert merged["merged_by"]["login"] == "alice"
    assert merged["user"]["login"] == "bob", "user is the author, never the merger"
    assert "merge_user" not in merged
    assert merged["merge_commit_sha"] == merge_sha == forge.head(OPS)
    assert merged["merged_at"] == rfc3339(T0 + 60)
    assert merged["head"]["sha"] == opened["head"]["sha"]

    assert api(forge, f"/repos/{OPS}/pulls/999", tokens["bob"]).status_code == 404
    issue = forge.add_issue(OPS, title="an issue")
    assert api(forge, f"/repos/{OPS}/pulls/{issue}", tokens["bob"]).status_code == 404, "an issue is not a pull"


# -- GET /repos/{o}/{r}/commits/{sha}/pull --------------------------------------------------------


def test_contract_commits_sha_pull_answers_only_for_the_merge_commit(
    forge: ForgeDouble, tokens: dict[str, str]
) -> None:
    base_before = forge.head(OPS)
    number = forge.open_pull(OPS, author="bob", title="x", files={"x.txt": b"x"})
    branch_commit = forge.head(OPS, f"pr-{number}")
    merge_sha = forge.merge(OPS, number, merger="admin")

    found = api(forge, f"/repos/{OPS}/commits/{merge_sha}/pull", tokens["bob"])
    assert found.status_code == 200
    assert found.json()["number"] == number and found.json()["merge_commit_sha"] == merge_sha

    for other in (branch_commit, base_before, merge_sha[:12], "f" * 40):
        assert api(forge, f"/repos/{OPS}/commits/{other}/pull", tokens["bob"]).status_code == 404, other


# -- GET /repos/{o}/{r}/pulls/{n}/reviews ---------------------------------------------------------


def test_contract_reviews_fields_and_several_reviews_per_reviewer(
    forge: ForgeDouble, tokens: dict[str, str], clock: FakeClock
) -> None:
    number = forge.open_pull(OPS, author="bob", title="x", files={"x.txt": b"x"})
    first = forge.review(OPS, number, user="alice", state="REQUEST_CHANGES")
    clock.now += 5
    second = forge.review(OPS, number, user="alice", state="APPROVED")
    clock.now += 5
    forge.review(OPS, number, user="admin", state="COMMENT")
    dismissed = forge.review(OPS, number, user="carol", state="APPROVED")
    forge.dismiss(OPS, dismissed)
    stale = forge.review(OPS, number, user="dave", state="APPROVED")
    forge.mark_stale(OPS, stale)

    reviews = api(forge, f"/repos/{OPS}/pulls/{number}/reviews", tokens["bob"]).json()
    assert [r["id"] for r in reviews] == sorted(r["id"] for r in reviews)
    for review in reviews:
        assert {"id", "user", "state", "stale", "dismissed", "official", "commit_id", "submitted_at"} <= review.keys()
        assert review["state"] in ("APPROVED", "REQUEST_CHANGES", "COMMENT", "PENDING", "REQUEST_REVIEW")
        assert parse_rfc3339(review["submitted_at"]) >= T0
    by_id = {r["id"]: r for r in reviews}
    assert by_id[first]["user"]["login"] == by_id[second]["user"]["login"] == "alice"
    assert by_id[first]["state"] == "REQUEST_CHANGES" and by_id[second]["state"] == "APPROVED"
    assert by_id[second]["submitted_at"] > by_id[first]["submitted_at"]
    assert by_id[second]["commit_id"] == forge.head(OPS, f"pr-{number}")
    assert by_id[second]["official"] is True
    assert by_id[dismissed]["dismissed"] is True and by_id[dismissed]["stale"] is False
    assert by_id[stale]["stale"] is True and by_id[stale]["dismissed"] is False


def test_contract_reviews_pending_ones_are_shown_only_to_their_author(
    forge: ForgeDouble, tokens: dict[str, str]
) -> None:
    number = forge.open_pull(OPS, author="bob", title="x", files={"x.txt": b"x"})
    forge.review(OPS, number, user="alice", state="PENDING")
    forge.review(OPS, number, user="admin", state="APPROVED")
    as_bob = api(forge, f"/repos/{OPS}/pulls/{number}/reviews", tokens["bob"])
    assert [r["state"] for r in as_bob.json()] == ["APPROVED"]
    assert as_bob.headers["X-Total-Count"] == "2", "the hidden pending review is still counted"
    as_alice = api(forge, f"/repos/{OPS}/pulls/{number}/reviews", tokens["alice"]).json()
    assert [r["state"] for r in as_alice] == ["PENDING", "APPROVED"]


# -- The merge commit message is typed text --------------------------------------------------------


def test_contract_merge_message_is_typed_text_it_names_a_candidate_never_proves(
    bare: Path, forge: ForgeDouble, tokens: dict[str, str]
) -> None:
    number = forge.open_pull(OPS, author="bob", title="add action", files={"a.toml": b"a"})
    forge.review(OPS, number, user="admin")
    real = forge.merge(OPS, number, merger="admin")
    message = git("--git-dir", str(bare), "log", "-1", "--format=%B", real)
    assert message.splitlines()[0] == f"Merge pull request 'add action' (#{number}) from pr-{number} into main"
    assert f"Reviewed-on: {forge.address}/{OPS}/pulls/{number}" in message

    forged = forge.commit_direct(
        OPS,
        author="mallory",
        files={"evil.toml": b"evil"},
        message=f"Merge pull request 'add action' (#{number}) from pr-{number} into main",
    )
    assert api(forge, f"/repos/{OPS}/commits/{forged}/pull", tokens["bob"]).status_code == 404
    assert api(forge, f"/repos/{OPS}/commits/{real}/pull", tokens["bob"]).json()["number"] == number


# -- GET /repos/{o}/{r}/issues --------------------------------------------------------------------


def test_contract_issues_fields_state_and_type(forge: ForgeDouble, tokens: dict[str, str]) -> None:
    open_issue = forge.add_issue(OPS, title="crash", body="it crashed", labels=["bug-report"])
    closed_issue = forge.add_issue(OPS, title="old", state="closed")
    pull = forge.open_pull(OPS, author="bob", title="a pull", files={"p.txt": b"p"})

    issues = api(forge, f"/repos/{OPS}/issues", tokens["bob"], type="issues").json()
    assert [i["number"] for i in issues] == [open_issue], "state defaults to open; type=issues leaves pulls out"
    item = issues[0]
    assert {"number", "title", "body", "state", "labels", "updated_at"} <= item.keys()
    assert (item["title"], item["body"], item["state"]) == ("crash", "it crashed", "open")
    assert [label["name"] for label in item["labels"]] == ["bug-report"]
    assert item["updated_at"].endswith("Z") and item["pull_request"] is None

    every = api(forge, f"/repos/{OPS}/issues", tokens["bob"], state="all").json()
    assert {i["number"] for i in every} == {open_issue, closed_issue, pull}, "without type, pulls are issues too"
    closed = api(forge, f"/repos/{OPS}/issues", tokens["bob"], type="issues", state="closed").json()
    assert [i["number"] for i in closed] == [closed_issue]
    pulls = api(forge, f"/repos/{OPS}/issues", tokens["bob"], type="pulls").json()
    assert [i["number"] for i in pulls] == [pull] and pulls[0]["pull_request"]["merged"] is False


def test_contract_issues_labels_a_b_means_all_of_them(forge: ForgeDouble, tokens: dict[str, str]) -> None:
    both = forge.add_issue(OPS, title="both", labels=["bug-report", "in-triage"])
    only_bug = forge.add_issue(OPS, title="bug", labels=["bug-report"])
    forge.add_issue(OPS, title="triage", labels=["in-triage"])
    got = api(forge, f"/repos/{OPS}/issues", tokens["bob"], type="issues", labels="bug-report,in-triage").json()
    assert [i["number"] for i in got] == [both]
    got = api(forge, f"/repos/{OPS}/issues", tokens["bob"], type="issues", labels="bug-report").json()
    assert {i["number"] for i in got} == {both, only_bug}


def test_contract_issues_unknown_label_names_are_silently_dropped(forge: ForgeDouble, tokens: dict[str, str]) -> None:
    labelled = forge.add_issue(OPS, title="bug", labels=["bug-report"])
    plain = forge.add_issue(OPS, title="plain")
    only_unknown = api(forge, f"/repos/{OPS}/issues", tokens["bob"], type="issues", labels="no-such-label").json()
    assert {i["number"] for i in only_unknown} == {labelled, plain}, "only unknown labels: every issue"
    mixed = api(forge, f"/repos/{OPS}/issues", tokens["bob"], type="issues", labels="bug-report,no-such-label").json()
    assert [i["number"] for i in mixed] == [labelled], "the unknown name is dropped, the known one still filters"


def test_contract_issues_since_keeps_those_updated_at_or_after(
    forge: ForgeDouble, tokens: dict[str, str], clock: FakeClock
) -> None:
    old = forge.add_issue(OPS, title="old")
    clock.now += 100
    new = forge.add_issue(OPS, title="new")
    since = rfc3339(T0 + 100)
    got = api(forge, f"/repos/{OPS}/issues", tokens["bob"], type="issues", since=since).json()
    assert [i["number"] for i in got] == [new], "updated_at == since is included"

    clock.now += 100
    forge.set_labels(OPS, old, ["in-triage"])
    got = api(forge, f"/repos/{OPS}/issues", tokens["bob"], type="issues", since=rfc3339(T0 + 150)).json()
    assert [i["number"] for i in got] == [old], "a label change moves updated_at"
    assert got[0]["updated_at"] == rfc3339(T0 + 200)

    offset = api(forge, f"/repos/{OPS}/issues", tokens["bob"], type="issues", since="2026-01-01T01:01:40+01:00").json()
    assert {i["number"] for i in offset} == {old, new}
    assert api(forge, f"/repos/{OPS}/issues", tokens["bob"], since="yesterday").status_code == 422


def test_contract_issue_get_and_post_comment(forge: ForgeDouble, tokens: dict[str, str], clock: FakeClock) -> None:
    number = forge.add_issue(OPS, title="crash", labels=["bug-report"])
    got = api(forge, f"/repos/{OPS}/issues/{number}", tokens["bob"]).json()
    assert got["number"] == number and got["title"] == "crash"
    assert api(forge, f"/repos/{OPS}/issues/4242", tokens["bob"]).status_code == 404

    clock.now += 30
    url = f"{forge.address}/api/v1/repos/{OPS}/issues/{number}/comments"
    as_bob = {"Authorization": f"token {tokens['bob']}"}
    posted = requests.post(url, json={"body": "reproduce failed"}, headers=as_bob, timeout=5)
    assert posted.status_code == 201
    assert posted.json()["body"] == "reproduce failed" and posted.json()["user"]["login"] == "bob"
    assert [c["body"] for c in forge.comments(OPS, number)] == ["reproduce failed"]
    listed = requests.get(url, headers=as_bob, timeout=5)
    assert [c["body"] for c in listed.json()] == ["reproduce failed"]
    assert api(forge, f"/repos/{OPS}/issues/{number}", tokens["bob"]).json()["updated_at"] == rfc3339(T0 + 30)

    assert requests.post(url, json={"body": "anonymous"}, timeout=5).status_code == 401
    assert requests.post(url, json={"body": ""}, headers=as_bob, timeout=5).status_code == 422
    missing = f"{forge.address}/api/v1/repos/{OPS}/issues/4242/comments"
    assert requests.post(missing, json={"body": "x"}, headers=as_bob, timeout=5).status_code == 404


# -- the double's git ------------------------------------------------------------------------------


def test_double_open_pull_commits_real_files_on_a_branch(bare: Path, forge: ForgeDouble, tmp_path: Path) -> None:
    forge.commit_direct(OPS, author="admin", files={"old.txt": b"old", "dir/keep.txt": b"keep"}, message="more")
    number = forge.open_pull(
        OPS,
        author="bob",
        title="change",
        files={"vault/actions/a.toml": b"id = 'a'\n", "old.txt": None, "dir/new.txt": "new"},
        branch="feature/a",
    )
    clone = tmp_path / "clone"
    git("clone", "-q", f"file://{bare}", str(clone))
    git("checkout", "-q", "feature/a", cwd=clone)
    assert (clone / "vault/actions/a.toml").read_bytes() == b"id = 'a'\n"
    assert (clone / "dir/new.txt").read_text() == "new" and (clone / "dir/keep.txt").read_text() == "keep"
    assert not (clone / "old.txt").exists()
    assert git("log", "-1", "--format=%an <%ae>|%s", cwd=clone) == "bob <bob@noreply.localhost>|change"
    assert git("rev-parse", "HEAD~1", cwd=clone) == forge.head(OPS)
    assert git("ls-remote", str(bare), f"refs/pull/{number}/head").startswith(forge.head(OPS, "feature/a"))


def test_double_merge_after_the_base_moved_and_refuses_a_conflict(bare: Path, forge: ForgeDouble) -> None:
    one = forge.open_pull(OPS, author="bob", title="one", files={"one.txt": b"1"})
    conflicting = forge.open_pull(OPS, author="bob", title="conflict", files={"README.md": b"theirs\n"})
    forge.commit_direct(OPS, author="admin", files={"README.md": b"ours\n"}, message="moved")
    moved = forge.head(OPS)

    merge_sha = forge.merge(OPS, one, merger="admin")
    parents = git("--git-dir", str(bare), "log", "-1", "--format=%P", merge_sha).split()
    assert parents == [moved, forge.head(OPS, "pr-1")]
    assert git("--git-dir", str(bare), "show", f"{merge_sha}:one.txt") == "1"

    with pytest.raises(MergeConflict):
        forge.merge(OPS, conflicting, merger="admin")
    assert forge.head(OPS) == merge_sha, "a refused merge leaves the base alone"
    with pytest.raises(ForgeDoubleError):
        forge.merge(OPS, one, merger="admin")


def test_double_push_to_a_pull_branch_moves_its_head_and_makes_reviews_stale(
    bare: Path, forge: ForgeDouble, tokens: dict[str, str], tmp_path: Path
) -> None:
    number = forge.open_pull(OPS, author="bob", title="x", files={"x.txt": b"x"})
    review = forge.review(OPS, number, user="admin")
    clone = tmp_path / "clone"
    git("clone", "-q", f"file://{bare}", str(clone))
    git("checkout", "-q", f"pr-{number}", cwd=clone)
    (clone / "x.txt").write_text("changed after approval")
    git("commit", "-q", "-am", "sneaky", cwd=clone)
    git("push", "-q", "origin", f"pr-{number}", cwd=clone)
    pushed = git("rev-parse", "HEAD", cwd=clone)

    pull = api(forge, f"/repos/{OPS}/pulls/{number}", tokens["bob"]).json()
    assert pull["head"]["sha"] == pushed, "the pull's head is read from the branch at once"
    reviews = api(forge, f"/repos/{OPS}/pulls/{number}/reviews", tokens["bob"]).json()
    assert [(r["id"], r["stale"]) for r in reviews] == [(review, False)], "stale marking is queued"
    forge.settle()
    reviews = api(forge, f"/repos/{OPS}/pulls/{number}/reviews", tokens["bob"]).json()
    assert [(r["id"], r["stale"]) for r in reviews] == [(review, True)]
    assert git("ls-remote", str(bare), f"refs/pull/{number}/head").startswith(pushed)
    merge_sha = forge.merge(OPS, number, merger="admin")
    assert git("--git-dir", str(bare), "show", f"{merge_sha}:x.txt") == "changed after approval"


def test_double_issues_and_pulls_share_one_number_sequence(forge: ForgeDouble) -> None:
    assert forge.add_issue(OPS, title="a") == 1
    assert forge.open_pull(OPS, author="bob", title="b", files={"b": b"b"}) == 2
    assert forge.add_issue(OPS, title="c") == 3


def test_double_first_pull_into_an_empty_repository_starts_from_an_initial_commit(
    forge: ForgeDouble, tmp_path: Path
) -> None:
    forge.add_repo("disinto/empty", tmp_path / "empty.git")
    number = forge.open_pull("disinto/empty", author="bob", title="first", files={"a.txt": b"a"})
    root = forge.head("disinto/empty")
    assert root is not None
    empty = str(tmp_path / "empty.git")
    assert git("--git-dir", empty, "log", "-1", "--format=%s", root) == "Initial commit"
    merged = forge.merge("disinto/empty", number, merger="admin")
    assert git("--git-dir", str(tmp_path / "empty.git"), "show", f"{merged}:a.txt") == "a"
    with pytest.raises(ForgeDoubleError, match="base branch 'develop' does not exist"):
        forge.open_pull("disinto/empty", author="bob", title="x", files={"b": b"b"}, base="develop")


def test_double_private_repo_is_hidden_from_anonymous_callers(
    forge: ForgeDouble, tokens: dict[str, str], tmp_path: Path
) -> None:
    forge.add_repo("disinto/secret", tmp_path / "secret.git", private=True)
    assert api(forge, "/repos/disinto/secret").status_code == 404
    assert api(forge, "/repos/disinto/secret", tokens["bob"]).status_code == 404, "bob is no collaborator"
    forge.add_collaborator("disinto/secret", "bob", "read")
    assert api(forge, "/repos/disinto/secret", tokens["bob"]).json()["private"] is True
    assert api(forge, "/repos/disinto/secret", tokens["bob"]).json()["empty"] is True
    assert api(forge, "/repos/disinto/secret", tokens["admin"]).status_code == 200, "site admins see everything"


def test_double_git_writes_are_safe_from_many_threads(bare: Path, forge: ForgeDouble) -> None:
    numbers: list[int] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            numbers.append(forge.open_pull(OPS, author=f"dev{i}", title=f"pr {i}", files={f"f{i}.txt": b"%d" % i}))
            forge.commit_direct(OPS, author=f"dev{i}", files={f"direct{i}.txt": b"d"}, message=f"direct {i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(numbers) == list(range(1, 13))
    for number in numbers:
        forge.merge(OPS, number, merger="admin")
    tree = git("--git-dir", str(bare), "ls-tree", "--name-only", forge.head(OPS) or "").split()
    assert {f"f{i}.txt" for i in range(12)} | {f"direct{i}.txt" for i in range(12)} <= set(tree), "no write was lost"


# -- (rev. 2) stale marking is asynchronous --------------------------------------------------------


def post(forge: ForgeDouble, path: str, token: str | None, body: Any) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    return requests.post(f"{forge.address}/api/v1{path}", headers=headers, json=body, timeout=10)


def stale_of(forge: ForgeDouble, number: int, token: str) -> list[bool]:
    return [r["stale"] for r in api(forge, f"/repos/{OPS}/pulls/{number}/reviews", token).json()]


def test_contract_stale_is_marked_asynchronously_and_only_when_the_diff_changed(
    forge: ForgeDouble, tokens: dict[str, str]
) -> None:
    """Follows ``services/pull/pull.go`` (``AddTestPullRequestTask`` queues; ``TestPullRequest`` ->
    ``ValidatePullRequest``: ``MarkReviewsAsStale`` when ``checkIfPRContentChanged`` /
    ``modules/git/diff_compare.go`` ``CheckIfDiffDiffers`` finds a file, then
    ``MarkReviewsAsNotStale`` for the new head) and ``models/issues/review.go``."""
    number = forge.open_pull(OPS, author="bob", title="x", files={"x.txt": b"x"})
    forge.review(OPS, number, user="admin")
    branch = f"pr-{number}"

    # same tree, new commit (a reworded / re-made commit): the diff did not change
    forge.commit_direct(OPS, author="bob", files={}, message="empty", branch=branch)
    assert forge.pending_pushes(OPS) == 1
    forge.settle(OPS)
    assert stale_of(forge, number, tokens["bob"]) == [False], "an unchanged diff leaves reviews fresh"

    # new content: stale, but only after the queue ran
    forge.commit_direct(OPS, author="bob", files={"x.txt": b"changed"}, message="change", branch=branch)
    assert stale_of(forge, number, tokens["bob"]) == [False], "nothing is marked at push time"
    forge.settle()
    assert stale_of(forge, number, tokens["bob"]) == [True]
    assert forge.pending_pushes(OPS) == 0


def test_contract_stale_never_marked_for_a_pull_merged_before_the_queue_ran(
    bare: Path, forge: ForgeDouble, tokens: dict[str, str]
) -> None:
    """Follows ``services/pull/pull.go`` ``TestPullRequest`` (only
    ``models/issues/pull_list.go`` ``GetUnmergedPullRequestsByHeadInfoMax``: unmerged, not closed)
    and ``services/pull/temp_repo.go`` (a merge fetches the head *branch*)."""
    number = forge.open_pull(OPS, author="bob", title="x", files={"x.txt": b"x"})
    approved_at = forge.head(OPS, f"pr-{number}")
    forge.review(OPS, number, user="admin")
    sneaky = forge.commit_direct(OPS, author="bob", files={"x.txt": b"evil"}, message="sneak", branch=f"pr-{number}")
    merge_sha = forge.merge(OPS, number, merger="admin")
    forge.settle()
    reviews = api(forge, f"/repos/{OPS}/pulls/{number}/reviews", tokens["bob"]).json()
    assert [(r["stale"], r["commit_id"]) for r in reviews] == [(False, approved_at)], "fresh forever"
    assert git("--git-dir", str(bare), "show", f"{merge_sha}:x.txt") == "evil", "the push was merged"
    assert git("--git-dir", str(bare), "rev-parse", f"refs/pull/{number}/head") == approved_at, (
        "PushToBaseRepo never ran for the merged pull"
    )
    assert api(forge, f"/repos/{OPS}/pulls/{number}", tokens["bob"]).json()["head"]["sha"] == sneaky


# -- (rev. 2) merge styles -------------------------------------------------------------------------


def parents(bare: Path, sha: str) -> list[str]:
    return git("--git-dir", str(bare), "log", "-1", "--format=%P", sha).split()


def test_contract_merge_style_merge_and_squash(bare: Path, forge: ForgeDouble) -> None:
    """Follows ``services/pull/merge.go`` (``getMergeMessage``), ``merge_merge.go`` (``--no-ff``)
    and ``merge_squash.go`` (one commit, author = the poster, ``<title> (#N)``)."""
    forge.add_user("bob")
    one = forge.open_pull(OPS, author="bob", title="one", files={"one.txt": b"1"})
    base = forge.head(OPS)
    sha = forge.merge(OPS, one, merger="admin")
    assert parents(bare, sha) == [base, forge.head(OPS, f"pr-{one}")]

    two = forge.open_pull(OPS, author="bob", title="two", files={"two.txt": b"2"})
    forge.commit_direct(OPS, author="bob", files={"two.txt": b"22"}, message="more", branch=f"pr-{two}")
    base = forge.head(OPS)
    squashed = forge.merge(OPS, two, merger="admin", style="squash")
    assert parents(bare, squashed) == [base] and forge.head(OPS) == squashed
    fmt = "%an|%cn|%s"
    assert git("--git-dir", str(bare), "log", "-1", f"--format={fmt}", squashed) == f"bob|admin|two (#{two})"
    assert git("--git-dir", str(bare), "show", f"{squashed}:two.txt") == "22"


def test_contract_merge_style_rebase_and_rebase_merge(bare: Path, forge: ForgeDouble) -> None:
    """Follows ``services/pull/merge_rebase.go`` and ``merge_prepare.go`` ``rebaseTrackingOnToBase``
    (no replay when zero commits behind; committer = the doer; no message amend without a template)."""
    forge.add_user("bob")
    # the base has not moved: the head itself is fast-forwarded to
    first = forge.open_pull(OPS, author="bob", title="first", files={"a.txt": b"a"})
    head = forge.head(OPS, f"pr-{first}")
    assert forge.merge(OPS, first, merger="admin", style="rebase") == head == forge.head(OPS)

    # the base moved: new commits, single parents, own messages, committer = merger
    pr = forge.open_pull(OPS, author="bob", title="b", files={"b.txt": b"b"})
    forge.commit_direct(OPS, author="bob", files={"c.txt": b"c"}, message="second commit", branch=f"pr-{pr}")
    forge.commit_direct(OPS, author="admin", files={"base.txt": b"moved"}, message="base moved")
    base = forge.head(OPS)
    old_head = forge.head(OPS, f"pr-{pr}")
    last = forge.merge(OPS, pr, merger="alice", style="rebase")
    assert last != old_head and forge.head(OPS) == last
    log = git("--git-dir", str(bare), "log", "--format=%P|%an|%cn|%s", f"{base}..{last}").splitlines()
    assert [line.split("|")[1:] for line in log] == [["bob", "alice", "second commit"], ["bob", "alice", "b"]]
    assert all(len(line.split("|")[0].split()) == 1 for line in log)
    assert "(#" not in git("--git-dir", str(bare), "log", "-1", "--format=%B", last)

    rm = forge.open_pull(OPS, author="bob", title="rm", files={"d.txt": b"d"})
    forge.commit_direct(OPS, author="admin", files={"base2.txt": b"moved"}, message="base moved again")
    base = forge.head(OPS)
    merge_sha = forge.merge(OPS, rm, merger="admin", style="rebase-merge")
    first_parent, rebased = parents(bare, merge_sha)
    assert first_parent == base and rebased != forge.head(OPS, f"pr-{rm}") and parents(bare, rebased) == [base]
    subject = git("--git-dir", str(bare), "log", "-1", "--format=%s", merge_sha)
    assert subject == f"Merge pull request 'rm' (#{rm}) from pr-{rm} into main"


def test_contract_merge_style_fast_forward_only_and_manually_merged(
    bare: Path, forge: ForgeDouble, tokens: dict[str, str]
) -> None:
    """Follows ``services/pull/merge_ff_only.go`` (``merge --ff-only``) and ``merge_manual.go``
    (``MergedManually``: full id, on the base branch, else "Wrong commit ID"; merged_at = author time)."""
    pr = forge.open_pull(OPS, author="bob", title="ff", files={"f.txt": b"f"})
    head = forge.head(OPS, f"pr-{pr}")
    assert forge.merge(OPS, pr, merger="admin", style="fast-forward-only") == head == forge.head(OPS)

    diverged = forge.open_pull(OPS, author="bob", title="div", files={"g.txt": b"g"})
    forge.commit_direct(OPS, author="admin", files={"h.txt": b"h"}, message="moved")
    with pytest.raises(NotFastForward):
        forge.merge(OPS, diverged, merger="admin", style="fast-forward-only")

    manual = forge.open_pull(OPS, author="bob", title="manual", files={"m.txt": b"m"})
    outside = forge.head(OPS, f"pr-{manual}")
    with pytest.raises(WrongCommitID):
        forge.merge(OPS, manual, merger="alice", style="manually-merged", commit=outside)
    on_base = forge.head(OPS)
    before = forge.head(OPS)
    assert forge.merge(OPS, manual, merger="alice", style="manually-merged", commit=on_base) == on_base
    assert forge.head(OPS) == before, "nothing is written"
    got = api(forge, f"/repos/{OPS}/pulls/{manual}", tokens["bob"]).json()
    assert got["merged"] and got["merge_commit_sha"] == on_base and got["merged_by"]["login"] == "alice"
    authored = int(git("--git-dir", str(bare), "log", "-1", "--format=%at", on_base))
    assert got["merged_at"] == rfc3339(authored)


def test_contract_merge_endpoint_status_codes(bare: Path, forge: ForgeDouble, tokens: dict[str, str]) -> None:
    """Follows ``routers/api/v1/repo/pull.go`` ``MergePullRequest``, ``services/pull/check.go``
    ``CheckPullMergeable`` / ``merge.go`` ``IsUserAllowedToMerge`` (write on code),
    ``routers/api/v1/api.go`` ``bind`` (422) and ``services/forms/repo_form.go``."""
    forge.add_collaborator(OPS, "alice", "write")
    pr = forge.open_pull(OPS, author="bob", title="api", files={"api.txt": b"a"})
    path = f"/repos/{OPS}/pulls/{pr}/merge"
    assert post(forge, path, None, {"Do": "merge"}).status_code == 401
    assert post(forge, path, tokens["alice"], {}).json()["message"] == "[Do]: Required"
    assert post(forge, path, tokens["alice"], {}).status_code == 422
    refused = post(forge, path, tokens["bob"], {"Do": "merge"})
    assert (refused.status_code, refused.json()["message"]) == (405, "User not allowed to merge PR")
    stale_head = post(forge, path, tokens["alice"], {"Do": "merge", "head_commit_id": "0" * 40})
    assert (stale_head.status_code, stale_head.json()["message"]) == (409, "head out of date")

    done = post(forge, path, tokens["alice"], {"Do": "squash", "MergeMessageField": "extra words"})
    assert done.status_code == 200 and done.content == b""
    got = api(forge, f"/repos/{OPS}/pulls/{pr}", tokens["bob"]).json()
    assert got["merged_by"]["login"] == "alice"
    message = git("--git-dir", str(bare), "log", "-1", "--format=%B", got["merge_commit_sha"])
    assert message.strip() == f"api (#{pr})\n\nextra words", "the API uses the title only, then MergeMessageField"
    again = post(forge, path, tokens["alice"], {"Do": "merge"})
    assert (again.status_code, again.json()["message"]) == (405, "")

    closed = forge.open_pull(OPS, author="bob", title="closed", files={"c.txt": b"c"})
    forge.close_pull(OPS, closed)
    assert post(forge, f"/repos/{OPS}/pulls/{closed}/merge", tokens["alice"], {"Do": "merge"}).status_code == 404
    assert post(forge, f"/repos/{OPS}/pulls/999/merge", tokens["alice"], {"Do": "merge"}).status_code == 404

    manual = forge.open_pull(OPS, author="bob", title="manual", files={"mm.txt": b"m"})
    wrong = post(forge, f"/repos/{OPS}/pulls/{manual}/merge", tokens["alice"], {"Do": "manually-merged",
                                                                                "MergeCommitID": "abc"})
    assert (wrong.status_code, wrong.json()) == (409, {})
    ok = post(forge, f"/repos/{OPS}/pulls/{manual}/merge", tokens["alice"],
              {"Do": "manually-merged", "MergeCommitID": forge.head(OPS)})
    assert ok.status_code == 200


# -- (rev. 2) scheduled auto-merge and the timeline ------------------------------------------------


def test_contract_scheduled_merge_takes_the_head_of_merge_time_and_is_on_the_timeline(
    bare: Path, forge: ForgeDouble, tokens: dict[str, str]
) -> None:
    """Follows ``services/automerge/automerge.go`` (``ScheduleAutoMerge`` + ``CreateAutoMergeComment``;
    ``handlePullRequestAutoMerge`` merges as the scheduling doer with an empty expected head),
    ``models/issues/comment.go`` (``commentStrings``) and ``routers/api/v1/repo/issue_comment.go``
    ``ListIssueCommentsAndTimeline``."""
    forge.add_collaborator(OPS, "alice", "write")
    pr = forge.open_pull(OPS, author="bob", title="auto", files={"auto.txt": b"1"})
    forge.review(OPS, pr, user="admin")
    scheduled = post(forge, f"/repos/{OPS}/pulls/{pr}/merge", tokens["alice"],
                     {"Do": "merge", "merge_when_checks_succeed": True})
    assert scheduled.status_code == 201
    twice = post(forge, f"/repos/{OPS}/pulls/{pr}/merge", tokens["alice"],
                 {"Do": "merge", "merge_when_checks_succeed": True})
    assert twice.status_code == 409 and "already scheduled" in twice.json()["message"]

    late = forge.commit_direct(OPS, author="bob", files={"auto.txt": b"2"}, message="late", branch=f"pr-{pr}")
    assert forge.run_scheduled_merges(OPS) == [pr]
    got = api(forge, f"/repos/{OPS}/pulls/{pr}", tokens["bob"]).json()
    assert got["merged_by"]["login"] == "alice" and parents(bare, got["merge_commit_sha"])[1] == late

    timeline = api(forge, f"/repos/{OPS}/issues/{pr}/timeline", tokens["bob"])
    events = timeline.json()
    assert timeline.headers["X-Total-Count"] == str(len(events)) and "Link" not in timeline.headers
    assert [(e["type"], e["user"]["login"]) for e in events] == [
        ("review", "admin"), ("pull_scheduled_merge", "alice"), ("merge_pull", "alice")
    ]
    assert {"id", "type", "user", "created_at", "body", "review_id"} <= events[0].keys()
    assert events[0]["review_id"] > 0
    page = api(forge, f"/repos/{OPS}/issues/{pr}/timeline", tokens["bob"], limit=1, page=2).json()
    assert [e["type"] for e in page] == ["pull_scheduled_merge"]
    assert api(forge, f"/repos/{OPS}/issues/{pr}/timeline", tokens["bob"], page=9).json() is None, "nil slice"


def test_contract_timeline_has_pull_push_events_after_settle(forge: ForgeDouble, tokens: dict[str, str]) -> None:
    """Follows ``services/pull/pull.go`` ``TestPullRequest`` -> ``services/pull/comment.go``
    ``CreatePushPullComment`` (``PushActionContent``: ``is_force_push``, ``commit_ids``)."""
    pr = forge.open_pull(OPS, author="bob", title="push", files={"p.txt": b"1"})
    old = forge.head(OPS, f"pr-{pr}")
    new = forge.commit_direct(OPS, author="bob", files={"p.txt": b"2"}, message="two", branch=f"pr-{pr}")
    assert api(forge, f"/repos/{OPS}/issues/{pr}/timeline", tokens["bob"]).json() is None
    forge.settle()
    (event,) = api(forge, f"/repos/{OPS}/issues/{pr}/timeline", tokens["bob"]).json()
    assert event["type"] == "pull_push" and event["user"]["login"] == "bob"
    assert json.loads(event["body"]) == {"is_force_push": False, "commit_ids": [new]}
    assert old != new


# -- (rev. 2) merge_base, head, refs/pull ----------------------------------------------------------


def test_contract_merge_base_and_head_after_merge_and_branch_deletion(
    bare: Path, forge: ForgeDouble, tokens: dict[str, str]
) -> None:
    """Follows ``services/pull/patch.go`` ``testPatch`` (``pr.MergeBase`` = ``merge-base base head``,
    run by the checker queue), ``models/issues/pull.go`` ``SetMerged`` (saves the loaded
    ``merge_base``: frozen at merge, every style) and ``services/convert/pull.go``
    ``ToAPIPullRequest`` (head read from the branch; ``refs/pull/N/head`` once it is gone)."""
    pr = forge.open_pull(OPS, author="bob", title="mb", files={"mb.txt": b"1"})
    opened_base = forge.head(OPS)
    assert api(forge, f"/repos/{OPS}/pulls/{pr}", tokens["bob"]).json()["merge_base"] == opened_base

    forge.commit_direct(OPS, author="admin", files={"other.txt": b"o"}, message="base moves")
    forge.commit_direct(OPS, author="bob", files={}, message="merge-ish", branch=f"pr-{pr}")
    assert api(forge, f"/repos/{OPS}/pulls/{pr}", tokens["bob"]).json()["merge_base"] == opened_base
    forge.settle()
    assert api(forge, f"/repos/{OPS}/pulls/{pr}", tokens["bob"]).json()["merge_base"] == opened_base

    for style in ("rebase", "squash"):
        other = forge.open_pull(OPS, author="bob", title=style, files={f"{style}.txt": b"s"})
        forge.commit_direct(OPS, author="admin", files={f"moved-{style}.txt": b"m"}, message="moved")
        before = api(forge, f"/repos/{OPS}/pulls/{other}", tokens["bob"]).json()["merge_base"]
        forge.merge(OPS, other, merger="admin", style=style)
        forge.settle()
        after = api(forge, f"/repos/{OPS}/pulls/{other}", tokens["bob"]).json()
        assert after["merge_base"] == before, f"{style}: merge_base is not recomputed after the merge"

    head = forge.head(OPS, f"pr-{pr}")
    forge.merge(OPS, pr, merger="admin")
    forge.delete_branch(OPS, f"pr-{pr}")
    got = api(forge, f"/repos/{OPS}/pulls/{pr}", tokens["bob"]).json()
    assert got["head"]["ref"] == f"refs/pull/{pr}/head" and got["head"]["label"] == f"pr-{pr}"
    assert got["head"]["sha"] == head, "the settled push moved refs/pull/N/head"
    assert git("ls-remote", str(bare), f"refs/pull/{pr}/head").startswith(head), "still fetchable"


# -- (rev. 2) collaborators and permissions --------------------------------------------------------


def test_contract_collaborator_permission_endpoint(
    forge: ForgeDouble, tokens: dict[str, str], tmp_path: Path
) -> None:
    """Follows ``routers/api/v1/repo/collaborators.go`` ``GetRepoPermissions``,
    ``models/perm/access/repo_permission.go`` ``GetUserRepoPermission`` (site admin and owner:
    ``AccessModeOwner``), ``models/perm/access_mode.go`` ``String`` and ``services/convert/user.go``."""
    forge.add_collaborator(OPS, "alice", "admin")
    forge.add_user("carol")
    forge.add_collaborator(OPS, "carol", "write")

    def perm(user: str, token: str | None) -> requests.Response:
        return api(forge, f"/repos/{OPS}/collaborators/{user}/permission", token)

    got = perm("carol", tokens["admin"]).json()
    assert (got["permission"], got["role_name"], got["user"]["login"]) == ("write", "write", "carol")
    assert perm("bob", tokens["admin"]).json()["permission"] == "read", "public repo, no collaborator"
    assert perm("admin", tokens["admin"]).json()["permission"] == "owner", "site admin"
    assert perm("disinto", tokens["admin"]).json()["permission"] == "owner", "the repository owner"
    assert perm("carol", tokens["alice"]).json()["permission"] == "write", "a repo admin may ask"
    assert perm("bob", tokens["bob"]).json()["permission"] == "read", "anyone may ask about themself"
    denied = perm("carol", tokens["bob"])
    assert (denied.status_code, denied.json()["message"]) == (403, forge_module.PERMISSION_DENIED_OTHERS)
    missing = perm("nobody", tokens["admin"])
    assert (missing.status_code, missing.json()["message"]) == (404, "user does not exist [uid: 0, name: nobody]")
    assert perm("carol", None).status_code == 401

    forge.add_repo("disinto/secret", tmp_path / "secret.git", private=True)
    assert forge.permission("disinto/secret", "bob") == "none"
    assert api(forge, "/repos/disinto/secret/collaborators/bob/permission", tokens["bob"]).status_code == 404


# -- (rev. 2) renames ------------------------------------------------------------------------------


def test_contract_rename_frees_the_old_name_and_admin_is_reserved(forge: ForgeDouble, tokens: dict[str, str]) -> None:
    """Follows ``services/user/user.go`` ``RenameUser``, ``models/user/user.go`` ``reservedUsernames`` /
    ``IsUsableUsername``, ``models/db/name.go`` and ``services/context/user.go`` (redirect)."""
    number = forge.open_pull(OPS, author="bob", title="x", files={"x.txt": b"x"})
    forge.review(OPS, number, user="alice")
    alice_id = api(forge, "/users/alice", tokens["bob"]).json()["id"]
    forge.rename_user("alice", "vault-bot")
    assert api(forge, "/user", tokens["alice"]).json()["login"] == "vault-bot", "tokens follow the user"
    assert [r["user"]["login"] for r in api(forge, f"/repos/{OPS}/pulls/{number}/reviews", tokens["bob"]).json()] == [
        "vault-bot"
    ]
    moved = requests.get(f"{forge.address}/api/v1/users/alice", timeout=5, allow_redirects=False)
    assert moved.status_code == 307 and moved.headers["Location"].endswith("/api/v1/users/vault-bot")

    forge.register_user("alice")
    new_alice = api(forge, "/users/alice", tokens["bob"]).json()
    assert new_alice["login"] == "alice" and new_alice["id"] != alice_id
    forge.rename_user("bob", "robert")
    assert api(forge, f"/repos/{OPS}/pulls/{number}", tokens["admin"]).json()["user"]["login"] == "robert"

    for reserved in ("admin", "Admin", "api", "ghost", "x.keys"):
        with pytest.raises(NameRefused):
            forge.register_user(reserved)
        with pytest.raises(NameRefused):
            forge.rename_user("robert", reserved)
    with pytest.raises(NameRefused, match="already exists"):
        forge.rename_user("robert", "alice")


# -- (rev. 2) token scopes ---------------------------------------------------------------------------


def test_contract_token_scopes_per_route(forge: ForgeDouble, tokens: dict[str, str], tmp_path: Path) -> None:
    """Follows ``routers/api/v1/api.go`` (``tokenRequiresScopes`` per group, level by method),
    ``routers/api/v1/permissions/token_requires_scopes.go`` (the message),
    ``check_token_public_only.go`` and ``models/auth/access_token_scope.go`` (write implies read)."""
    number = forge.open_pull(OPS, author="bob", title="x", files={"x.txt": b"x"})
    repo_only = forge.new_token("bob", ["read:repository"])
    issue_rw = forge.new_token("bob", ["write:issue"])

    def refused(resp: requests.Response, scope: str) -> bool:
        return resp.status_code == 403 and resp.json()["message"] == (
            f"token does not have at least one of required scope(s): [{scope}]"
        )

    assert api(forge, f"/repos/{OPS}/pulls/{number}", repo_only).status_code == 200
    assert api(forge, f"/repos/{OPS}/pulls/{number}/reviews", repo_only).status_code == 200
    assert refused(api(forge, "/user", repo_only), "read:user")
    assert refused(api(forge, "/users/alice", repo_only), "read:user")
    assert refused(api(forge, f"/repos/{OPS}/issues", repo_only), "read:issue")
    assert refused(api(forge, f"/repos/{OPS}/labels", repo_only), "read:issue")
    assert refused(api(forge, f"/repos/{OPS}/issues/{number}/timeline", repo_only), "read:issue")
    assert refused(post(forge, f"/repos/{OPS}/pulls/{number}/merge", repo_only, {"Do": "merge"}), "write:repository")
    assert refused(post(forge, f"/repos/{OPS}/issues/{number}/comments", repo_only, {"body": "x"}), "write:issue")
    assert refused(api(forge, "/repos/nobody/nothing", issue_rw), "read:repository"), "scopes before 404"

    assert api(forge, f"/repos/{OPS}/issues", issue_rw).status_code == 200, "write implies read"
    assert post(forge, f"/repos/{OPS}/issues/{number}/comments", issue_rw, {"body": "x"}).status_code == 201
    assert api(forge, "/user", forge.new_token("bob")).status_code == 200, "None means all"
    with pytest.raises(ValueError):
        forge.new_token("bob", ["read:everything"])

    forge.add_repo("disinto/secret", tmp_path / "secret.git", private=True)
    forge.add_collaborator("disinto/secret", "bob", "read")
    public_only = forge.new_token("bob", ["read:repository", "public-only"])
    assert api(forge, f"/repos/{OPS}", public_only).status_code == 200
    limited = api(forge, "/repos/disinto/secret", public_only)
    assert (limited.status_code, limited.json()["message"]) == (403, "token scope is limited to public repos")
