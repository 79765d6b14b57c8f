"""A Forgejo protocol double (API v1) whose repositories are real bare git repositories.

What it serves, under ``/api/v1`` (see ``shared/docs/CONTRACTS.md``, Forgejo):

* ``GET /user``, ``GET /users/{name}`` - ``is_admin`` is truthful only to a site admin or to
  the user looking up themself, as Forgejo's ``convert.ToUser`` does.
* ``GET /repos/{o}/{r}``, ``GET /repos/{o}/{r}/labels``.
* ``GET /repos/{o}/{r}/pulls/{n}`` - the merger is ``merged_by`` (Forgejo has no separate merge-user field),
  ``user`` is the author.
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
  private repository.

Tests and the demo script the forge through Python (``add_user``, ``add_repo``,
``open_pull``, ``review``, ``merge``, ``commit_direct``, ``add_issue`` ...). Every git change
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

from reconciler.doubles.http import DoubleServer, Request, Response

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


class ForgeDoubleError(RuntimeError):
    """A scripting call the forge itself would refuse (unknown repo, merged twice, git failure)."""


class MergeConflict(ForgeDoubleError):
    """The pull request's branch does not merge cleanly into its base."""


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
class _Pull:
    head_ref: str
    head_sha: str
    base_ref: str
    merge_base: str
    merged: bool = False
    merged_at: int | None = None
    merged_by: str | None = None
    merge_commit_sha: str | None = None
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
        self._repos: dict[str, _Repo] = {}
        self._ids = itertools.count(1)
        self._install_routes()
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
        """Make sure ``login`` exists with this admin flag; return a new API token for them."""
        with self._lock:
            user = self._ensure_user(login)
            user.is_admin = is_admin
            return self._mint_token(user)

    def token_for(self, login: str) -> str:
        """The user's most recent token (one is minted when they have none)."""
        with self._lock:
            user = self._user(login)
            return user.tokens[-1] if user.tokens else self._mint_token(user)

    def new_token(self, login: str) -> str:
        """Mint another token for an existing user."""
        with self._lock:
            return self._mint_token(self._user(login))

    def revoke_token(self, token: str) -> None:
        """Delete a token: the forge answers 401 to it from now on."""
        with self._lock:
            login = self._tokens.pop(token, None)
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
        repository). A push to the head branch of an open pull request moves its head and
        marks earlier reviews stale, as Forgejo does.
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
                    self._sync_heads(r)
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
                    pull=_Pull(head_ref=head_ref, head_sha=sha, base_ref=base, merge_base=base_sha),
                )
        return number

    def merge(self, repo: str, number: int, *, merger: str, message: str | None = None) -> str:
        """Merge the pull request with a real ``--no-ff`` merge commit; return its sha.

        The message defaults to Forgejo's: ``Merge pull request '<title>' (#<n>) from <branch>
        into <base>``, then ``Reviewed-on`` and ``Reviewed-by`` trailers. The base may have
        moved since the pull request was opened; only a conflict stops the merge.
        """
        r = self._repo(repo)
        with r.git_lock:
            with self._lock:
                self._ensure_user(merger)
                issue = self._pull_issue(r, number)
                pull = issue.pull
                assert pull is not None
                if pull.merged or issue.state != "open":
                    raise ForgeDoubleError(f"pull request #{number} of {repo} is not open (merged={pull.merged})")
            self._sync_heads(r)
            for _ in range(5):
                heads = _branch_heads(r.git_dir)
                base_sha = heads.get(pull.base_ref)
                head_sha = heads.get(pull.head_ref, pull.head_sha)
                if base_sha is None:
                    raise ForgeDoubleError(f"base branch {pull.base_ref!r} of {repo} is gone")
                tree = _merge_tree(r.git_dir, base_sha, head_sha, f"{repo}#{number}")
                with self._lock:
                    text = message if message is not None else self._merge_message(r, issue)
                sha = _commit_tree(r.git_dir, tree, [base_sha, head_sha], text, merger)
                if _update_ref(r.git_dir, f"refs/heads/{pull.base_ref}", sha, base_sha):
                    break
            else:
                raise ForgeDoubleError(f"base branch {pull.base_ref} of {repo} kept moving during the merge")
            with self._lock:
                now = self._clock.now()
                pull.head_sha = head_sha
                pull.merged = True
                pull.merged_at = now
                pull.merged_by = merger
                pull.merge_commit_sha = sha
                issue.state = "closed"
                issue.closed = now
                issue.updated = now
        return sha

    def close_pull(self, repo: str, number: int) -> None:
        """Close a pull request without merging it."""
        r = self._repo(repo)
        with self._lock:
            issue = self._pull_issue(r, number)
            self._set_state(issue, "closed")

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
        """Submit a review (commit defaults to the current head); returns the review id.

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
                commit_id=commit_id or issue.pull.head_sha,
                stale=stale,
                dismissed=dismissed,
                official=(state in ("APPROVED", "REQUEST_CHANGES")) if official is None else official,
                submitted=now,
                updated=now,
            )
            issue.pull.reviews.append(review)
            issue.updated = now
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

    def issue_json(self, repo: str, number: int) -> dict[str, Any]:
        """The issue as ``GET /repos/{o}/{r}/issues/{n}`` shows it (handy in assertions)."""
        r = self._repo(repo)
        with self._lock:
            return self._issue_json(r, self._issue(r, number), None)

    # == HTTP: routes =========================================================================

    def _install_routes(self) -> None:
        routes: list[tuple[str, str, Callable[[Request, _User | None], Response], bool]] = [
            ("GET", r"/version", self._h_version, False),
            ("GET", r"/settings/api", self._h_settings_api, False),
            ("GET", r"/user", self._h_me, True),
            ("GET", r"/users/(?P<name>[^/]+)", self._h_user, False),
            ("GET", _OWNER_REPO, self._h_repo, False),
            ("GET", _OWNER_REPO + r"/labels", self._h_labels, False),
            ("GET", _OWNER_REPO + r"/pulls/(?P<n>\d+)", self._h_pull, False),
            ("GET", _OWNER_REPO + r"/pulls/(?P<n>\d+)/reviews", self._h_reviews, False),
            ("GET", _OWNER_REPO + r"/commits/(?P<sha>[^/]+)/pull", self._h_commit_pull, False),
            ("GET", _OWNER_REPO + r"/issues", self._h_issues, False),
            ("GET", _OWNER_REPO + r"/issues/(?P<n>\d+)", self._h_issue, False),
            ("GET", _OWNER_REPO + r"/issues/(?P<n>\d+)/comments", self._h_comments, False),
            ("POST", _OWNER_REPO + r"/issues/(?P<n>\d+)/comments", self._h_post_comment, True),
        ]
        for method, pattern, handler, signed_in in routes:
            self.add_route(method, API + pattern, self._authenticated(handler, signed_in))

    def _authenticated(
        self, handler: Callable[[Request, _User | None], Response], signed_in: bool
    ) -> Callable[[Request], Response]:
        """Resolve the caller's token before ``handler``: unknown token 401, missing one 401 if needed."""

        def run(req: Request) -> Response:
            token = _request_token(req)
            with self._lock:
                viewer: _User | None = None
                if token is not None:
                    login = self._tokens.get(token)
                    if login is None:
                        return _error(401, "invalid username, password or token")
                    viewer = self._users[login.lower()]
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
            user = self._users.get(req.params["name"].lower())
            if user is None:
                return _not_found(f"user redirect does not exist [name: {req.params['name']}]")
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
            return self._paginate(req, [self._issue_json(repo, issue, viewer) for issue in selected])

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

    def _paginate(self, req: Request, items: list[Any]) -> Response:
        """One page of ``items`` with ``X-Total-Count`` and Forgejo's ``Link`` header."""
        page, limit = self._list_options(req)
        headers = _total_headers(len(items))
        links = self._links(req, len(items), limit, _int_arg(req, "page"))
        if links:
            headers["Link"] = ",".join(links)
            headers["Access-Control-Expose-Headers"] = "X-Total-Count, Link"
        return Response.json(items[(page - 1) * limit : page * limit], headers=headers)

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
        """The repository of the path, or None when it does not exist or the caller may not see it."""
        repo = self._repos.get(f"{req.params['owner']}/{req.params['repo']}".lower())
        if repo is None or (repo.private and viewer is None):
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
            "permissions": {"admin": bool(viewer and viewer.is_admin), "push": viewer is not None, "pull": True},
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
            "head": {
                "label": pull.head_ref,
                "ref": pull.head_ref,
                "sha": pull.head_sha,
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
        return user

    def _user(self, login: str) -> _User:
        user = self._users.get(login.lower())
        if user is None:
            raise ForgeDoubleError(f"no user {login!r}; add_user it first")
        return user

    def _mint_token(self, user: _User) -> str:
        token = secrets.token_hex(20)
        user.tokens.append(token)
        self._tokens[token] = user.login
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

    def _merge_message(self, repo: _Repo, issue: _Issue) -> str:
        """Forgejo's default merge-commit message for the merge style ``merge``."""
        pull = issue.pull
        assert pull is not None
        title = f"Merge pull request '{issue.title}' (#{issue.number}) from {pull.head_ref} into {pull.base_ref}"
        trailers = [f"Reviewed-on: {self.address}/{repo.full_name}/pulls/{issue.number}"]
        approvers: list[str] = []
        for review in pull.reviews:
            if review.state == "APPROVED" and review.official and not review.stale and not review.dismissed:
                if review.user not in approvers:
                    approvers.append(review.user)
        trailers += [f"Reviewed-by: {login} <{login}@noreply.localhost>" for login in approvers]
        return f"{title}\n\n" + "\n".join(trailers) + "\n"

    def _sync_heads(self, repo: _Repo) -> None:
        """Follow pushes to the head branches of open pull requests (made here or by tests).

        A moved head marks the pull request's reviews stale unless they are of the new head,
        as Forgejo's ``MarkReviewsAsStale`` / ``MarkReviewsAsNotStale`` do.
        """
        with repo.git_lock:
            with self._lock:
                open_pulls = [i for i in repo.issues.values() if i.pull is not None and i.state == "open"]
            if not open_pulls:
                return
            heads = _branch_heads(repo.git_dir)
            moved: list[tuple[int, str]] = []
            with self._lock:
                for issue in open_pulls:
                    pull = issue.pull
                    assert pull is not None
                    new = heads.get(pull.head_ref)
                    if new is None or new == pull.head_sha or issue.state != "open":
                        continue
                    pull.head_sha = new
                    for review in pull.reviews:
                        review.stale = review.commit_id != new
                    issue.updated = self._clock.now()
                    moved.append((issue.number, new))
            for number, sha in moved:
                _update_ref(repo.git_dir, f"refs/pull/{number}/head", sha, None)


# -- git plumbing ---------------------------------------------------------------------------


def _run_git(
    args: list[str], *, input: bytes | None = None, ok: tuple[int, ...] = (0,)
) -> subprocess.CompletedProcess[bytes]:
    """Run git with the caller's environment; raise ``ForgeDoubleError`` with its stderr on failure."""
    proc = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", *args],
        input=input,
        capture_output=True,
        check=False,
    )
    if proc.returncode not in ok:
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        raise ForgeDoubleError(f"git {' '.join(args)[:200]} failed: {stderr}")
    return proc


def _git(git_dir: Path, *args: str, input: bytes | None = None, ok: tuple[int, ...] = (0,)) -> str:
    return _run_git(["--git-dir", str(git_dir), *args], input=input, ok=ok).stdout.decode("utf-8")


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
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "REVIEW_STATES",
    "rfc3339",
    "parse_rfc3339",
]
