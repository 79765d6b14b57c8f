"""The Forgejo client against the Forgejo double: values, pagination, admin look-ups, errors."""

from __future__ import annotations

import logging
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from reconciler.clients.errors import NotFoundError, PermanentError, TransientError
from reconciler.clients.forge import ForgeClient
from doubles.forge import ForgeDouble, rfc3339
from reconciler.facts import Issue, PullRequest
from reconciler.settings import ForgeSettings

OPS = "disinto/ops"
PROJECT = "disinto/project"
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def start_forge(tmp_path: Path, clock: FakeClock, **kwargs: int) -> ForgeDouble:
    forge = ForgeDouble(clock=clock, **kwargs)
    forge.start()
    forge.add_repo(OPS, tmp_path / "ops.git")
    forge.add_repo(PROJECT, tmp_path / "project.git")
    forge.commit_direct(OPS, author="admin", files={"README.md": b"ops\n"}, message="initial")
    return forge


@pytest.fixture
def forge(tmp_path: Path, clock: FakeClock) -> Iterator[ForgeDouble]:
    double = start_forge(tmp_path, clock)
    yield double
    double.stop()


def settings_for(forge: ForgeDouble, **overrides: object) -> ForgeSettings:
    values: dict[str, object] = {
        "url": forge.address,
        "token": forge.add_user("vault-bot"),
        "admin_token": forge.add_user("siteadmin", is_admin=True),
        "ops_repo": OPS,
        "repo": PROJECT,
        "admin_users": ("vault-bot", "admin"),
        "timeout": 2.0,
    }
    values.update(overrides)
    return ForgeSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def client(forge: ForgeDouble, clock: FakeClock) -> ForgeClient:
    forge.add_user("alice", is_admin=True)
    forge.add_user("bob")
    return ForgeClient(settings_for(forge), clock=clock, sleep=lambda _: None)


# -- identity -------------------------------------------------------------------------------------


def test_own_login_is_the_token_owner_asked_once(forge: ForgeDouble, client: ForgeClient) -> None:
    assert client.own_login() == "vault-bot"
    assert client.own_login() == "vault-bot"
    assert len(forge.calls_to("GET", r"/api/v1/user")) == 1


# -- pull requests ----------------------------------------------------------------------------------


def test_pull_reads_author_and_merger_from_user_and_merged_by(forge: ForgeDouble, client: ForgeClient) -> None:
    number = forge.open_pull(OPS, author="bob", title="add action", files={"vault/actions/a.toml": b"id = 'a'\n"})
    opened = client.pull(OPS, number)
    assert opened is not None and opened.merge_base == forge.head(OPS), "merge_base: the fork point the diff shows"
    assert opened == PullRequest(
        number=number,
        state="open",
        merged=False,
        author="bob",
        merged_by=None,
        merge_commit_sha=None,
        base_ref="main",
        head_ref=f"pr-{number}",
        head_sha=forge.head(OPS, f"pr-{number}") or "",
        merged_at=None,
        title="add action",
        merge_base=opened.merge_base,
    )
    sha = forge.merge(OPS, number, merger="alice")
    merged = client.pull(OPS, number)
    assert merged is not None
    assert (merged.state, merged.merged, merged.author, merged.merged_by) == ("closed", True, "bob", "alice")
    assert merged.merge_commit_sha == sha and merged.merged_at
    assert merged.merged_by_id == forge.user_id("alice")


def test_pull_is_none_when_missing_or_an_issue(forge: ForgeDouble, client: ForgeClient) -> None:
    issue = forge.add_issue(OPS, title="not a pull")
    assert client.pull(OPS, 999) is None
    assert client.pull(OPS, issue) is None


def test_a_missing_repository_is_not_mistaken_for_a_missing_pull(forge: ForgeDouble, client: ForgeClient) -> None:
    with pytest.raises(TransientError, match="no repository disinto/typo"):
        client.pull("disinto/typo", 1)
    with pytest.raises(TransientError, match="check FORGE_OPS_REPO"):
        client.pull_for_commit("disinto/typo", "a" * 40)
    assert client.pull(OPS, 77) is None
    assert client.issue(OPS, 78) is None
    assert len(forge.calls_to("GET", rf"/api/v1/repos/{OPS}")) == 1, "the repository is checked once"


def test_pull_for_commit_only_for_a_merge_commit(forge: ForgeDouble, client: ForgeClient) -> None:
    number = forge.open_pull(OPS, author="bob", title="a", files={"a.toml": b"a"})
    branch_commit = forge.head(OPS, f"pr-{number}") or ""
    merge_sha = forge.merge(OPS, number, merger="alice")
    forged = forge.commit_direct(
        OPS,
        author="bob",
        files={"b.toml": b"b"},
        message=f"Merge pull request 'a' (#{number}) from pr-{number} into main",
    )
    found = client.pull_for_commit(OPS, merge_sha)
    assert found is not None and found.number == number and found.merged_by == "alice"
    assert client.pull_for_commit(OPS, branch_commit) is None
    assert client.pull_for_commit(OPS, forged) is None, "a merge message is text, not proof"


# -- reviews ------------------------------------------------------------------------------------------


def test_reviews_come_from_every_page_in_order(forge: ForgeDouble, client: ForgeClient, clock: FakeClock) -> None:
    number = forge.open_pull(OPS, author="bob", title="a", files={"a": b"a"})
    ids = []
    for i in range(61):
        clock.now += 1
        ids.append(forge.review(OPS, number, user=f"user{i}", state="COMMENT"))
    stale = forge.review(OPS, number, user="alice", state="APPROVED")
    forge.mark_stale(OPS, stale)
    dismissed = forge.review(OPS, number, user="admin", state="REQUEST_CHANGES")
    forge.dismiss(OPS, dismissed)

    reviews = client.reviews(OPS, number)
    assert [r.id for r in reviews] == ids + [stale, dismissed]
    last_two = {r.id: r for r in reviews[-2:]}
    assert (last_two[stale].user, last_two[stale].state, last_two[stale].stale, last_two[stale].official) == (
        "alice",
        "APPROVED",
        True,
        True,
    )
    assert last_two[dismissed].dismissed is True and last_two[dismissed].state == "REQUEST_CHANGES"
    assert last_two[stale].commit_id == forge.head(OPS, f"pr-{number}")
    assert reviews[0].submitted_at == rfc3339(T0 + 1)


def test_reviews_survive_a_server_that_caps_pages_below_the_asked_limit(tmp_path: Path, clock: FakeClock) -> None:
    forge = start_forge(tmp_path, clock, max_page_size=7)
    try:
        client = ForgeClient(settings_for(forge), clock=clock, sleep=lambda _: None)
        number = forge.open_pull(OPS, author="bob", title="a", files={"a": b"a"})
        for i in range(20):
            forge.review(OPS, number, user=f"user{i}", state="APPROVED")
        for i in range(25):
            forge.add_issue(PROJECT, title=f"bug {i}", labels=["bug-report"])
        assert len(client.reviews(OPS, number)) == 20
        assert len(client.issues(PROJECT, labels=["bug-report"])) == 25
    finally:
        forge.stop()


def test_reviews_of_a_missing_pull_request_are_not_found(client: ForgeClient) -> None:
    with pytest.raises(NotFoundError):
        client.reviews(OPS, 404)


# -- is_admin -------------------------------------------------------------------------------------------


def test_forge_admin_users_grant_nothing_the_forge_does_not_confirm(forge: ForgeDouble, client: ForgeClient) -> None:
    """FORGE_ADMIN_USERS=vault-bot,admin: any name but Forgejo's reserved ones can be registered."""
    forge.add_user("admin")  # the double lets tests take a reserved name; a plain user either way
    assert client.is_admin("admin") is False
    assert client.is_admin("Vault-Bot") is False
    assert len(forge.calls_to("GET", r"/api/v1/users/.*")) == 2


def test_is_admin_counts_admins_of_the_ops_repo(forge: ForgeDouble, client: ForgeClient) -> None:
    forge.add_user("carol")
    forge.add_user("dan")
    forge.add_collaborator(OPS, "carol", "admin")
    forge.add_collaborator(OPS, "dan", "write")
    assert client.is_admin("carol") is True
    assert client.is_admin("dan") is False
    assert client.repo_permission(OPS, "dan") == "write"
    assert client.repo_permission(OPS, OPS.split("/")[0]) == "admin", "Forgejo says 'owner'"
    assert client.repo_permission(OPS, "nobody-at-all") == "none"


def test_is_admin_is_tied_to_the_user_id(forge: ForgeDouble, client: ForgeClient, clock: FakeClock) -> None:
    """A renamed admin's old login, registered by someone else, is not the admin it was."""
    forge.add_user("erin")
    forge.add_collaborator(OPS, "erin", "admin")
    old_id = forge.user_id("erin")
    assert client.is_admin("erin", old_id) is True
    forge.rename_user("erin", "erin2")
    forge.register_user("erin")
    clock.now += 61
    assert client.is_admin("erin", old_id) is False
    assert client.is_admin("erin2", old_id) is True


def test_timeline_types_read_every_page(forge: ForgeDouble, client: ForgeClient) -> None:
    number = forge.open_pull(OPS, author="bob", title="t", files={"t.txt": b"t"})
    for i in range(60):
        forge.add_comment(OPS, number, user="bob", body=f"c{i}")
    forge.schedule_merge(OPS, number, by="alice")
    types = client.timeline_types(OPS, number)
    assert types.count("comment") == 60 and "pull_scheduled_merge" in types


def test_is_admin_asks_with_the_admin_token_and_remembers_briefly(
    forge: ForgeDouble, client: ForgeClient, clock: FakeClock
) -> None:
    assert client.is_admin("alice") is True
    assert client.is_admin("bob") is False
    assert client.is_admin("nobody") is False
    lookups = forge.calls_to("GET", r"/api/v1/users/.*")
    assert len(lookups) == 3
    assert all(call.header("authorization") == f"token {forge.token_for('siteadmin')}" for call in lookups)

    forge.set_admin("bob", True)
    assert client.is_admin("bob") is False, "cached"
    clock.now += 61
    assert client.is_admin("bob") is True, "asked again after the cache expired"
    assert len(forge.calls_to("GET", r"/api/v1/users/.*")) == 4


def test_is_admin_fails_closed_and_warns_when_the_admin_token_is_not_an_admins(
    forge: ForgeDouble, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    forge.add_user("alice", is_admin=True)
    client = ForgeClient(settings_for(forge, admin_token=forge.add_user("plain")), clock=clock, sleep=lambda _: None)
    with caplog.at_level(logging.WARNING, logger="reconciler.clients.forge"):
        assert client.is_admin("alice") is False
    assert "FORGE_ADMIN_TOKEN belongs to plain" in caplog.text
    assert forge.token_for("plain") not in caplog.text


# -- issues -------------------------------------------------------------------------------------------------


def test_issues_come_from_every_page_and_carry_their_fields(forge: ForgeDouble, client: ForgeClient) -> None:
    numbers = [forge.add_issue(PROJECT, title=f"bug {i}", body=f"body {i}", labels=["bug-report"]) for i in range(73)]
    forge.add_issue(PROJECT, title="closed", labels=["bug-report"], state="closed")
    issues = client.issues(PROJECT, labels=["bug-report"])
    assert sorted(i.number for i in issues) == numbers
    first = next(i for i in issues if i.number == numbers[0])
    assert first == Issue(
        number=numbers[0], title="bug 0", body="body 0", state="open", labels=("bug-report",), updated_at=rfc3339(T0)
    )
    assert len(client.issues(PROJECT, state="all")) == 74
    assert [i.title for i in client.issues(PROJECT, state="closed")] == ["closed"]


def test_issues_check_labels_again_because_the_forge_drops_unknown_ones(
    forge: ForgeDouble, client: ForgeClient
) -> None:
    forge.add_issue(PROJECT, title="bug", labels=["bug-report"])
    triage = forge.add_issue(PROJECT, title="triage", labels=["bug-report", "in-triage"])
    assert client.issues(PROJECT, labels=["in-progress"]) == [], "the forge alone would return every issue"
    assert [i.number for i in client.issues(PROJECT, labels=["bug-report", "in-triage"])] == [triage]
    assert client.issues(PROJECT, labels=["bug-report", "no-such-label"]) == []


def test_issues_leave_pull_requests_out(forge: ForgeDouble, client: ForgeClient) -> None:
    forge.commit_direct(PROJECT, author="bob", files={"a": b"a"}, message="init")
    pull = forge.open_pull(PROJECT, author="bob", title="a pull", files={"b": b"b"})
    forge.set_labels(PROJECT, pull, ["bug-report"])
    issue = forge.add_issue(PROJECT, title="an issue", labels=["bug-report"])
    assert [i.number for i in client.issues(PROJECT, labels=["bug-report"])] == [issue]


def test_issues_since_returns_those_updated_at_or_after(
    forge: ForgeDouble, client: ForgeClient, clock: FakeClock
) -> None:
    old = forge.add_issue(PROJECT, title="old", labels=["bug-report"])
    clock.now += 120
    new = forge.add_issue(PROJECT, title="new", labels=["bug-report"])
    assert [i.number for i in client.issues(PROJECT, since=rfc3339(T0 + 120))] == [new]
    clock.now += 60
    forge.set_labels(PROJECT, old, ["bug-report", "in-triage"])
    since = datetime.fromtimestamp(T0 + 150, timezone.utc)
    assert [i.number for i in client.issues(PROJECT, since=since)] == [old]
    with pytest.raises(ValueError):
        client.issues(PROJECT, since=datetime(2026, 1, 1))


def test_issue_reads_one_and_is_none_for_missing_or_pull(forge: ForgeDouble, client: ForgeClient) -> None:
    number = forge.add_issue(PROJECT, title="crash", body="Decomposed from #12", labels=["bug-report"])
    got = client.issue(PROJECT, number)
    assert got is not None and (got.title, got.body, got.labels) == ("crash", "Decomposed from #12", ("bug-report",))
    assert client.issue(PROJECT, 999) is None
    pull = forge.open_pull(OPS, author="bob", title="p", files={"p": b"p"})
    assert client.issue(OPS, pull) is None


def test_comment_posts_once_and_can_skip_a_marked_duplicate(forge: ForgeDouble, client: ForgeClient) -> None:
    number = forge.add_issue(PROJECT, title="crash")
    client.comment(PROJECT, number, "reproduce failed <!-- run:r1 -->", unless_marked="<!-- run:r1 -->")
    client.comment(PROJECT, number, "reproduce failed <!-- run:r1 -->", unless_marked="<!-- run:r1 -->")
    comments = forge.comments(PROJECT, number)
    assert [(c["user"]["login"], c["body"]) for c in comments] == [("vault-bot", "reproduce failed <!-- run:r1 -->")]
    with pytest.raises(NotFoundError):
        client.comment(PROJECT, 999, "nobody reads this")


# -- errors -----------------------------------------------------------------------------------------------------


def test_a_rejected_token_is_permanent_and_names_the_setting_not_the_token(forge: ForgeDouble) -> None:
    client = ForgeClient(settings_for(forge, token="wrong-token-123"), sleep=lambda _: None)
    with pytest.raises(PermanentError) as caught:
        client.own_login()
    assert not isinstance(caught.value, TransientError)
    message = str(caught.value)
    assert message == f"forge token rejected by {forge.address}: check FORGE_TOKEN"
    assert caught.value.system == "forge"
    assert "wrong-token-123" not in message and "wrong-token-123" not in repr(caught.value.__cause__)
    assert len(forge.calls_to("GET", r"/api/v1/user")) == 1, "a rejected token is not retried"


def test_a_rejected_admin_token_names_forge_admin_token(forge: ForgeDouble) -> None:
    client = ForgeClient(settings_for(forge, admin_token="stale-admin"), sleep=lambda _: None)
    with pytest.raises(PermanentError, match="check FORGE_ADMIN_TOKEN"):
        client.is_admin("someone")


def test_a_server_error_on_a_read_is_retried(forge: ForgeDouble, client: ForgeClient) -> None:
    number = forge.open_pull(OPS, author="bob", title="a", files={"a": b"a"})
    forge.faults.fail_next(1, "error")
    forge.faults.fail_next(1, "drop")
    pull = client.pull(OPS, number)
    assert pull is not None and pull.number == number
    assert len(forge.calls_to("GET", rf"/api/v1/repos/{OPS}/pulls/{number}")) == 3


def test_a_server_that_keeps_failing_is_transient(forge: ForgeDouble, client: ForgeClient) -> None:
    forge.faults.fail_next(3, "error")
    with pytest.raises(TransientError) as caught:
        client.issues(PROJECT)
    assert caught.value.system == "forge" and "500" in str(caught.value)
    assert len(forge.calls_to("GET", rf"/api/v1/repos/{PROJECT}/issues")) == 3


def test_an_unreachable_forge_is_transient(forge: ForgeDouble) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    client = ForgeClient(settings_for(forge, url=f"http://127.0.0.1:{free_port}"), sleep=lambda _: None)
    with pytest.raises(TransientError, match="cannot reach the forge"):
        client.pull(OPS, 1)


def test_a_forge_that_does_not_answer_in_time_is_transient(forge: ForgeDouble) -> None:
    client = ForgeClient(settings_for(forge, timeout=0.2), attempts=1, sleep=lambda _: None)
    forge.faults.hold(lambda req: req.path.endswith("/issues"))
    try:
        with pytest.raises(TransientError, match="did not answer"):
            client.issues(PROJECT)
    finally:
        forge.faults.release()


def test_a_comment_is_not_retried_because_it_may_have_been_stored(forge: ForgeDouble, client: ForgeClient) -> None:
    number = forge.add_issue(PROJECT, title="crash")
    forge.faults.fail_next(1, "apply-then-drop", match=lambda req: req.method == "POST")
    with pytest.raises(TransientError):
        client.comment(PROJECT, number, "sidecar failed")
    assert len(forge.calls_to("POST", rf"/api/v1/repos/{PROJECT}/issues/{number}/comments")) == 1
    assert [c["body"] for c in forge.comments(PROJECT, number)] == ["sidecar failed"]


def test_credentials_in_forge_url_never_reach_a_message(forge: ForgeDouble) -> None:
    port = forge.port
    client = ForgeClient(
        settings_for(forge, url=f"http://user:hunter2@127.0.0.1:{port}", token="bad"), sleep=lambda _: None
    )
    with pytest.raises(PermanentError) as caught:
        client.own_login()
    assert "hunter2" not in str(caught.value) and f"127.0.0.1:{port}" in str(caught.value)


def test_the_client_needs_a_url_and_a_token() -> None:
    with pytest.raises(PermanentError, match="FORGE_URL"):
        ForgeClient(ForgeSettings(url=None, token="t"))
    with pytest.raises(PermanentError, match="FORGE_TOKEN"):
        ForgeClient(ForgeSettings(url="http://forge", token=None))
