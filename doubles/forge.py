"""A Forgejo protocol double (API v1) whose repositories are real bare git repositories.

What it serves, under ``/api/v1`` (see ``shared/docs/CONTRACTS.md``, Forgejo):

* ``GET /user``, ``GET /users/{name}`` - ``is_admin`` is truthful only to a site admin or to
  the user looking up themself, as Forgejo's ``convert.ToUser`` does.
* ``GET /repos/{o}/{r}``, ``GET /repos/{o}/{r}/labels``.
* ``GET /repos/{o}/{r}/pulls/{n}`` - the merger is ``merged_by`` (Forgejo has no separate merge-user field),
  ``user`` is the author. ``head`` is read from the head *branch* at each request (a push
  shows at once, before or after the merge); once the branch is deleted ``head.ref`` is
  ``refs/pull/<n>/head`` and ``head.sha`` the commit that ref holds (``convert.ToAPIPullRequest``).
  ``merge_base`` is the checker's ``merge-base base head`` (recomputed by ``settle()``) and is
  frozen by the merge, whatever the style (``SetMerged`` saves the loaded value).
* ``POST /repos/{o}/{r}/pulls/{n}/merge`` ``{"Do", "MergeTitleField", "MergeMessageField",
  "MergeCommitID", "head_commit_id", "merge_when_checks_succeed", "delete_branch_after_merge"}``
  (``routers/api/v1/repo/pull.go``): 200 empty; 201 scheduled; 401 anonymous; 404 missing or
  *closed* pull; 405 merged (message ``""``), no write access ("User not allowed to merge PR"),
  a conflict ("Please try again later"); 409 ``head out of date``, an already scheduled merge,
  a rebase conflict, ``manually-merged`` with a wrong commit (body ``{}``); 422 ``[Do]: Required``;
  500 for ``fast-forward-only`` on a diverged base (Forgejo maps no status to that error).
  The API's default message is the title line only (``GetDefaultMergeMessage``'s body is dropped).
* ``GET /repos/{o}/{r}/collaborators/{user}/permission`` - ``{"permission", "role_name", "user"}``:
  ``owner`` for the repository owner and for site admins, a collaborator's ``read|write|admin``,
  ``read`` for others on a public repository, ``none`` on a private one. Only a site admin, a
  repository admin or the user themself may ask (else 403); an unknown user is 404.
* ``GET /repos/{o}/{r}/issues/{n}/timeline`` - ``review``, ``pull_push``, ``pull_scheduled_merge``,
  ``merge_pull``, ``close``, ``delete_branch``, ``comment`` events as ``TimelineComment`` JSON;
  ``page``/``limit`` apply, ``X-Total-Count`` is the length of *that page*, no ``Link``, and an
  empty page is JSON ``null`` (Forgejo encodes a nil slice).
* ``GET /repos/{o}/{r}/commits/{sha}/pull`` - only the pull request whose *merge commit* is
  exactly ``sha``; 404 for any other commit.
* ``GET /repos/{o}/{r}/pulls/{n}/reviews`` - paginated, ``X-Total-Count`` only (no ``Link``,
  as in Forgejo); pending reviews are hidden from everyone but their author and site admins,
  yet still counted.
* ``GET /repos/{o}/{r}/issues`` - ``type``, ``state`` (default open), ``labels`` (all of them;
  names unknown to the repo are silently dropped), ``since``/``before`` (``updated_at``),
  ``sort``, ``page``/``limit``; ``GET .../issues/{n}``; ``GET|POST .../issues/{n}/comments``.
* Lists paginate like Forgejo: ``page`` is 1-based, ``limit`` defaults to 30 and is capped at
  50 (larger values are silently reduced), and replies carry ``X-Total-Count`` and a ``Link``
  header with ``next``/``last``/``first``/``prev`` relations.
* Auth: ``Authorization: token <T>`` (also ``Bearer``, basic auth with the token as password,
  and the ``token``/``access_token`` query parameters). A token the forge does not know is
  401 everywhere; a missing token is 401 where a signed-in user is required and 404 for a
  private repository, which only its owner, site admins and collaborators see.
* Token scopes (``routers/api/v1/api.go``): ``/user`` and ``/users/{name}`` need ``read:user``;
  the repository, pulls, reviews, merge, ``commits/{sha}/pull`` and collaborators need
  ``read:repository`` (``write:`` for POST); issues, comments, labels and the timeline need
  ``read:issue`` / ``write:issue``. A token without it gets 403 ``token does not have at least
  one of required scope(s): [read:repository]`` - checked before the repository is looked up.
  ``write:`` implies ``read:``; ``public-only`` gives 403 ``token scope is limited to public
  repos`` (``... public issues``) on a private repository.

Facts of Forgejo's *behaviour* the double follows (CONTRACTS.md rev. 2, traced in the source):

* **Stale marking is asynchronous.** A push to a pull request's head branch is queued
  (``AddTestPullRequestTask``); only ``settle()`` runs the queue: for each pull request still
  open and unmerged it moves ``refs/pull/<n>/head``, adds a ``pull_push`` event and marks the
  reviews stale if ``git diff --name-only <new> <old> <merge-base>`` names a file (then un-stales
  those of the new head). A merge before ``settle()`` leaves the approvals fresh forever, and a
  push that does not change the diff never makes them stale. Nothing runs in the background.
* **Merge styles** ``merge``, ``rebase``, ``rebase-merge``, ``squash``, ``fast-forward-only``,
  ``manually-merged`` - see ``merge``. ``merge_commit_sha`` is the merge commit, the last
  rebased commit, the squash commit, the head itself, or the commit given.
* **Scheduled merges**: ``schedule_merge`` (or the API's ``merge_when_checks_succeed``) adds a
  ``pull_scheduled_merge`` event; ``run_scheduled_merges`` / ``settle`` merge the head branch as
  it is *then*, with ``merged_by`` = whoever scheduled it.
* **Users**: ``rename_user`` keeps the id and frees the old name (``register_user(old)`` makes a
  new user; the old name redirects until then); ``admin`` and Forgejo's other reserved names are
  refused by ``register_user`` and ``rename_user`` (``add_user`` is a fixture back door).

Tests and the demo script the forge through Python (``add_user``, ``register_user``,
``rename_user``, ``new_token(scopes=)``, ``add_repo``, ``add_collaborator``, ``open_pull``,
``review``, ``merge(style=)``, ``schedule_merge``, ``run_scheduled_merges``, ``settle``,
``commit_direct``, ``delete_branch``, ``add_issue`` ...). Every git change
is a real commit in the repository's bare directory, written with plumbing only (``hash-object``,
``mktree``, ``commit-tree``, ``merge-tree --write-tree``, ``update-ref`` with the expected old
value), so opening a pull request costs a handful of git calls and no clone. Pushes that
tests make to the bare repository (``file://``) are seen on the next read. A lock per
repository serialises the double's own writes; needs git >= 2.38 (``merge-tree --write-tree``).

Times are RFC 3339 UTC with whole seconds, like Forgejo's; ``updated_at`` is set from a clock
that never goes backwards (pass ``clock=`` to control it), so two changes within one second
share a value, exactly as on the real server.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import secrets
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlencode

from doubles.forge_git import install_git_http
from doubles.http import DoubleServer, Request, Response

API = "/api/v1"
DEFAULT_PAGE_SIZE = 30
"""Forgejo's ``[api] DEFAULT_PAGING_NUM``."""
MAX_PAGE_SIZE = 50
"""Forgejo's ``[api] MAX_RESPONSE_ITEMS``: larger ``limit`` values are silently capped."""
REVIEW_STATES = ("APPROVED", "REQUEST_CHANGES", "COMMENT", "PENDING", "REQUEST_REVIEW")
ZERO_OID = "0" * 40
SWAGGER_URL = "/api/swagger"
FORGEJO_VERSION = "11.0.0+double"

_OWNER_REPO = r"/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)"

MERGE_STYLES = ("merge", "rebase", "rebase-merge", "squash", "fast-forward-only", "manually-merged")
"""``MergePullRequestForm.Do`` (``services/forms/repo_form.go``), in Forgejo's order."""

SCOPE_CATEGORIES = (
    "activitypub", "admin", "misc", "notification", "organization", "package", "issue", "repository", "user",
)
"""``models/auth/access_token_scope.go``: each category has ``read:<c>`` and ``write:<c>``."""
TOKEN_SCOPES = ("all", "public-only") + tuple(f"{level}:{c}" for c in SCOPE_CATEGORIES for level in ("read", "write"))

RESERVED_USERNAMES = (
    ".", "..", "-", ".well-known", "api", "metrics", "v2", "assets", "attachments", "avatar", "avatars",
    "repo-avatars", "captcha", "login", "org", "repo", "user", "admin", "explore", "issues", "pulls",
    "milestones", "notifications", "report_abuse", "favicon.ico", "manifest.json", "robots.txt", "sitemap.xml",
    "ssh_info", "swagger.v1.json", "ghost", "gitea-actions", "forgejo-actions",
)
"""``reservedUsernames`` of ``models/user/user.go`` (compared case-insensitively)."""
RESERVED_USER_SUFFIXES = (".keys", ".gpg", ".rss", ".atom", ".png")
"""``reservedUserPatterns`` (``*.keys`` ...) of ``models/user/user.go``."""
_VALID_USERNAME = re.compile(r"^[\da-zA-Z][-.\w]*$")
_SPECIAL_RUN = re.compile(r"[-._]{2,}|[-._]$")

PERMISSION_DENIED_OTHERS = (
    "Only admins can query all permissions, repo admins can query all repo permissions, "
    "collaborators can query only their own"
)
"""``routers/api/v1/repo/collaborators.go`` ``GetRepoPermissions``: the 403 message."""
_ACCESS_ORDER = {"none": 0, "read": 1, "write": 2, "admin": 3, "owner": 4}


class ForgeDoubleError(RuntimeError):
    """A scripting call the forge itself would refuse (unknown repo, merged twice, git failure)."""


class MergeConflict(ForgeDoubleError):
    """The pull request's branch does not merge cleanly into its base."""


class RebaseConflict(MergeConflict):
    """A commit of the pull request does not apply on the base (styles ``rebase``, ``rebase-merge``)."""


class NotFastForward(ForgeDoubleError):
    """Style ``fast-forward-only``: the base is not an ancestor of the head (``Not possible to fast-forward``)."""


class WrongCommitID(ForgeDoubleError):
    """Style ``manually-merged``: the commit is not a full id of a commit on the base branch."""


class HeadOutOfDate(ForgeDoubleError):
    """``head_commit_id`` of a merge request is not the head branch's commit any more."""


class AlreadyScheduled(ForgeDoubleError):
    """The pull request already has a scheduled (auto) merge."""


class NameRefused(ForgeDoubleError):
    """A user name Forgejo refuses: reserved, invalid, or taken."""


# -- time -----------------------------------------------------------------------------------


def rfc3339(epoch: int) -> str:
    """``epoch`` as Forgejo writes times when it runs in UTC: ``2026-01-02T03:04:05Z``."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> int:
    """Unix seconds of an RFC 3339 time; ``ValueError`` when it is not one (no offset included)."""
    value = text.strip()
    if value[-1:] in ("z", "Z"):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value.replace("t", "T"))
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return int(parsed.timestamp())


class _Clock:
    """Whole seconds from ``source``, never going backwards."""

    def __init__(self, source: Callable[[], float]) -> None:
        self._source = source
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        with self._lock:
            self._last = max(self._last, int(self._source()))
            return self._last


# -- state ----------------------------------------------------------------------------------


@dataclass
class _User:
    id: int
    login: str
    is_admin: bool
    created: int
    tokens: list[str] = field(default_factory=list)

    @property
    def email(self) -> str:
        return f"{self.login}@noreply.localhost"


@dataclass
class _Label:
    id: int
    name: str
    color: str = "e11d21"
    description: str = ""


@dataclass
class _Comment:
    id: int
    user: str
    body: str
    created: int
    updated: int


@dataclass
class _Review:
    id: int
    user: str
    state: str
    body: str
    commit_id: str
    stale: bool
    dismissed: bool
    official: bool
    submitted: int
    updated: int


@dataclass
class _Event:
    """One timeline comment (``models/issues/comment.go``: its ``type`` is one of ``commentStrings``)."""

    id: int
    type: str
    user: str
    body: str
    created: int
    review_id: int = 0


@dataclass
class _Schedule:
    """A ``pull_auto_merge`` row: who scheduled it, with which style and message."""

    by: str
    style: str
    message: str
    delete_branch: bool


@dataclass
class _Push:
    """A queued ``AddTestPullRequestTask`` for one push to a pull request's head branch."""

    number: int
    old: str
    new: str
    pusher: str


@dataclass
class _Pull:
    head_ref: str
    head_sha: str
    """What ``refs/pull/<n>/head`` holds: moved only when the push queue is settled."""
    base_ref: str
    merge_base: str
    seen_head: str = ""
    """The head branch commit this double last noticed (pushes are queued from it)."""
    merged: bool = False
    merged_at: int | None = None
    merged_by: str | None = None
    merge_commit_sha: str | None = None
    merge_style: str | None = None
    scheduled: _Schedule | None = None
    reviews: list[_Review] = field(default_factory=list)


@dataclass
class _Issue:
    id: int
    number: int
    title: str
    body: str
    author: str
    state: str
    labels: list[str]
    created: int
    updated: int
    closed: int | None = None
    comments: list[_Comment] = field(default_factory=list)
    events: list[_Event] = field(default_factory=list)
    pull: _Pull | None = None


@dataclass
class _Repo:
    id: int
    owner: str
    name: str
    git_dir: Path
    default_branch: str
    private: bool
    created: int
    labels: dict[str, _Label] = field(default_factory=dict)
    issues: dict[int, _Issue] = field(default_factory=dict)
    collaborators: dict[str, str] = field(default_factory=dict)
    """lower-case login -> ``read``, ``write`` or ``admin``."""
    pending: list[_Push] = field(default_factory=list)
    next_number: int = 1
    git_lock: Any = field(default_factory=threading.RLock)
    """Serialises this double's git writes to the repository (re-entrant)."""

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


# -- the double -----------------------------------------------------------------------------


class ForgeDouble(DoubleServer):
    """A loopback Forgejo: real HTTP for clients, a Python scripting API for tests."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] = time.time,
        max_page_size: int = MAX_PAGE_SIZE,
        default_page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        super().__init__("forge", host, port)
        self.max_page_size = max_page_size
        self.default_page_size = min(default_page_size, max_page_size)
        self._clock = _Clock(clock)
        self._lock = threading.RLock()
        self._users: dict[str, _User] = {}
        self._tokens: dict[str, str] = {}
        self._token_scopes: dict[str, frozenset[str] | None] = {}
        self._redirects: dict[str, _User] = {}
        self._repos: dict[str, _Repo] = {}
        self._ids = itertools.count(1)
        self.git_throttle_bytes_per_second: float | None = None
        """Slow git smart HTTP replies to this rate (a slow link); None: full speed."""
        self._install_routes()
        install_git_http(self)
        self._httpd.handle_error = self._handle_socket_error  # type: ignore[method-assign]

    def start(self) -> "ForgeDouble":
        """Serve in a background thread, polling for shutdown every 50 ms so ``stop`` is quick."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="forge-double", daemon=True
        )
        self._thread.start()
        return self

    def __enter__(self) -> "ForgeDouble":
        return self.start()

    def _handle_socket_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client hung up before its reply (a timeout test); report anything else."""
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        socketserver.BaseServer.handle_error(self._httpd, request, client_address)

    # == scripting API: users =================================================================

    def add_user(self, login: str, *, is_admin: bool = False) -> str:
        """Make sure ``login`` exists with this admin flag; return a new API token (all scopes).

        A fixture back door, like a row written straight into Forgejo's database: it does not
        check the reserved names (the fixtures' site admin is called ``admin``, which Forgejo
        itself would refuse - see ``register_user``). A name freed by ``rename_user`` makes a
        new user with a new id.
        """
        with self._lock:
            user = self._ensure_user(login)
            user.is_admin = is_admin
            return self._mint_token(user, None)

    def register_user(self, login: str, *, is_admin: bool = False) -> str:
        """Sign ``login`` up as Forgejo's ``CreateUser`` would; return a token (all scopes).

        ``NameRefused`` for a reserved name (``admin`` ...), a name Forgejo's username rule
        rejects, or one already taken (case-insensitively). A name an earlier user was
        renamed from is free: the new user has a new id, and the old redirect is dropped.
        """
        with self._lock:
            _check_usable_username(login)
            if login.lower() in self._users:
                raise NameRefused(f"user already exists [name: {login}]")
            user = self._ensure_user(login)
            user.is_admin = is_admin
            return self._mint_token(user, None)

    def rename_user(self, old: str, new: str) -> None:
        """Rename a user as Forgejo's ``user_service.RenameUser`` does (no cooldown, the default).

        The id stays; authored pull requests, reviews, comments, merges, collaborations and
        tokens follow the new login; ``GET /users/<old>`` redirects (307) to the new name
        until someone registers the old one. ``NameRefused`` for a reserved, invalid or taken name.
        """
        with self._lock:
            user = self._user(old)
            if new == user.login:
                return
            _check_usable_username(new)
            if new.lower() in self._users and new.lower() != user.login.lower():
                raise NameRefused(f"user already exists [name: {new}]")
            previous = user.login
            del self._users[previous.lower()]
            user.login = new
            self._users[new.lower()] = user
            self._redirects[previous.lower()] = user
            self._redirects.pop(new.lower(), None)
            for token in user.tokens:
                self._tokens[token] = new
            for key, repo in list(self._repos.items()):
                if _same(repo.owner, previous):
                    repo.owner = new
                    del self._repos[key]
                    self._repos[repo.full_name.lower()] = repo
                if previous.lower() in repo.collaborators:
                    repo.collaborators[new.lower()] = repo.collaborators.pop(previous.lower())
                for issue in repo.issues.values():
                    issue.author = new if _same(issue.author, previous) else issue.author
                    for comment in issue.comments:
                        comment.user = new if _same(comment.user, previous) else comment.user
                    for event in issue.events:
                        event.user = new if _same(event.user, previous) else event.user
                    pull = issue.pull
                    if pull is None:
                        continue
                    if pull.merged_by is not None and _same(pull.merged_by, previous):
                        pull.merged_by = new
                    if pull.scheduled is not None and _same(pull.scheduled.by, previous):
                        pull.scheduled.by = new
                    for review in pull.reviews:
                        review.user = new if _same(review.user, previous) else review.user
                for push in repo.pending:
                    push.pusher = new if _same(push.pusher, previous) else push.pusher

    def user_id(self, login: str) -> int:
        with self._lock:
            return self._user(login).id

    def token_for(self, login: str) -> str:
        """The user's most recent token (one is minted when they have none)."""
        with self._lock:
            user = self._user(login)
            return user.tokens[-1] if user.tokens else self._mint_token(user, None)

    def new_token(self, login: str, scopes: Iterable[str] | None = None) -> str:
        """Mint another token for an existing user.

        ``scopes`` as Forgejo names them (``read:repository``, ``write:issue``, ``read:user``,
        ``public-only``, ``all`` ...; ``write:`` implies ``read:``); None means ``all``.
        """
        with self._lock:
            wanted: frozenset[str] | None = None
            if scopes is not None:
                wanted = frozenset(s.strip() for s in scopes if s.strip())
                unknown = sorted(wanted - set(TOKEN_SCOPES))
                if unknown:
                    raise ValueError(f"unknown token scope(s) {unknown}; Forgejo knows {TOKEN_SCOPES}")
                if "all" in wanted:
                    wanted = None if wanted == {"all"} else wanted
            return self._mint_token(self._user(login), wanted)

    def revoke_token(self, token: str) -> None:
        """Delete a token: the forge answers 401 to it from now on."""
        with self._lock:
            login = self._tokens.pop(token, None)
            self._token_scopes.pop(token, None)
            if login is not None:
                self._users[login.lower()].tokens.remove(token)

    def set_admin(self, login: str, is_admin: bool) -> None:
        with self._lock:
            self._user(login).is_admin = is_admin

    # == scripting API: repositories ==========================================================

    def add_repo(
        self, full_name: str, bare_path: Path | str, default_branch: str = "main", *, private: bool = False
    ) -> None:
        """Serve ``owner/name`` from the bare repository at ``bare_path`` (created when absent)."""
        owner, sep, name = full_name.partition("/")
        if not sep or not owner or not name or "/" in name:
            raise ValueError(f"repository name must be 'owner/name', got {full_name!r}")
        git_dir = Path(bare_path)
        if not git_dir.exists() or not any(git_dir.iterdir()):
            git_dir.mkdir(parents=True, exist_ok=True)
            _run_git(["init", "--bare", "-q", "-b", default_branch, str(git_dir)])
        else:
            _run_git(["--git-dir", str(git_dir), "rev-parse", "--git-dir"])
        with self._lock:
            if full_name.lower() in self._repos:
                raise ForgeDoubleError(f"repository {full_name} already exists")
            self._ensure_user(owner)
            self._repos[full_name.lower()] = _Repo(
                id=next(self._ids),
                owner=owner,
                name=name,
                git_dir=git_dir.resolve(),
                default_branch=default_branch,
                private=private,
                created=self._clock.now(),
            )

    def add_label(self, repo: str, name: str, *, color: str = "e11d21", description: str = "") -> int:
        """Declare a label in ``repo`` (idempotent); returns its id."""
        with self._lock:
            return self._ensure_label(self._repo(repo), name, color=color, description=description).id

    def head(self, repo: str, branch: str | None = None) -> str | None:
        """The commit ``branch`` (default: the repository's default branch) points at, or None."""
        r = self._repo(repo)
        return _branch_heads(r.git_dir).get(branch or r.default_branch)

    def add_collaborator(self, repo: str, login: str, permission: str = "write") -> None:
        """Make ``login`` a collaborator of ``repo`` with ``read``, ``write`` or ``admin`` access."""
        if permission not in ("read", "write", "admin"):
            raise ValueError(f"permission must be read, write or admin, got {permission!r}")
        r = self._repo(repo)
        with self._lock:
            r.collaborators[self._user(login).login.lower()] = permission

    def remove_collaborator(self, repo: str, login: str) -> None:
        r = self._repo(repo)
        with self._lock:
            r.collaborators.pop(login.lower(), None)

    def permission(self, repo: str, login: str) -> str:
        """``login``'s access mode on ``repo`` as ``GetUserRepoPermission`` computes it.

        ``owner`` for the repository owner and for every site admin (Forgejo's
        ``AccessModeOwner``: the permission endpoint says ``owner``, not ``admin``); a
        collaborator's own mode; ``read`` for anyone else on a public repository; ``none``
        on a private one.
        """
        r = self._repo(repo)
        with self._lock:
            return self._access(r, self._user(login))

    def delete_branch(self, repo: str, branch: str) -> None:
        """Delete ``branch`` as a push deleting it would; ``refs/pull/<n>/head`` stays.

        Open pull requests from the branch are closed (``CloseBranchPulls``, a ``close``
        event); merged ones get a ``delete_branch`` event. The pull request JSON then shows ``head.ref`` = ``refs/pull/<n>/head`` and its commit.
        """
        r = self._repo(repo)
        with r.git_lock:
            heads = _branch_heads(r.git_dir)
            if branch not in heads:
                raise ForgeDoubleError(f"branch {branch!r} does not exist in {repo}")
            if branch == r.default_branch:
                raise ForgeDoubleError(f"branch {branch!r} is the default branch of {repo}")
            self._sync_heads(r)
            _git(r.git_dir, "update-ref", "-d", f"refs/heads/{branch}", heads[branch])
            with self._lock:
                for issue in r.issues.values():
                    pull = issue.pull
                    if pull is None or pull.head_ref != branch:
                        continue
                    if pull.merged:  # DeleteBranchAfterMerge (services/repository/branch.go)
                        self._event(issue, "delete_branch", r.owner, "")
                    elif issue.state == "open":  # CloseBranchPulls (services/repository/push.go)
                        self._set_state(issue, "closed")
                        self._event(issue, "close", r.owner, "")

    # == scripting API: git ===================================================================

    def commit_direct(
        self,
        repo: str,
        *,
        author: str,
        files: Mapping[str, bytes | str | None],
        message: str,
        branch: str = "main",
    ) -> str:
        """Commit ``files`` (None deletes a path) straight onto ``branch``, as a push would.

        A missing branch starts from the default branch (or as a root commit in an empty
        repository). A push to the head branch of an open pull request is *queued*, as
        Forgejo's post-receive hook queues ``AddTestPullRequestTask``: reviews are judged
        stale (or not), ``refs/pull/<n>/head`` moves and the ``pull_push`` event appears only
        when ``settle()`` runs.
        """
        r = self._repo(repo)
        with self._lock:
            self._ensure_user(author)
        with r.git_lock:
            for _ in range(5):
                heads = _branch_heads(r.git_dir)
                parent = heads.get(branch, heads.get(r.default_branch))
                tree = _write_tree(r.git_dir, _tree_of(r.git_dir, parent), _encode_files(files))
                sha = _commit_tree(r.git_dir, tree, [parent] if parent else [], message, author)
                if _update_ref(r.git_dir, f"refs/heads/{branch}", sha, heads.get(branch, ZERO_OID)):
                    self._sync_heads(r, pusher=author)
                    return sha
            raise ForgeDoubleError(f"branch {branch} of {repo} kept moving while committing to it")

    def open_pull(
        self,
        repo: str,
        *,
        author: str,
        title: str,
        files: Mapping[str, bytes | str | None],
        branch: str | None = None,
        base: str = "main",
        body: str = "",
    ) -> int:
        """Commit ``files`` on a new branch off ``base``'s head and open a pull request from it.

        In an empty repository the base first gets an empty "Initial commit" by the owner, as
        a repository created with Forgejo's auto-init has; a missing base anywhere else is an error.
        """
        r = self._repo(repo)
        with self._lock:
            self._ensure_user(author)
            number = self._next_number(r)
        head_ref = branch or f"pr-{number}"
        encoded = _encode_files(files)
        with r.git_lock:
            heads = _branch_heads(r.git_dir)
            base_sha = heads.get(base)
            if base_sha is None and not heads:
                base_sha = _commit_tree(r.git_dir, _write_tree(r.git_dir, None, {}), [], "Initial commit\n", r.owner)
                if not _update_ref(r.git_dir, f"refs/heads/{base}", base_sha, ZERO_OID):
                    raise ForgeDoubleError(f"branch {base!r} appeared in {repo} while initialising it")
                heads[base] = base_sha
            if base_sha is None:
                raise ForgeDoubleError(f"base branch {base!r} does not exist in {repo}: commit or push to it first")
            if head_ref in heads:
                raise ForgeDoubleError(f"branch {head_ref!r} already exists in {repo}")
            tree = _write_tree(r.git_dir, _tree_of(r.git_dir, base_sha), encoded)
            sha = _commit_tree(r.git_dir, tree, [base_sha], title, author)
            if not _update_ref(r.git_dir, f"refs/heads/{head_ref}", sha, ZERO_OID):
                raise ForgeDoubleError(f"branch {head_ref!r} appeared in {repo} while opening the pull request")
            _update_ref(r.git_dir, f"refs/pull/{number}/head", sha, None)
            with self._lock:
                now = self._clock.now()
                r.issues[number] = _Issue(
                    id=next(self._ids),
                    number=number,
                    title=title,
                    body=body,
                    author=author,
                    state="open",
                    labels=[],
                    created=now,
                    updated=now,
                    pull=_Pull(head_ref=head_ref, head_sha=sha, base_ref=base, merge_base=base_sha, seen_head=sha),
                )
        return number

    def merge(
        self,
        repo: str,
        number: int,
        *,
        merger: str,
        style: str = "merge",
        commit: str | None = None,
        message: str | None = None,
    ) -> str:
        """Merge the pull request with Forgejo's merge ``style``; return its ``merge_commit_sha``.

        The head merged is whatever the head branch holds now (Forgejo fetches the branch,
        not ``refs/pull/<n>/head``), even a push not yet settled. Styles
        (``services/pull/merge_*.go``):

        * ``merge``: a ``--no-ff`` merge commit, parents (base, head).
        * ``rebase``: the PR's commits replayed one by one on the base (new shas, author kept,
          committer = merger, own messages), the base fast-forwarded to the last one, which is
          the merge commit; when the base has not moved the head itself is fast-forwarded to.
        * ``rebase-merge``: the same rebase, then a ``--no-ff`` merge commit (base, last rebased).
        * ``squash``: one commit, single parent = base, author = the PR's author.
        * ``fast-forward-only``: the base moves to the head itself; ``NotFastForward`` unless
          the base is an ancestor of the head.
        * ``manually-merged``: nothing is written; ``commit`` (a full id of a commit already
          on the base, else ``WrongCommitID``) becomes ``merge_commit_sha`` and its author
          time ``merged_at``.

        ``message`` defaults to Forgejo's: ``Merge pull request '<title>' (#<n>) from <branch>
        into <base>`` (``merge``, ``rebase-merge``) or ``<title> (#<n>)`` (``squash``), then a
        blank line and the ``Reviewed-on`` / ``Reviewed-by`` body, as the web form pre-fills
        it. ``rebase`` and ``fast-forward-only`` ignore it. ``merge_base`` keeps the value of
        the last check before the merge, whatever the style (``SetMerged`` saves the loaded one).
        """
        return self._merge(self._repo(repo), number, merger=merger, style=style, commit=commit, message=message)

    def _merge(
        self,
        r: _Repo,
        number: int,
        *,
        merger: str,
        style: str,
        commit: str | None,
        message: str | None,
        expected_head: str | None = None,
        full_message: bool = True,
    ) -> str:
        if style not in MERGE_STYLES:
            raise ValueError(f"merge style must be one of {MERGE_STYLES}, got {style!r}")
        with r.git_lock:
            with self._lock:
                self._ensure_user(merger)
                issue = self._pull_issue(r, number)
                pull = issue.pull
                assert pull is not None
                if pull.merged or issue.state != "open":
                    raise ForgeDoubleError(
                        f"pull request #{number} of {r.full_name} is not open (merged={pull.merged})"
                    )
            self._sync_heads(r)
            if style == "manually-merged":
                return self._mark_manually_merged(r, issue, merger, commit or "")
            for _ in range(5):
                heads = _branch_heads(r.git_dir)
                base_sha = heads.get(pull.base_ref)
                head_sha = heads.get(pull.head_ref)
                if base_sha is None:
                    raise ForgeDoubleError(f"base branch {pull.base_ref!r} of {r.full_name} is gone")
                if head_sha is None:
                    raise ForgeDoubleError(f"head branch {pull.head_ref!r} of {r.full_name} does not exist")
                if expected_head and expected_head != head_sha:
                    raise HeadOutOfDate(f"head out of date: {expected_head} is not {head_sha}")
                with self._lock:
                    text = message if message is not None else self._default_message(r, issue, style, full_message)
                new_base, merge_sha = self._write_merge(r, issue, style, base_sha, head_sha, merger, text)
                if _update_ref(r.git_dir, f"refs/heads/{pull.base_ref}", new_base, base_sha):
                    break
            else:
                raise ForgeDoubleError(f"base branch {pull.base_ref} of {r.full_name} kept moving during the merge")
            with self._lock:
                self._finish_merge(issue, merger, merge_sha, self._clock.now(), style)
            self._sync_heads(r)
        return merge_sha

    def _write_merge(
        self, r: _Repo, issue: _Issue, style: str, base: str, head: str, merger: str, text: str
    ) -> tuple[str, str]:
        """The git side of one merge style: (the base's new commit, the merge commit sha)."""
        what = f"{r.full_name}#{issue.number}"
        gd = r.git_dir
        if style == "merge":
            tree = _merge_tree(gd, base, head, what)
            sha = _commit_tree(gd, tree, [base, head], text, merger)
            return sha, sha
        if style == "squash":
            tree = _merge_tree(gd, base, head, what)
            name, email = self._squash_author(r, issue, base, head)
            env = _ident_env("AUTHOR", name, email) | _ident_env("COMMITTER", merger, f"{merger}@noreply.localhost")
            sha = _git(gd, "commit-tree", tree, "-p", base, input=text.encode("utf-8"), env=env).strip()
            return sha, sha
        if style == "fast-forward-only":
            if not _is_ancestor(gd, base, head):
                raise NotFastForward(f"{what}: Not possible to fast-forward, aborting")
            return head, head
        # rebase, rebase-merge
        last = _rebase(gd, base, head, merger, what)
        if style == "rebase":
            return last, last
        tree = _tree_of(gd, last)
        assert tree is not None
        sha = _commit_tree(gd, tree, [base, last], text, merger)
        return sha, sha

    def _squash_author(self, r: _Repo, issue: _Issue, base: str, head: str) -> tuple[str, str]:
        """``getAuthorSignatureSquash``: the poster's own signature from one of the PR's commits, else theirs."""
        poster = self._users[issue.author.lower()]
        out = _git(r.git_dir, "log", "--format=%an%x00%ae", f"{base}..{head}")
        for line in out.splitlines():
            name, _, email = line.partition("\0")
            if email.lower() == poster.email.lower():
                return name, email
        return poster.login, poster.email

    def _mark_manually_merged(self, r: _Repo, issue: _Issue, merger: str, commit: str) -> str:
        """``MergedManually`` (``services/pull/merge_manual.go``): checks, then the database only."""
        pull = issue.pull
        assert pull is not None
        if len(commit) != 40 or not re.fullmatch(r"[0-9a-fA-F]{40}", commit):
            raise WrongCommitID("Wrong commit ID")
        proc = _run_git(["--git-dir", str(r.git_dir), "cat-file", "-t", commit], ok=(0, 1, 128))
        if proc.returncode != 0 or proc.stdout.decode().strip() != "commit":
            raise WrongCommitID("Wrong commit ID")
        base_sha = _branch_heads(r.git_dir).get(pull.base_ref)
        if base_sha is None or not _is_ancestor(r.git_dir, commit, base_sha):
            raise WrongCommitID("Wrong commit ID")
        sha = commit.lower()
        authored = int(_git(r.git_dir, "log", "-1", "--format=%at", sha).strip())
        with self._lock:
            self._finish_merge(issue, merger, sha, authored, "manually-merged")
        return sha

    def _finish_merge(self, issue: _Issue, merger: str, sha: str, when: int, style: str) -> None:
        """``SetMerged`` and the post-receive hook: merged, closed, ``merge_pull`` by the merger."""
        pull = issue.pull
        assert pull is not None
        now = self._clock.now()
        pull.merged = True
        pull.merged_at = when
        pull.merged_by = merger
        pull.merge_commit_sha = sha
        pull.merge_style = style
        pull.scheduled = None
        issue.state = "closed"
        issue.closed = now
        issue.updated = now
        self._event(issue, "merge_pull", merger, "")

    def _default_message(self, repo: _Repo, issue: _Issue, style: str, full: bool) -> str:
        """``getMergeMessage``: the title line, plus (``full``, as the web form sends it) its body."""
        pull = issue.pull
        assert pull is not None
        if style == "squash":
            title = f"{issue.title} (#{issue.number})"
        elif style in ("rebase", "fast-forward-only"):
            return ""
        else:
            title = f"Merge pull request '{issue.title}' (#{issue.number}) from {pull.head_ref} into {pull.base_ref}"
        if not full:
            return title
        trailers = [f"Reviewed-on: {self.address}/{repo.full_name}/pulls/{issue.number}"]
        approvers: list[str] = []
        for review in pull.reviews:
            if review.state == "APPROVED" and review.official and not review.stale and not review.dismissed:
                if review.user not in approvers:
                    approvers.append(review.user)
        trailers += [f"Reviewed-by: {login} <{login}@noreply.localhost>" for login in approvers]
        return f"{title}\n\n" + "\n".join(trailers) + "\n"

    def _merge_message(self, repo: _Repo, issue: _Issue) -> str:
        """Forgejo's default merge-commit message for the merge style ``merge``."""
        return self._default_message(repo, issue, "merge", True)

    # == scripting API: the push queue and scheduled merges ===================================

    def settle(self, repo: str | None = None) -> None:
        """Run the queue Forgejo runs after pushes (``services/pull/pull.go`` ``TestPullRequest``).

        For each queued push to the head branch of a pull request that is *still open and
        unmerged* (a merged or closed one is skipped, so its reviews are never marked stale):
        ``refs/pull/<n>/head`` is set to the branch's commit now (``PushToBaseRepo``; a
        deleted branch skips the rest), a ``pull_push`` event by the pusher is added, and
        ``ValidatePullRequest`` marks every review stale if ``git diff --name-only new old
        <merge-base>`` lists a file, then un-stales those of the new head. Then every open
        pull request's ``merge_base`` is recomputed (the checker's ``testPatch``) and due
        scheduled merges run. Nothing happens in the background: only this call settles.
        """
        repos = [self._repo(repo)] if repo is not None else list(self._repos_snapshot())
        for r in repos:
            self._settle_repo(r)

    def pending_pushes(self, repo: str) -> int:
        """How many pushes wait for ``settle()``."""
        r = self._repo(repo)
        self._sync_heads(r)
        with self._lock:
            return len(r.pending)

    def schedule_merge(
        self,
        repo: str,
        number: int,
        *,
        by: str,
        style: str = "merge",
        message: str | None = None,
        delete_branch: bool = False,
    ) -> None:
        """"Merge when checks succeed" (``services/automerge`` ``ScheduleAutoMerge``).

        Records the schedule and adds a ``pull_scheduled_merge`` event by ``by``;
        ``AlreadyScheduled`` when one exists. The merge itself happens in
        ``run_scheduled_merges`` (or ``settle``), with whatever the head branch holds then,
        and ``merged_by`` is ``by``. The double has no commit statuses: checks always pass.
        """
        if style not in MERGE_STYLES or style == "manually-merged":
            raise ValueError(f"cannot schedule a merge with style {style!r}")
        r = self._repo(repo)
        with self._lock:
            self._ensure_user(by)
            issue = self._pull_issue(r, number)
            pull = issue.pull
            assert pull is not None
            if pull.merged or issue.state != "open":
                raise ForgeDoubleError(f"pull request #{number} of {repo} is not open")
            if pull.scheduled is not None:
                raise AlreadyScheduled(
                    f"pull request is already scheduled to auto merge when checks succeed [pull_id: {issue.id}]"
                )
            text = message if message is not None else self._default_message(r, issue, style, False)
            pull.scheduled = _Schedule(by=by, style=style, message=text, delete_branch=delete_branch)
            self._event(issue, "pull_scheduled_merge", by, "")

    def cancel_scheduled_merge(self, repo: str, number: int, *, by: str) -> None:
        r = self._repo(repo)
        with self._lock:
            issue = self._pull_issue(r, number)
            assert issue.pull is not None
            if issue.pull.scheduled is not None:
                issue.pull.scheduled = None
                self._event(issue, "pull_cancel_scheduled_merge", by, "")

    def run_scheduled_merges(self, repo: str) -> list[int]:
        """Merge every open pull request with a schedule (``handlePullRequestAutoMerge``).

        The merge takes the head branch as it is now; ``merged_by`` is the user who
        scheduled it. A pull request that no longer merges keeps its schedule. Returns the
        numbers merged.
        """
        return self._run_scheduled(self._repo(repo))

    def timeline(self, repo: str, number: int) -> list[dict[str, Any]]:
        """``GET .../issues/{n}/timeline`` as a site admin sees it (all of it, one list)."""
        r = self._repo(repo)
        with self._lock:
            issue = self._issue(r, number)
            return [self._timeline_json(r, issue, e, None) for e in self._timeline_items(issue)]

    def _repos_snapshot(self) -> list[_Repo]:
        with self._lock:
            return list(self._repos.values())

    def _settle_repo(self, r: _Repo) -> None:
        with r.git_lock:
            self._sync_heads(r)
            with self._lock:
                queue, r.pending = r.pending, []
            for push in queue:
                with self._lock:
                    issue = r.issues.get(push.number)
                    pull = issue.pull if issue is not None else None
                    if issue is None or pull is None or pull.merged or issue.state != "open":
                        continue
                heads = _branch_heads(r.git_dir)
                tip = heads.get(pull.head_ref)
                if tip is None:
                    continue  # PushToBaseRepo cannot fetch a deleted branch
                _update_ref(r.git_dir, f"refs/pull/{push.number}/head", tip, None)
                base_sha = heads.get(pull.base_ref)
                changed = False
                if base_sha is not None and push.old and push.old != ZERO_OID:
                    changed = _diff_differs(r.git_dir, base_sha, tip, push.old, push.new)
                with self._lock:
                    pull.head_sha = tip
                    self._event(issue, "pull_push", push.pusher, self._push_body(r, pull, push))
                    now = self._clock.now()
                    for review in pull.reviews:
                        if changed:
                            review.stale = True
                        if review.commit_id == push.new:
                            review.stale = False
                    issue.updated = now
            heads = _branch_heads(r.git_dir)
            with self._lock:
                live = [i for i in r.issues.values() if i.pull is not None and i.state == "open" and not i.pull.merged]
            for issue in live:
                pull = issue.pull
                assert pull is not None
                base_sha = heads.get(pull.base_ref)
                head_sha = heads.get(pull.head_ref, pull.head_sha)
                if base_sha is None:
                    continue
                base_of = _merge_base(r.git_dir, base_sha, head_sha) or base_sha
                with self._lock:
                    pull.merge_base = base_of
        self._run_scheduled(r)

    def _push_body(self, r: _Repo, pull: _Pull, push: _Push) -> str:
        """``PushActionContent``: the new commits (oldest first), or [old, new] for a force push."""
        if _is_ancestor(r.git_dir, push.old, push.new):
            out = _git(r.git_dir, "rev-list", "--reverse", push.new, f"^{push.old}", f"^refs/heads/{pull.base_ref}")
            return json.dumps({"is_force_push": False, "commit_ids": out.split()})
        return json.dumps({"is_force_push": True, "commit_ids": [push.old, push.new]})

    def _run_scheduled(self, r: _Repo) -> list[int]:
        with self._lock:
            due = [
                (n, i.pull.scheduled)
                for n, i in sorted(r.issues.items())
                if i.pull is not None and i.pull.scheduled is not None and i.state == "open" and not i.pull.merged
            ]
        merged: list[int] = []
        for number, schedule in due:
            assert schedule is not None
            if self._access(r, self._user(schedule.by)) not in ("write", "admin", "owner"):
                continue  # "was scheduled to automerge by an unauthorized user"
            try:
                self._merge(
                    r, number, merger=schedule.by, style=schedule.style, commit=None, message=schedule.message or None
                )
            except ForgeDoubleError:
                continue
            merged.append(number)
            if schedule.delete_branch:
                with self._lock:
                    branch = r.issues[number].pull.head_ref  # type: ignore[union-attr]
                if branch in _branch_heads(r.git_dir) and branch != r.default_branch:
                    self.delete_branch(r.full_name, branch)
        return merged

    def close_pull(self, repo: str, number: int) -> None:
        """Close a pull request without merging it."""
        r = self._repo(repo)
        with self._lock:
            issue = self._pull_issue(r, number)
            if issue.state != "closed":
                self._set_state(issue, "closed")
                self._event(issue, "close", r.owner, "")

    # == scripting API: reviews ===============================================================

    def review(
        self,
        repo: str,
        number: int,
        *,
        user: str,
        state: str = "APPROVED",
        stale: bool = False,
        dismissed: bool = False,
        commit_id: str | None = None,
        body: str = "",
        official: bool | None = None,
    ) -> int:
        """Submit a review (commit defaults to ``refs/pull/<n>/head``); returns the review id.

        Like ``SubmitReview``, the default commit is the pull request's ref, which a push
        moves only when ``settle()`` runs. ``stale`` is a back door: set it as you like.

        ``official`` defaults to true for ``APPROVED`` and ``REQUEST_CHANGES`` (a reviewer
        with write access), false otherwise. Unlike Forgejo's API, which refuses "approve
        your own pull", this back door lets an author review their own pull request, so
        tests can check that the gate ignores such an approval.
        """
        if state not in REVIEW_STATES:
            raise ValueError(f"review state must be one of {REVIEW_STATES}, got {state!r}")
        r = self._repo(repo)
        self._sync_heads(r)
        with self._lock:
            self._ensure_user(user)
            issue = self._pull_issue(r, number)
            assert issue.pull is not None
            now = self._clock.now()
            review = _Review(
                id=next(self._ids),
                user=user,
                state=state,
                body=body,
                commit_id=commit_id or issue.pull.head_sha,  # refs/pull/<n>/head, as SubmitReview reads it
                stale=stale,
                dismissed=dismissed,
                official=(state in ("APPROVED", "REQUEST_CHANGES")) if official is None else official,
                submitted=now,
                updated=now,
            )
            issue.pull.reviews.append(review)
            issue.updated = now
            if state != "PENDING":  # a pending review has no timeline comment until it is submitted
                kind = "review_request" if state == "REQUEST_REVIEW" else "review"
                self._event(issue, kind, user, body, review_id=review.id)
            return review.id

    def dismiss(self, repo: str, review_id: int) -> None:
        """Dismiss a review, as a maintainer's "dismiss review" does."""
        with self._lock:
            issue, review = self._find_review(self._repo(repo), review_id)
            review.dismissed = True
            review.updated = issue.updated = self._clock.now()

    def mark_stale(self, repo: str, review_id: int) -> None:
        """Mark a review stale (new commits were pushed after it)."""
        with self._lock:
            issue, review = self._find_review(self._repo(repo), review_id)
            review.stale = True
            review.updated = issue.updated = self._clock.now()

    # == scripting API: issues ================================================================

    def add_issue(
        self,
        repo: str,
        *,
        title: str,
        body: str = "",
        labels: Iterable[str] = (),
        state: str = "open",
        author: str | None = None,
    ) -> int:
        """Open an issue (labels are declared in the repository as needed); returns its number."""
        if state not in ("open", "closed"):
            raise ValueError(f"issue state must be 'open' or 'closed', got {state!r}")
        r = self._repo(repo)
        with self._lock:
            poster = author or r.owner
            self._ensure_user(poster)
            names = [self._ensure_label(r, name).name for name in labels]
            number = self._next_number(r)
            now = self._clock.now()
            r.issues[number] = _Issue(
                id=next(self._ids),
                number=number,
                title=title,
                body=body,
                author=poster,
                state=state,
                labels=_unique(names),
                created=now,
                updated=now,
                closed=now if state == "closed" else None,
            )
            return number

    def delete_issue(self, repo: str, number: int) -> None:
        """Delete an issue, as an admin's ``DELETE /repos/{o}/{r}/issues/{n}`` does
        (``services/issue/issue.go`` ``DeleteIssue``): it is 404 from then on and in no list."""
        r = self._repo(repo)
        with self._lock:
            self._issue(r, number)
            del r.issues[number]

    def set_labels(self, repo: str, number: int, labels: Iterable[str]) -> None:
        """Replace the labels of an issue or pull request."""
        r = self._repo(repo)
        with self._lock:
            issue = self._issue(r, number)
            issue.labels = _unique(self._ensure_label(r, name).name for name in labels)
            issue.updated = self._clock.now()

    def close_issue(self, repo: str, number: int) -> None:
        with self._lock:
            self._set_state(self._issue(self._repo(repo), number), "closed")

    def reopen_issue(self, repo: str, number: int) -> None:
        with self._lock:
            self._set_state(self._issue(self._repo(repo), number), "open")

    def edit_issue(self, repo: str, number: int, *, title: str | None = None, body: str | None = None) -> None:
        with self._lock:
            issue = self._issue(self._repo(repo), number)
            issue.title = issue.title if title is None else title
            issue.body = issue.body if body is None else body
            issue.updated = self._clock.now()

    def add_comment(self, repo: str, number: int, *, user: str, body: str) -> int:
        """Comment on an issue or pull request as ``user``; returns the comment id."""
        r = self._repo(repo)
        with self._lock:
            self._ensure_user(user)
            return self._comment(self._issue(r, number), user, body).id

    def comments(self, repo: str, number: int) -> list[dict[str, Any]]:
        """The comments of an issue, as the API shows them to a site admin."""
        r = self._repo(repo)
        with self._lock:
            issue = self._issue(r, number)
            return [self._comment_json(r, issue, c, None) for c in issue.comments]

    def pull_json(self, repo: str, number: int) -> dict[str, Any]:
        """The pull request as ``GET /repos/{o}/{r}/pulls/{n}`` shows it to a site admin."""
        r = self._repo(repo)
        self._sync_heads(r)
        with self._lock:
            return self._pull_json(r, self._pull_issue(r, number), None)

    def issue_json(self, repo: str, number: int) -> dict[str, Any]:
        """The issue as ``GET /repos/{o}/{r}/issues/{n}`` shows it (handy in assertions)."""
        r = self._repo(repo)
        with self._lock:
            return self._issue_json(r, self._issue(r, number), None)

    # == HTTP: routes =========================================================================

    def _install_routes(self) -> None:
        # (method, pattern, handler, needs a signed-in user, the token scope category api.go puts it under)
        routes: list[tuple[str, str, Callable[[Request, _User | None], Response], bool, str | None]] = [
            ("GET", r"/version", self._h_version, False, None),
            ("GET", r"/settings/api", self._h_settings_api, False, None),
            ("GET", r"/user", self._h_me, True, "user"),
            ("GET", r"/users/(?P<name>[^/]+)", self._h_user, False, "user"),
            ("GET", _OWNER_REPO, self._h_repo, False, "repository"),
            ("GET", _OWNER_REPO + r"/labels", self._h_labels, False, "issue"),
            ("GET", _OWNER_REPO + r"/pulls/(?P<n>\d+)", self._h_pull, False, "repository"),
            ("POST", _OWNER_REPO + r"/pulls/(?P<n>\d+)/merge", self._h_merge, True, "repository"),
            ("GET", _OWNER_REPO + r"/pulls/(?P<n>\d+)/reviews", self._h_reviews, False, "repository"),
            ("GET", _OWNER_REPO + r"/commits/(?P<sha>[^/]+)/pull", self._h_commit_pull, False, "repository"),
            (
                "GET",
                _OWNER_REPO + r"/collaborators/(?P<name>[^/]+)/permission",
                self._h_permission,
                True,
                "repository",
            ),
            ("GET", _OWNER_REPO + r"/issues", self._h_issues, False, "issue"),
            ("GET", _OWNER_REPO + r"/issues/(?P<n>\d+)", self._h_issue, False, "issue"),
            ("GET", _OWNER_REPO + r"/issues/(?P<n>\d+)/comments", self._h_comments, False, "issue"),
            ("POST", _OWNER_REPO + r"/issues/(?P<n>\d+)/comments", self._h_post_comment, True, "issue"),
            ("GET", _OWNER_REPO + r"/issues/(?P<n>\d+)/timeline", self._h_timeline, False, "issue"),
        ]
        for method, pattern, handler, signed_in, category in routes:
            self.add_route(method, API + pattern, self._authenticated(handler, signed_in, category))

    def _authenticated(
        self, handler: Callable[[Request, _User | None], Response], signed_in: bool, category: str | None
    ) -> Callable[[Request], Response]:
        """Forgejo's middleware order: token (401), ``tokenRequiresScopes`` (403), the repository
        (404, ``checkTokenPublicOnly`` 403), ``reqToken`` (401), then ``handler``."""

        def run(req: Request) -> Response:
            token = _request_token(req)
            with self._lock:
                viewer: _User | None = None
                scopes: frozenset[str] | None = None
                if token is not None:
                    login = self._tokens.get(token)
                    if login is None:
                        return _error(401, "invalid username, password or token")
                    viewer = self._users[login.lower()]
                    scopes = self._token_scopes.get(token)
                if viewer is not None and category is not None and scopes is not None:
                    level = "write" if req.method in ("POST", "PUT", "PATCH", "DELETE") else "read"
                    if not _has_scope(scopes, level, category):
                        return _error(403, f"token does not have at least one of required scope(s): [{level}:{category}]")
                if "owner" in req.params:
                    repo = self._visible_repo(req, viewer)
                    if repo is None:
                        return _not_found()
                    if scopes is not None and "public-only" in scopes and repo.private:
                        what = "repos" if category == "repository" else "issues"
                        return _error(403, f"token scope is limited to public {what}")
                if viewer is None and signed_in:
                    return _error(401, "token is required")
            return handler(req, viewer)

        return run

    def not_found(self, req: Request) -> Response:
        return _not_found()

    def injected_error(self, req: Request) -> Response:
        return _error(500, "injected fault: internal server error")

    # == HTTP: handlers =======================================================================

    def _h_version(self, req: Request, viewer: _User | None) -> Response:
        return Response.json({"version": FORGEJO_VERSION})

    def _h_settings_api(self, req: Request, viewer: _User | None) -> Response:
        return Response.json(
            {
                "max_response_items": self.max_page_size,
                "default_paging_num": self.default_page_size,
                "default_git_trees_per_page": 1000,
                "default_max_blob_size": 10485760,
            }
        )

    def _h_me(self, req: Request, viewer: _User | None) -> Response:
        with self._lock:
            return Response.json(self._user_json(viewer, viewer) if viewer else None)

    def _h_user(self, req: Request, viewer: _User | None) -> Response:
        with self._lock:
            name = req.params["name"]
            user = self._users.get(name.lower())
            if user is None:
                moved = self._redirects.get(name.lower())
                if moved is not None:  # context.RedirectToUser: 307 to the same path with the new name
                    location = req.path.replace(f"/users/{name}", f"/users/{moved.login}", 1)
                    if req.query:
                        location += "?" + urlencode([(k, v) for k, vs in req.query.items() for v in vs])
                    return Response(307, b"", {"Location": location})
                return _not_found(f"user redirect does not exist [name: {name}]")
            return Response.json(self._user_json(user, viewer))

    def _h_repo(self, req: Request, viewer: _User | None) -> Response:
        with self._lock:
            repo = self._visible_repo(req, viewer)
            if repo is None:
                return _not_found()
            return Response.json(self._repo_json(repo, viewer))

    def _h_labels(self, req: Request, viewer: _User | None) -> Response:
        with self._lock:
            repo = self._visible_repo(req, viewer)
            if repo is None:
                return _not_found()
            labels = sorted(repo.labels.values(), key=lambda lab: lab.id)
            return self._paginate(req, [self._label_json(repo, lab) for lab in labels])

    def _h_pull(self, req: Request, viewer: _User | None) -> Response:
        repo = self._visible_repo_unlocked(req, viewer)
        if repo is None:
            return _not_found()
        self._sync_heads(repo)
        with self._lock:
            issue = repo.issues.get(int(req.params["n"]))
            if issue is None or issue.pull is None:
                return _not_found("pull request does not exist")
            return Response.json(self._pull_json(repo, issue, viewer))

    def _h_merge(self, req: Request, viewer: _User | None) -> Response:
        """``routers/api/v1/repo/pull.go`` ``MergePullRequest``, its checks in Forgejo's order."""
        assert viewer is not None
        try:
            payload = req.json()
        except ValueError:
            return _error(422, "[Do]: Required")
        form = {str(k).lower(): v for k, v in payload.items()} if isinstance(payload, dict) else {}
        do = str(form.get("do") or "")
        if not do:
            return _error(422, "[Do]: Required")
        if do not in MERGE_STYLES:
            return _error(422, "[Do]: In")
        repo = self._visible_repo_unlocked(req, viewer)
        assert repo is not None
        number = int(req.params["n"])
        with self._lock:
            issue = repo.issues.get(number)
            if issue is None or issue.pull is None:
                return _not_found("pull request does not exist")
            pull = issue.pull
            # CheckPullMergeable
            if pull.merged:
                return _error(405, "")
            if issue.state != "open":
                return _not_found()
            if self._access(repo, viewer) not in ("write", "admin", "owner"):
                return _error(405, "User not allowed to merge PR")
        self._sync_heads(repo)
        if do != "manually-merged" and not self._mergeable_now(repo, pull):
            return _error(405, "Please try again later")
        if do == "manually-merged":
            try:
                self._merge(repo, number, merger=viewer.login, style=do, commit=str(form.get("mergecommitid") or ""),
                            message=None)
            except WrongCommitID:
                return Response.json({}, status=409)  # ctx.JSON(409, errors.New("Wrong commit ID"))
            return Response.empty(200)
        title = str(form.get("mergetitlefield") or "").strip()
        with self._lock:
            text = title or self._default_message(repo, issue, do, False)
        body = str(form.get("mergemessagefield") or "").strip()
        if body:
            text += "\n\n" + body
        if form.get("merge_when_checks_succeed"):
            try:
                self.schedule_merge(repo.full_name, number, by=viewer.login, style=do, message=text,
                                    delete_branch=bool(form.get("delete_branch_after_merge")))
            except AlreadyScheduled as exc:
                return _error(409, str(exc))
            return Response.empty(201)
        try:
            self._merge(repo, number, merger=viewer.login, style=do, commit=None, message=text,
                        expected_head=str(form.get("head_commit_id") or "") or None)
        except RebaseConflict as exc:
            return Response.json({"Style": do, "CommitSHA": "", "StdOut": "", "StdErr": str(exc), "Err": {}}, 409)
        except MergeConflict as exc:
            return Response.json({"Style": do, "StdOut": "", "StdErr": str(exc), "Err": {}}, 409)
        except HeadOutOfDate:
            return _error(409, "head out of date")
        except NotFastForward as exc:
            return _error(500, str(exc))  # ErrMergeDivergingFastForwardOnly is not mapped: ctx.Error(500, "Merge", err)
        if form.get("delete_branch_after_merge"):
            with self._lock:
                branch = pull.head_ref
            if branch == repo.default_branch:
                return _error(403, "the head branch is the default branch")
            if branch in _branch_heads(repo.git_dir):
                self.delete_branch(repo.full_name, branch)
        return Response.empty(200)

    def _mergeable_now(self, repo: _Repo, pull: _Pull) -> bool:
        """``pr.CanAutoMerge()``: the checker's verdict, here taken at once (a three-way merge test)."""
        heads = _branch_heads(repo.git_dir)
        base, head = heads.get(pull.base_ref), heads.get(pull.head_ref)
        if base is None or head is None:
            return False
        try:
            _merge_tree(repo.git_dir, base, head, "check")
        except MergeConflict:
            return False
        return True

    def _h_permission(self, req: Request, viewer: _User | None) -> Response:
        """``routers/api/v1/repo/collaborators.go`` ``GetRepoPermissions``."""
        assert viewer is not None
        with self._lock:
            repo = self._visible_repo(req, viewer)
            assert repo is not None
            name = req.params["name"]
            user = self._users.get(name.lower())
            if user is None:
                return _error(404, f"user does not exist [uid: 0, name: {name}]")
            if not viewer.is_admin and viewer.id != user.id and self._access(repo, viewer) not in ("admin", "owner"):
                return _error(403, PERMISSION_DENIED_OTHERS)
            mode = self._access(repo, user)
            return Response.json({"permission": mode, "role_name": mode, "user": self._user_json(user, viewer)})

    def _h_timeline(self, req: Request, viewer: _User | None) -> Response:
        """``ListIssueCommentsAndTimeline``: one page; ``X-Total-Count`` is that page's length; no ``Link``."""
        try:
            since = _time_arg(req, "since")
            before = _time_arg(req, "before")
        except ValueError as exc:
            return _error(422, f"GetQueryBeforeSince: {exc}")
        with self._lock:
            repo = self._visible_repo(req, viewer)
            assert repo is not None
            issue = repo.issues.get(int(req.params["n"]))
            if issue is None:
                return _not_found("issue does not exist")
            items = [
                item
                for item in self._timeline_items(issue)
                if (since is None or getattr(item, "updated", item.created) >= since)
                and (before is None or getattr(item, "updated", item.created) <= before)
            ]
            page, limit = self._list_options(req)
            shown = [self._timeline_json(repo, issue, item, viewer) for item in items[(page - 1) * limit : page * limit]]
            # Forgejo's handler appends to a nil slice: an empty page is JSON ``null``.
            return Response.json(shown or None, headers=_total_headers(len(shown)))

    def _h_reviews(self, req: Request, viewer: _User | None) -> Response:
        repo = self._visible_repo_unlocked(req, viewer)
        if repo is None:
            return _not_found()
        self._sync_heads(repo)
        with self._lock:
            issue = repo.issues.get(int(req.params["n"]))
            if issue is None or issue.pull is None:
                return _not_found("pull request does not exist")
            reviews = issue.pull.reviews
            page, limit = self._list_options(req)
            window = reviews[(page - 1) * limit : page * limit]
            shown = [
                self._review_json(repo, issue, rv, viewer)
                for rv in window
                if rv.state != "PENDING" or (viewer is not None and (viewer.is_admin or _same(viewer.login, rv.user)))
            ]
            # Forgejo counts every review, pending ones included, and sets no Link header here.
            return Response.json(shown, headers=_total_headers(len(reviews)))

    def _h_commit_pull(self, req: Request, viewer: _User | None) -> Response:
        with self._lock:
            repo = self._visible_repo(req, viewer)
            if repo is None:
                return _not_found()
            sha = req.params["sha"]
            for issue in repo.issues.values():
                if issue.pull is not None and issue.pull.merged and issue.pull.merge_commit_sha == sha:
                    return Response.json(self._pull_json(repo, issue, viewer))
            return _not_found(f"pull request does not exist [merge_commit_id: {sha}]")

    def _h_issues(self, req: Request, viewer: _User | None) -> Response:
        try:
            since = _time_arg(req, "since")
            before = _time_arg(req, "before")
        except ValueError as exc:
            return _error(422, f"GetQueryBeforeSince: {exc}")
        with self._lock:
            repo = self._visible_repo(req, viewer)
            if repo is None:
                return _not_found()
            kind = req.arg("type", "")
            state = req.arg("state", "open")
            wanted = [name for name in _csv(req.arg("labels", "")) if name in repo.labels]
            selected = [
                issue
                for issue in repo.issues.values()
                if _kind_matches(issue, kind)
                and (state == "all" or issue.state == ("closed" if state == "closed" else "open"))
                and all(name in issue.labels for name in wanted)
                and (since is None or issue.updated >= since)
                and (before is None or issue.updated <= before)
            ]
            selected.sort(key=_sort_key(req.arg("sort", "latest") or "latest"))
            return self._paginate(req, selected, convert=lambda issue: self._issue_json(repo, issue, viewer))

    def _h_issue(self, req: Request, viewer: _User | None) -> Response:
        with self._lock:
            repo = self._visible_repo(req, viewer)
            if repo is None:
                return _not_found()
            issue = repo.issues.get(int(req.params["n"]))
            if issue is None:
                return _not_found("issue does not exist")
            return Response.json(self._issue_json(repo, issue, viewer))

    def _h_comments(self, req: Request, viewer: _User | None) -> Response:
        try:
            since = _time_arg(req, "since")
            before = _time_arg(req, "before")
        except ValueError as exc:
            return _error(422, f"GetQueryBeforeSince: {exc}")
        with self._lock:
            repo = self._visible_repo(req, viewer)
            if repo is None:
                return _not_found()
            issue = repo.issues.get(int(req.params["n"]))
            if issue is None:
                return _not_found("issue does not exist")
            shown = [
                self._comment_json(repo, issue, c, viewer)
                for c in issue.comments
                if (since is None or c.updated >= since) and (before is None or c.updated <= before)
            ]
            return Response.json(shown, headers=_total_headers(len(shown)))

    def _h_post_comment(self, req: Request, viewer: _User | None) -> Response:
        assert viewer is not None
        try:
            payload = req.json()
        except ValueError:
            return _error(422, "invalid JSON body")
        body = payload.get("body") if isinstance(payload, dict) else None
        if not isinstance(body, str) or not body.strip():
            return _error(422, "[Body]: Required")
        with self._lock:
            repo = self._visible_repo(req, viewer)
            if repo is None:
                return _not_found()
            issue = repo.issues.get(int(req.params["n"]))
            if issue is None:
                return _not_found("issue does not exist")
            comment = self._comment(issue, viewer.login, body)
            return Response.json(self._comment_json(repo, issue, comment, viewer), status=201)

    # == HTTP: helpers ========================================================================

    def _list_options(self, req: Request) -> tuple[int, int]:
        """``page`` (>= 1) and ``limit`` (default 30, at most 50) as Forgejo reads them."""
        page = max(_int_arg(req, "page"), 1)
        limit = _int_arg(req, "limit")
        if limit <= 0:
            limit = self.default_page_size
        return page, min(limit, self.max_page_size)

    def _paginate(self, req: Request, items: list[Any], convert: Callable[[Any], Any] | None = None) -> Response:
        """One page of ``items`` with ``X-Total-Count`` and Forgejo's ``Link`` header (``convert``
        turns the page's items, only them, into JSON: a tracker of 12,000 issues stays cheap)."""
        page, limit = self._list_options(req)
        headers = _total_headers(len(items))
        links = self._links(req, len(items), limit, _int_arg(req, "page"))
        if links:
            headers["Link"] = ",".join(links)
            headers["Access-Control-Expose-Headers"] = "X-Total-Count, Link"
        chosen = items[(page - 1) * limit : page * limit]
        return Response.json([convert(i) for i in chosen] if convert else chosen, headers=headers)

    def _links(self, req: Request, total: int, limit: int, requested_page: int) -> list[str]:
        """Forgejo's ``genAPILinks``: next, last, first, prev - whichever apply."""
        pages = max(1, -(-total // limit))
        current = min(max(requested_page, 1), pages)

        def link(page: int, rel: str) -> str:
            query = {k: v[0] for k, v in req.query.items()}
            query["page"] = str(page)
            return f'<{self.address}{req.path}?{urlencode(sorted(query.items()))}>; rel="{rel}"'

        links = []
        has_next = total > current * limit
        if has_next:
            links.append(link(current + 1, "next"))
        if total > 0 and (has_next or total <= (current - 1) * limit):
            links.append(link(pages, "last"))
        if current != 1:
            links.append(link(1, "first"))
        if current > 1:
            links.append(link(current - 1, "prev"))
        return links

    def _visible_repo(self, req: Request, viewer: _User | None) -> _Repo | None:
        """The repository of the path, or None when it does not exist or the caller may not see it.

        A private repository is seen by its owner, site admins and its collaborators only.
        """
        repo = self._repos.get(f"{req.params['owner']}/{req.params['repo']}".lower())
        if repo is None or self._access(repo, viewer) == "none":
            return None
        return repo

    def _visible_repo_unlocked(self, req: Request, viewer: _User | None) -> _Repo | None:
        with self._lock:
            return self._visible_repo(req, viewer)

    # == JSON shapes ==========================================================================

    def _user_json(self, user: _User, viewer: _User | None) -> dict[str, Any]:
        """Forgejo's ``convert.ToUser``: ``is_admin`` only for a site admin or the user themself."""
        authed = viewer is not None and (viewer.is_admin or viewer.id == user.id)
        return {
            "id": user.id,
            "login": user.login,
            "login_name": "",
            "source_id": 0,
            "full_name": "",
            "email": user.email,
            "avatar_url": f"{self.address}/avatars/{user.id}",
            "html_url": f"{self.address}/{user.login}",
            "language": "",
            "is_admin": user.is_admin if authed else False,
            "last_login": rfc3339(user.created) if authed else "0001-01-01T00:00:00Z",
            "created": rfc3339(user.created),
            "restricted": False,
            "active": True,
            "prohibit_login": False,
            "location": "",
            "pronouns": "",
            "website": "",
            "description": "",
            "visibility": "public",
            "followers_count": 0,
            "following_count": 0,
            "starred_repos_count": 0,
            "username": user.login,
        }

    def _user_ref(self, login: str | None, viewer: _User | None) -> dict[str, Any] | None:
        if login is None:
            return None
        return self._user_json(self._users[login.lower()], viewer)

    def _repo_json(self, repo: _Repo, viewer: _User | None, heads: dict[str, str] | None = None) -> dict[str, Any]:
        base = f"{self.address}/{repo.full_name}"
        heads = _branch_heads(repo.git_dir) if heads is None else heads
        return {
            "id": repo.id,
            "owner": self._user_ref(repo.owner, viewer),
            "name": repo.name,
            "full_name": repo.full_name,
            "description": "",
            "empty": not heads,
            "private": repo.private,
            "fork": False,
            "template": False,
            "mirror": False,
            "archived": False,
            "html_url": base,
            "url": f"{self.address}{API}/repos/{repo.full_name}",
            "clone_url": f"{base}.git",
            "ssh_url": f"git@127.0.0.1:{repo.full_name}.git",
            "default_branch": repo.default_branch,
            "has_issues": True,
            "has_pull_requests": True,
            "created_at": rfc3339(repo.created),
            "updated_at": rfc3339(repo.created),
            "permissions": self._permissions_json(repo, viewer),
        }

    def _permissions_json(self, repo: _Repo, viewer: _User | None) -> dict[str, bool]:
        level = _ACCESS_ORDER[self._access(repo, viewer)]
        return {"admin": level >= _ACCESS_ORDER["admin"], "push": level >= _ACCESS_ORDER["write"], "pull": level >= 1}

    def _timeline_json(
        self, repo: _Repo, issue: _Issue, item: _Event | _Comment, viewer: _User | None
    ) -> dict[str, Any]:
        """``convert.ToTimelineComment`` (``modules/structs/issue_comment.go`` ``TimelineComment``)."""
        kind = "pulls" if issue.pull is not None else "issues"
        html = f"{self.address}/{repo.full_name}/{kind}/{issue.number}"
        updated = getattr(item, "updated", item.created)
        return {
            "id": item.id,
            "type": item.type if isinstance(item, _Event) else "comment",
            "html_url": f"{html}#issuecomment-{item.id}",
            "pull_request_url": html if issue.pull is not None else "",
            "issue_url": html if issue.pull is None else "",
            "user": self._user_ref(item.user, viewer),
            "body": item.body,
            "created_at": rfc3339(item.created),
            "updated_at": rfc3339(updated),
            "old_project_id": 0,
            "project_id": 0,
            "old_milestone": None,
            "milestone": None,
            "tracked_time": None,
            "old_title": "",
            "new_title": "",
            "old_ref": "",
            "new_ref": "",
            "ref_issue": None,
            "ref_comment": None,
            "ref_action": "",
            "ref_commit_sha": "",
            "review_id": item.review_id if isinstance(item, _Event) else 0,
            "label": None,
            "assignee": None,
            "assignee_team": None,
            "removed_assignee": False,
            "resolve_doer": None,
            "dependent_issue": None,
        }

    def _label_json(self, repo: _Repo, label: _Label) -> dict[str, Any]:
        return {
            "id": label.id,
            "name": label.name,
            "exclusive": False,
            "is_archived": False,
            "color": label.color,
            "description": label.description,
            "url": f"{self.address}{API}/repos/{repo.full_name}/labels/{label.id}",
        }

    def _issue_json(self, repo: _Repo, issue: _Issue, viewer: _User | None) -> dict[str, Any]:
        kind = "pulls" if issue.pull is not None else "issues"
        pull_ref = None
        if issue.pull is not None:
            pull_ref = {
                "merged": issue.pull.merged,
                "merged_at": _time_or_none(issue.pull.merged_at),
                "draft": False,
                "html_url": f"{self.address}/{repo.full_name}/pulls/{issue.number}",
            }
        return {
            "id": issue.id,
            "url": f"{self.address}{API}/repos/{repo.full_name}/issues/{issue.number}",
            "html_url": f"{self.address}/{repo.full_name}/{kind}/{issue.number}",
            "number": issue.number,
            "user": self._user_ref(issue.author, viewer),
            "original_author": "",
            "original_author_id": 0,
            "title": issue.title,
            "body": issue.body,
            "ref": "",
            "assets": [],
            "labels": [self._label_json(repo, repo.labels[name]) for name in issue.labels],
            "milestone": None,
            "assignee": None,
            "assignees": None,
            "state": issue.state,
            "is_locked": False,
            "comments": len(issue.comments),
            "created_at": rfc3339(issue.created),
            "updated_at": rfc3339(issue.updated),
            "closed_at": _time_or_none(issue.closed),
            "due_date": None,
            "pull_request": pull_ref,
            "repository": {"id": repo.id, "name": repo.name, "owner": repo.owner, "full_name": repo.full_name},
            "pin_order": 0,
        }

    def _pull_json(self, repo: _Repo, issue: _Issue, viewer: _User | None) -> dict[str, Any]:
        pull = issue.pull
        assert pull is not None
        html = f"{self.address}/{repo.full_name}/pulls/{issue.number}"
        heads = _branch_heads(repo.git_dir)
        repo_ref = self._repo_json(repo, viewer, heads)
        return {
            "id": issue.id,
            "url": html,
            "number": issue.number,
            "user": self._user_ref(issue.author, viewer),
            "title": issue.title,
            "body": issue.body,
            "labels": [self._label_json(repo, repo.labels[name]) for name in issue.labels],
            "milestone": None,
            "assignee": None,
            "assignees": None,
            "requested_reviewers": None,
            "requested_reviewers_teams": None,
            "state": issue.state,
            "draft": False,
            "is_locked": False,
            "comments": len(issue.comments),
            "review_comments": 0,
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "mergeable": issue.state == "open",
            "merged": pull.merged,
            "merged_at": _time_or_none(pull.merged_at),
            "merge_commit_sha": pull.merge_commit_sha,
            "merged_by": self._user_ref(pull.merged_by, viewer),
            "allow_maintainer_edit": False,
            "base": {
                "label": pull.base_ref,
                "ref": pull.base_ref,
                "sha": heads.get(pull.base_ref, pull.merge_base),
                "repo_id": repo.id,
                "repo": repo_ref,
            },
            # convert.ToAPIPullRequest reads the head *branch* live (a push shows at once, merged
            # or not); once the branch is gone: ref refs/pull/<n>/head and the commit it holds.
            "head": {
                "label": pull.head_ref,
                "ref": pull.head_ref if pull.head_ref in heads else f"refs/pull/{issue.number}/head",
                "sha": heads.get(pull.head_ref) or _pull_ref(repo.git_dir, issue.number) or pull.head_sha,
                "repo_id": repo.id,
                "repo": repo_ref,
            },
            "merge_base": pull.merge_base,
            "due_date": None,
            "created_at": rfc3339(issue.created),
            "updated_at": rfc3339(issue.updated),
            "closed_at": _time_or_none(issue.closed),
            "pin_order": 0,
            "flow": 0,
        }

    def _review_json(self, repo: _Repo, issue: _Issue, review: _Review, viewer: _User | None) -> dict[str, Any]:
        html = f"{self.address}/{repo.full_name}/pulls/{issue.number}"
        return {
            "id": review.id,
            "user": self._user_ref(review.user, viewer),
            "team": None,
            "state": review.state,
            "body": review.body,
            "commit_id": review.commit_id,
            "stale": review.stale,
            "official": review.official,
            "dismissed": review.dismissed,
            "comments_count": 0,
            "submitted_at": rfc3339(review.submitted),
            "updated_at": rfc3339(review.updated),
            "html_url": f"{html}#issuecomment-{review.id}",
            "pull_request_url": html,
        }

    def _comment_json(self, repo: _Repo, issue: _Issue, comment: _Comment, viewer: _User | None) -> dict[str, Any]:
        kind = "pulls" if issue.pull is not None else "issues"
        html = f"{self.address}/{repo.full_name}/{kind}/{issue.number}"
        return {
            "id": comment.id,
            "html_url": f"{html}#issuecomment-{comment.id}",
            "pull_request_url": html if issue.pull is not None else "",
            "issue_url": html if issue.pull is None else "",
            "user": self._user_ref(comment.user, viewer),
            "original_author": "",
            "original_author_id": 0,
            "body": comment.body,
            "assets": [],
            "created_at": rfc3339(comment.created),
            "updated_at": rfc3339(comment.updated),
        }

    # == internals ============================================================================

    def _ensure_user(self, login: str) -> _User:
        user = self._users.get(login.lower())
        if user is None:
            user = _User(id=next(self._ids), login=login, is_admin=False, created=self._clock.now())
            self._users[login.lower()] = user
            self._redirects.pop(login.lower(), None)
        return user

    def _user(self, login: str) -> _User:
        user = self._users.get(login.lower())
        if user is None:
            raise ForgeDoubleError(f"no user {login!r}; add_user it first")
        return user

    def _mint_token(self, user: _User, scopes: frozenset[str] | None) -> str:
        token = secrets.token_hex(20)
        user.tokens.append(token)
        self._tokens[token] = user.login
        self._token_scopes[token] = scopes
        return token

    def _repo(self, name: str) -> _Repo:
        with self._lock:
            repo = self._repos.get(name.lower())
        if repo is None:
            raise ForgeDoubleError(f"no repository {name!r}; add_repo it first")
        return repo

    def _ensure_label(self, repo: _Repo, name: str, *, color: str = "e11d21", description: str = "") -> _Label:
        label = repo.labels.get(name)
        if label is None:
            label = _Label(id=next(self._ids), name=name, color=color, description=description)
            repo.labels[name] = label
        return label

    def _next_number(self, repo: _Repo) -> int:
        """Issues and pull requests share one sequence of numbers per repository, as in Forgejo."""
        number = repo.next_number
        repo.next_number += 1
        return number

    def _issue(self, repo: _Repo, number: int) -> _Issue:
        issue = repo.issues.get(number)
        if issue is None:
            raise ForgeDoubleError(f"no issue or pull request #{number} in {repo.full_name}")
        return issue

    def _pull_issue(self, repo: _Repo, number: int) -> _Issue:
        issue = self._issue(repo, number)
        if issue.pull is None:
            raise ForgeDoubleError(f"#{number} of {repo.full_name} is an issue, not a pull request")
        return issue

    def _find_review(self, repo: _Repo, review_id: int) -> tuple[_Issue, _Review]:
        for issue in repo.issues.values():
            for review in issue.pull.reviews if issue.pull else ():
                if review.id == review_id:
                    return issue, review
        raise ForgeDoubleError(f"no review {review_id} in {repo.full_name}")

    def _set_state(self, issue: _Issue, state: str) -> None:
        if issue.pull is not None and issue.pull.merged:
            raise ForgeDoubleError(f"#{issue.number} is merged; its state cannot change")
        if issue.state != state:
            now = self._clock.now()
            issue.state = state
            issue.closed = now if state == "closed" else None
            issue.updated = now

    def _comment(self, issue: _Issue, user: str, body: str) -> _Comment:
        now = self._clock.now()
        comment = _Comment(id=next(self._ids), user=user, body=body, created=now, updated=now)
        issue.comments.append(comment)
        issue.updated = now
        return comment

    def _sync_heads(self, repo: _Repo, pusher: str | None = None) -> None:
        """Notice pushes to the head branches of open pull requests (made here or by tests).

        A moved head is only *queued* (``_Push``), as Forgejo's post-receive hook queues
        ``AddTestPullRequestTask``; ``settle()`` does the rest. The pusher of a push made
        behind the double's back (``file://``) is taken to be the pull request's author.
        """
        with repo.git_lock:
            with self._lock:
                open_pulls = [
                    i for i in repo.issues.values() if i.pull is not None and i.state == "open" and not i.pull.merged
                ]
            if not open_pulls:
                return
            heads = _branch_heads(repo.git_dir)
            with self._lock:
                for issue in open_pulls:
                    pull = issue.pull
                    assert pull is not None
                    new = heads.get(pull.head_ref)
                    if new is None or new == pull.seen_head:
                        continue
                    repo.pending.append(_Push(issue.number, pull.seen_head, new, pusher or issue.author))
                    pull.seen_head = new

    def _event(self, issue: _Issue, kind: str, user: str, body: str, review_id: int = 0) -> _Event:
        now = self._clock.now()
        event = _Event(id=next(self._ids), type=kind, user=user, body=body, created=now, review_id=review_id)
        issue.events.append(event)
        issue.updated = now
        return event

    def _timeline_items(self, issue: _Issue) -> list[_Event | _Comment]:
        items: list[_Event | _Comment] = [*issue.events, *issue.comments]
        return sorted(items, key=lambda item: (item.created, item.id))

    def _access(self, repo: _Repo, user: _User | None) -> str:
        """``access_model.GetUserRepoPermission``'s ``AccessMode`` as ``AccessMode.String()`` names it."""
        if user is None:
            return "none" if repo.private else "read"
        if user.is_admin or _same(user.login, repo.owner):
            return "owner"
        mode = repo.collaborators.get(user.login.lower())
        if mode is not None:
            return mode
        return "none" if repo.private else "read"

# -- git plumbing ---------------------------------------------------------------------------


def _run_git(
    args: list[str], *, input: bytes | None = None, ok: tuple[int, ...] = (0,), env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run git with the caller's environment (plus ``env``); raise ``ForgeDoubleError`` on failure."""
    proc = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", *args],
        input=input,
        capture_output=True,
        check=False,
        env={**os.environ, **env} if env else None,
    )
    if proc.returncode not in ok:
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        raise ForgeDoubleError(f"git {' '.join(args)[:200]} failed: {stderr}")
    return proc


def _git(
    git_dir: Path, *args: str, input: bytes | None = None, ok: tuple[int, ...] = (0,), env: Mapping[str, str] | None = None
) -> str:
    return _run_git(["--git-dir", str(git_dir), *args], input=input, ok=ok, env=env).stdout.decode("utf-8")


def _ident_env(role: str, name: str, email: str, date: str | None = None) -> dict[str, str]:
    env = {f"GIT_{role}_NAME": name, f"GIT_{role}_EMAIL": email}
    if date is not None:
        env[f"GIT_{role}_DATE"] = date
    return env


def _is_ancestor(git_dir: Path, ancestor: str, descendant: str) -> bool:
    proc = _run_git(["--git-dir", str(git_dir), "merge-base", "--is-ancestor", ancestor, descendant], ok=(0, 1, 128))
    return proc.returncode == 0


def _merge_base(git_dir: Path, a: str, b: str) -> str | None:
    proc = _run_git(["--git-dir", str(git_dir), "merge-base", a, b], ok=(0, 1))
    return proc.stdout.decode().strip() or None


def _diff_differs(git_dir: Path, base: str, tracking: str, old: str, new: str) -> bool:
    """Forgejo's ``checkIfPRContentChanged`` (v11, ``services/pull/pull.go``; v12+: ``CheckIfDiffDiffers``).

    ``git diff --name-only -z <new> <old> <merge-base of base and the head>``: a combined
    diff of ``new`` against both, so a file counts only where ``new`` differs from the old
    head *and* from the merge base (a rebase onto a moved base, a reworded commit, or a
    change reverted back to the base leaves the reviews fresh).
    """
    merge_base = _merge_base(git_dir, base, tracking) or base
    out = _run_git(["--git-dir", str(git_dir), "diff", "--name-only", "-z", new, old, merge_base]).stdout
    return bool(out.strip(b"\0"))


def _rebase(git_dir: Path, onto: str, head: str, committer: str, what: str) -> str:
    """``rebaseTrackingOnToBase`` + ``merge --ff-only``: the last commit of ``head`` replayed on ``onto``.

    When the head already contains ``onto`` (zero commits behind) nothing is replayed and
    the head itself is returned. Otherwise each non-merge commit not already upstream
    (``git rebase``'s ``--cherry-pick`` rule) is applied in order, author and message kept,
    committer = ``committer``; one that becomes empty is dropped; a commit that does not
    apply raises ``RebaseConflict``.
    """
    if _is_ancestor(git_dir, onto, head):
        return head
    todo = _git(git_dir, "rev-list", "--reverse", "--topo-order", "--no-merges", "--right-only", "--cherry-pick",
                f"{onto}...{head}").split()
    current = onto
    index = git_dir / f"forge-double-rebase-{os.getpid()}-{threading.get_ident()}.index"
    env = {"GIT_INDEX_FILE": str(index)}
    try:
        for commit in todo:
            raw = _run_git(["--git-dir", str(git_dir), "cat-file", "commit", commit]).stdout
            header, _, message = raw.partition(b"\n\n")
            author = next(line for line in header.split(b"\n") if line.startswith(b"author "))
            ident = author[len(b"author "):].decode("utf-8", "replace")
            name, _, rest = ident.partition(" <")
            email, _, date = rest.partition("> ")
            _git(git_dir, "read-tree", current, env=env)
            patch = _run_git(["--git-dir", str(git_dir), "diff-tree", "-p", "--binary", "--full-index", f"{commit}^", commit]).stdout
            if patch.strip():
                applied = _run_git(["--git-dir", str(git_dir), "apply", "--cached", "--3way", "-"],
                                   input=patch, ok=(0, 1, 128), env=env)
                if applied.returncode != 0:
                    raise RebaseConflict(f"{what} does not rebase cleanly: commit {commit} does not apply")
            tree = _git(git_dir, "write-tree", env=env).strip()
            if tree == _tree_of(git_dir, current):
                continue
            commit_env = _ident_env("AUTHOR", name, email, date) | _ident_env(
                "COMMITTER", committer, f"{committer}@noreply.localhost"
            )
            current = _git(git_dir, "commit-tree", tree, "-p", current, input=message, env=commit_env).strip()
    finally:
        index.unlink(missing_ok=True)
    return current


def _branch_heads(git_dir: Path) -> dict[str, str]:
    """Every branch of the repository and the commit it points at, in one git call."""
    out = _git(git_dir, "for-each-ref", "--format=%(objectname) %(refname:strip=2)", "refs/heads/")
    return {name: sha for sha, _, name in (line.partition(" ") for line in out.splitlines() if line)}


def _tree_of(git_dir: Path, commit: str | None) -> str | None:
    if commit is None:
        return None
    return _git(git_dir, "rev-parse", f"{commit}^{{tree}}").strip()


def _encode_files(files: Mapping[str, bytes | str | None]) -> dict[str, bytes | None]:
    encoded: dict[str, bytes | None] = {}
    for path, content in files.items():
        clean = path.strip("/")
        if not clean or any(part in ("", ".", "..", ".git") for part in clean.split("/")):
            raise ValueError(f"not a valid path inside a repository: {path!r}")
        encoded[clean] = content.encode("utf-8") if isinstance(content, str) else content
    return encoded


def _write_tree(git_dir: Path, base_tree: str | None, files: Mapping[str, bytes | None]) -> str:
    """The tree ``base_tree`` with ``files`` written (None deletes), built with ``mktree``."""
    tree = _write_subtree(git_dir, base_tree, {tuple(p.split("/")): c for p, c in files.items()})
    return tree or _git(git_dir, "mktree", "-z", input=b"").strip()


def _write_subtree(git_dir: Path, base_tree: str | None, changes: dict[tuple[str, ...], bytes | None]) -> str | None:
    """One level of ``_write_tree``; returns None when the directory ends up empty."""
    entries = _ls_tree(git_dir, base_tree)
    nested: dict[str, dict[tuple[str, ...], bytes | None]] = {}
    for parts, content in changes.items():
        if len(parts) > 1:
            nested.setdefault(parts[0], {})[parts[1:]] = content
        elif content is None:
            entries.pop(parts[0], None)
        else:
            oid = _git(git_dir, "hash-object", "-w", "--stdin", input=content).strip()
            entries[parts[0]] = ("100644", "blob", oid)
    for name, sub in nested.items():
        existing = entries.get(name)
        sub_tree = _write_subtree(git_dir, existing[2] if existing and existing[1] == "tree" else None, sub)
        if sub_tree is None:
            entries.pop(name, None)
        else:
            entries[name] = ("040000", "tree", sub_tree)
    if not entries:
        return None
    listing = b"".join(
        f"{mode} {kind} {oid}\t{name}".encode("utf-8") + b"\0" for name, (mode, kind, oid) in entries.items()
    )
    return _git(git_dir, "mktree", "-z", input=listing).strip()


def _ls_tree(git_dir: Path, tree: str | None) -> dict[str, tuple[str, str, str]]:
    if tree is None:
        return {}
    out = _run_git(["--git-dir", str(git_dir), "ls-tree", "-z", tree]).stdout
    entries: dict[str, tuple[str, str, str]] = {}
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, name = record.partition(b"\t")
        mode, kind, oid = meta.decode("ascii").split(" ")
        entries[name.decode("utf-8", "surrogateescape")] = (mode, kind, oid)
    return entries


def _commit_tree(git_dir: Path, tree: str, parents: list[str], message: str, login: str) -> str:
    """A commit of ``tree`` whose author and committer are the forge user ``login``."""
    args = ["-c", f"user.name={login}", "-c", f"user.email={login}@noreply.localhost", "commit-tree", tree]
    for parent in parents:
        args += ["-p", parent]
    return _git(git_dir, *args, input=message.encode("utf-8")).strip()


def _merge_tree(git_dir: Path, base: str, head: str, what: str) -> str:
    """The tree of merging ``head`` into ``base``; ``MergeConflict`` when they conflict."""
    proc = _run_git(["--git-dir", str(git_dir), "merge-tree", "--write-tree", "--name-only", base, head], ok=(0, 1))
    lines = proc.stdout.decode("utf-8", "replace").splitlines()
    if proc.returncode == 1:
        conflicted = [line for line in lines[1:] if line and not line.startswith(("Auto-merging", "CONFLICT"))]
        raise MergeConflict(f"{what} does not merge cleanly: conflicts in {', '.join(conflicted) or 'the tree'}")
    return lines[0].strip()


def _pull_ref(git_dir: Path, number: int) -> str | None:
    proc = _run_git(["--git-dir", str(git_dir), "rev-parse", "--verify", "-q", f"refs/pull/{number}/head"], ok=(0, 1))
    return proc.stdout.decode().strip() or None


def _update_ref(git_dir: Path, ref: str, new: str, old: str | None) -> bool:
    """Point ``ref`` at ``new`` if it still holds ``old`` (ZERO_OID: must not exist; None: any)."""
    args = ["update-ref", "-m", "forge double", ref, new] + ([old] if old is not None else [])
    proc = _run_git(["--git-dir", str(git_dir), *args], ok=(0, 1, 128))
    return proc.returncode == 0


# -- small helpers --------------------------------------------------------------------------


def _request_token(req: Request) -> str | None:
    """The API token of a request: ``Authorization: token|Bearer``, basic auth, or the query."""
    header = req.header("authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        if scheme in ("token", "bearer"):
            return value.strip()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip()).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return ""
            return decoded.partition(":")[2]
        return ""
    return req.arg("token") or req.arg("access_token")


def _check_usable_username(name: str) -> None:
    """``user_model.IsUsableUsername``: Forgejo's name rule, then the reserved names and patterns."""
    if not _VALID_USERNAME.match(name) or _SPECIAL_RUN.search(name):
        raise NameRefused(f"name is invalid [{name}]: must be valid alpha or numeric or dash(-_) or dot characters")
    lower = name.strip().lower()
    if lower in RESERVED_USERNAMES or lower.endswith(RESERVED_USER_SUFFIXES):
        raise NameRefused(f"name is reserved [name: {name}]")


def _has_scope(scopes: frozenset[str], level: str, category: str) -> bool:
    """``AccessTokenScope.HasScope``: ``all`` grants everything, ``write:<c>`` implies ``read:<c>``."""
    if "all" in scopes or f"write:{category}" in scopes:
        return True
    return level == "read" and f"read:{category}" in scopes


def _error(status: int, message: str) -> Response:
    return Response.json({"message": message, "url": SWAGGER_URL}, status=status)


def _not_found(message: str = "The target couldn't be found.") -> Response:
    return Response.json({"errors": [message], "message": "The target couldn't be found.", "url": SWAGGER_URL}, 404)


def _total_headers(total: int) -> dict[str, str]:
    return {"X-Total-Count": str(total), "Access-Control-Expose-Headers": "X-Total-Count"}


def _int_arg(req: Request, name: str) -> int:
    """Like Go's ``FormInt``: 0 when absent or not an integer."""
    try:
        return int(req.arg(name, "0") or "0")
    except ValueError:
        return 0


def _time_arg(req: Request, name: str) -> int | None:
    raw = req.arg(name)
    return parse_rfc3339(raw) if raw else None


def _time_or_none(epoch: int | None) -> str | None:
    return rfc3339(epoch) if epoch is not None else None


def _csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def _kind_matches(issue: _Issue, kind: str | None) -> bool:
    if kind == "issues":
        return issue.pull is None
    if kind == "pulls":
        return issue.pull is not None
    return True


def _sort_key(sort: str) -> Callable[[_Issue], tuple[int, int]]:
    """Forgejo's issue sorts: latest (default), oldest, recentupdate, leastupdate."""
    if sort == "oldest":
        return lambda i: (i.created, i.id)
    if sort == "recentupdate":
        return lambda i: (-i.updated, -i.id)
    if sort == "leastupdate":
        return lambda i: (i.updated, i.id)
    return lambda i: (-i.created, -i.id)


__all__ = [
    "ForgeDouble",
    "ForgeDoubleError",
    "MergeConflict",
    "RebaseConflict",
    "NotFastForward",
    "WrongCommitID",
    "HeadOutOfDate",
    "AlreadyScheduled",
    "NameRefused",
    "MERGE_STYLES",
    "TOKEN_SCOPES",
    "RESERVED_USERNAMES",
    "PERMISSION_DENIED_OTHERS",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "REVIEW_STATES",
    "rfc3339",
    "parse_rfc3339",
]
