"""The reconciler's Forgejo client: a few verbs over API v1, in the project's own words.

Everything the approval gate and the sidecar scanner learn from the forge comes through
here, as the plain values of :mod:`reconciler.facts`. What the module knows about Forgejo
(``shared/docs/CONTRACTS.md``) and relies on:

* The merger of a pull request is ``merged_by``; ``user`` is its author. There is no
  separate merge-user field, and this module never reads one.
* ``GET /repos/{o}/{r}/commits/{sha}/pull`` answers only for a *merge commit*; 404 becomes
  ``None``. A merge-commit message is typed text and is never parsed here.
* An admin is a site admin or a user with ``admin`` permission on the ops repository
  (``GET .../collaborators/{user}/permission``). ``is_admin`` and other users' permissions are
  shown truthfully only to a site admin (or a repo admin, or the user themself), so these
  look-ups use ``FORGE_ADMIN_TOKEN``; a token that cannot see them makes every answer "no",
  which fails closed and is logged once. ``FORGE_ADMIN_USERS`` grants nothing: a login can
  be registered or renamed to by anyone, so answers are checked against the user's id.
* Lists are paginated (``limit`` capped by the server, 50 by default), some with ``Link``,
  some with only ``X-Total-Count``: every page is fetched until the total is reached or a
  page comes back empty, never by trusting one page's length.
* ``labels=a,b`` on the issue list means *all of them*, but names the repository does not
  know are silently dropped (``labels=unknown`` returns every issue), so labels are
  checked again here.

Errors (see :mod:`reconciler.clients.errors`): a dropped connection, a timeout, 429 and 5xx
are :class:`TransientError`; 401/403 are :class:`PermanentError` naming the setting to fix;
404 is :class:`NotFoundError` unless a verb documents ``None`` - and before answering
``None`` the client makes sure the repository itself exists, so a mistyped repository
reads as a (transient) configuration problem, never as "no such pull request". Reads are
retried a few times with a short backoff (tenacity); the one write, ``comment``, is not,
because a reply lost after the comment was stored would otherwise post it twice. Tokens travel in the
``Authorization`` header only and never appear in a message.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from requests.auth import AuthBase
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from reconciler.clients.errors import NotFoundError, PermanentError, TransientError
from reconciler.facts import Issue, PullRequest, Review
from reconciler.settings import ForgeSettings

log = logging.getLogger(__name__)

SYSTEM = "forge"
PAGE_LIMIT = 50
"""``limit`` asked for on every list; Forgejo caps it at its ``MAX_RESPONSE_ITEMS`` (50)."""
MAX_PAGES = 200
"""Lists without a total (the timeline) are read to at most this many pages."""
TIMELINE_TRUNCATED = "timeline-truncated"
"""Added to ``timeline_types`` when the timeline was longer than ``MAX_PAGES`` (``reconciler.gate`` knows it)."""
MAX_ITEMS = 2_000_000
"""A guard against a server that never ends a list: counted lists (``X-Total-Count``) are read to
their end whatever their length (an issue tracker of 12,000 issues is 240 pages)."""


class Forge(Protocol):
    """What the reconciler asks of the forge."""

    def own_login(self) -> str: ...

    def pull(self, repo: str, number: int) -> PullRequest | None: ...

    def pull_for_commit(self, repo: str, sha: str) -> PullRequest | None: ...

    def reviews(self, repo: str, number: int) -> list[Review]: ...

    def is_admin(self, login: str, user_id: int = 0, *, repo: str | None = None) -> bool: ...

    def repo_permission(self, repo: str, login: str) -> str: ...

    def timeline_types(self, repo: str, number: int) -> list[str]: ...

    def repo_created_at(self, repo: str) -> str: ...

    def issues(
        self, repo: str, *, state: str = "open", labels: Iterable[str] = (), since: str | datetime | None = None
    ) -> list[Issue]: ...

    def issue(self, repo: str, number: int) -> Issue | None: ...

    def comment(self, repo: str, number: int, body: str) -> None: ...


class _TokenAuth(AuthBase):
    """``Authorization: token <T>``. Given as ``auth=``, so requests never swaps in ~/.netrc."""

    def __init__(self, token: str | Callable[[], str]) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self._token() if callable(self._token) else self._token
        request.headers["Authorization"] = f"token {token}"
        return request


class ForgeClient:
    """Forgejo API v1 over one ``requests.Session``."""

    def __init__(
        self,
        settings: ForgeSettings,
        *,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        admin_cache_ttl: float = 60.0,
        attempts: int = 3,
        backoff: float = 0.2,
        token_source: Callable[[], str] | None = None,
    ) -> None:
        """``clock``/``sleep`` drive the ``is_admin`` cache and the retry backoff (tests pass fakes)."""
        if not settings.url:
            raise PermanentError("FORGE_URL is not set: the forge client needs Forgejo's base URL", system=SYSTEM)
        if not settings.token and token_source is None:
            raise PermanentError("FORGE_TOKEN is not set: the forge client needs an API token", system=SYSTEM)
        base = settings.url.rstrip("/")
        if base.endswith("/api/v1"):
            base = base[: -len("/api/v1")]
        self._api = f"{base}/api/v1"
        self._shown = _without_credentials(base)
        self._token: str | Callable[[], str] = token_source or settings.token or ""
        self._admin_token = settings.admin_token or self._token
        separate = bool(settings.admin_token) and settings.admin_token != settings.token
        self._admin_var = "FORGE_ADMIN_TOKEN" if separate else "FORGE_TOKEN"
        self._ops_repo = settings.ops_repo
        self._timeout = settings.timeout
        self._session = session or requests.Session()
        self._clock = clock
        self._sleep = sleep
        self._admin_ttl = admin_cache_ttl
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._lock = threading.Lock()
        self._own_login: str | None = None
        self._admin_cache: dict[tuple[str, str], tuple[bool, int, float]] = {}
        self._admin_token_checked = False
        self._permission_refused_logged = False
        self._known_repos: set[str] = set()

    # -- verbs ------------------------------------------------------------------------------

    def own_login(self) -> str:
        """The login ``FORGE_TOKEN`` belongs to (``GET /user``), asked once."""
        if self._own_login is None:
            data = self._object(self._get("/user", what="the token's own user"), "the token's own user")
            login = data.get("login")
            if not isinstance(login, str) or not login:
                raise PermanentError(f"forge at {self._shown} sent a user without a login for GET /user", system=SYSTEM)
            self._own_login = login
        return self._own_login

    def pull(self, repo: str, number: int) -> PullRequest | None:
        """Pull request ``number`` of ``repo``; None when there is none (an issue number included)."""
        what = f"pull request {repo}#{number}"
        try:
            resp = self._get(f"{_repo_path(repo)}/pulls/{int(number)}", what=what)
        except NotFoundError:
            self._require_repo(repo)
            return None
        return _pull_from(self._object(resp, what), self._shown)

    def pull_for_commit(self, repo: str, sha: str) -> PullRequest | None:
        """The merged pull request whose merge commit is exactly ``sha``, or None.

        Forgejo answers only for merge commits; a commit of a pull request's own branch or a
        direct push is None, whatever its message says. A reply whose ``merge_commit_sha``
        is not ``sha`` proves nothing and is also None.
        """
        what = f"the pull request merged as {sha[:12]} in {repo}"
        try:
            resp = self._get(f"{_repo_path(repo)}/commits/{quote(sha, safe='')}/pull", what=what)
        except NotFoundError:
            self._require_repo(repo)
            return None
        pull = _pull_from(self._object(resp, what), self._shown)
        if not pull.merged or pull.merge_commit_sha != sha:
            log.warning(
                "forge named %s#%d for commit %s, but its merge commit is %s",
                repo,
                pull.number,
                sha,
                pull.merge_commit_sha,
            )
            return None
        return pull

    def reviews(self, repo: str, number: int) -> list[Review]:
        """Every review of pull request ``number``, oldest first (all pages).

        ``NotFoundError`` when the pull request does not exist.
        """
        rows = self._get_all(f"{_repo_path(repo)}/pulls/{int(number)}/reviews", what=f"reviews of {repo}#{number}")
        return [_review_from(row, self._shown) for row in rows]

    def is_admin(self, login: str, user_id: int = 0, *, repo: str | None = None) -> bool:
        """Whether ``login`` may approve: a site admin, or an ``admin`` of ``repo`` (default: the ops repo).

        ``FORGE_ADMIN_USERS`` grants nothing by itself: a listed name counts only when the forge
        confirms it (``reconciler doctor`` lists those that do not). With ``user_id``, the login
        must still belong to that user: a renamed admin's old name, registered by someone
        else, is not an admin. Answers are remembered for a short while, with the user's id.
        """
        repo = repo or self._ops_repo
        key = (login.lower(), repo or "")
        now = self._clock()
        with self._lock:
            cached = self._admin_cache.get(key)
        if cached is None or cached[2] <= now:
            answer, found_id = self._admin_answer(login, repo)
            with self._lock:
                self._admin_cache[key] = (answer, found_id, now + self._admin_ttl)
        else:
            answer, found_id = cached[0], cached[1]
        if user_id and found_id != user_id:
            return False
        return answer

    def _admin_answer(self, login: str, repo: str | None) -> tuple[bool, int]:
        """(site admin or repo admin, the user's id); (False, 0) for an unknown user."""
        self._check_admin_token()
        what = f"user {login}"
        try:
            data = self._object(self._get(f"/users/{quote(login, safe='')}", what=what, admin=True), what)
        except NotFoundError:
            return False, 0
        if str(data.get("login", "")).lower() != login.lower():
            return False, 0
        found_id = data.get("id") if isinstance(data.get("id"), int) else 0
        if data.get("is_admin") is True:
            return True, found_id
        if repo:
            return self.repo_permission(repo, login) == "admin", found_id
        return False, found_id

    def repo_permission(self, repo: str, login: str) -> str:
        """``admin``, ``write``, ``read`` or ``none``: what ``login`` may do in ``repo``.

        Forgejo shows another user's permission only to a site admin or an admin of the
        repository, so this asks with the admin token. An unknown user is ``none``.
        """
        what = f"{login}'s permission on {repo}"
        try:
            data = self._object(
                self._get(f"{_repo_path(repo)}/collaborators/{quote(login, safe='')}/permission", what=what, admin=True), what
            )
        except NotFoundError:
            self._require_repo(repo)
            return "none"
        except PermanentError as exc:
            if "403" not in str(exc):
                raise
            # Forgejo: "Only admins can query all permissions, repo admins can query all repo permissions,
            # collaborators can query only their own". Fails closed: nobody is a repo admin, said once.
            if not self._permission_refused_logged:
                self._permission_refused_logged = True
                log.warning(
                    "%s may not read other users' permissions on %s (%s): only site admins count as admins; "
                    "give %s a site admin's or a repo admin's token",
                    self._admin_var, repo, exc, self._admin_var,
                )
            return "none"
        permission = str(data.get("permission") or "none").lower()
        if permission == "owner":
            return "admin"
        return permission if permission in ("admin", "write", "read") else "none"

    def timeline_types(self, repo: str, number: int) -> list[str]:
        """The ``type`` of every event on issue or pull request ``number`` (all pages)."""
        path, what = f"{_repo_path(repo)}/issues/{int(number)}/timeline", f"timeline of {repo}#{number}"
        types: list[str] = []
        # Forgejo's timeline gives X-Total-Count = the page's own length, no Link, and null for an
        # empty page (routers/api/v1/repo/issue_comment.go ListIssueCommentsAndTimeline): read until short.
        for page in range(1, MAX_PAGES + 1):
            resp = self._get(path, what=f"{what} (page {page})", params={"page": page, "limit": PAGE_LIMIT})
            data = self._json(resp, what)
            rows = [] if data is None else self._list(resp, what)
            types.extend(str(row.get("type") or "") for row in rows)
            if len(rows) < PAGE_LIMIT:
                return types
        # Anyone who may comment can lengthen a timeline: past the cap the answer is marked as cut short
        # (the gate then proves nothing with it) instead of failing every pass.
        log.warning("%s has more than %d pages; read the first %d only", what, MAX_PAGES, MAX_PAGES)
        return types + [TIMELINE_TRUNCATED]

    def repo_created_at(self, repo: str) -> str:
        """When ``repo`` was created on this forge (RFC 3339); a migrated one: when it was migrated."""
        what = f"repository {repo}"
        data = self._object(self._get(_repo_path(repo), what=what), what)
        return str(data.get("created_at") or "")

    def issues(
        self,
        repo: str,
        *,
        state: str = "open",
        labels: Iterable[str] = (),
        since: str | datetime | None = None,
    ) -> list[Issue]:
        """Issues (not pull requests) of ``repo`` in ``state`` carrying *all* ``labels``.

        ``since`` (RFC 3339 or an aware datetime) keeps those updated at or after it. Labels
        are checked here too: the forge ignores label names it does not know.
        """
        if state not in ("open", "closed", "all"):
            raise ValueError(f"state must be 'open', 'closed' or 'all', got {state!r}")
        wanted = tuple(dict.fromkeys(labels))
        params: dict[str, str] = {"type": "issues", "state": state}
        if wanted:
            params["labels"] = ",".join(wanted)
        if since is not None:
            params["since"] = _rfc3339(since)
        rows = self._get_all(f"{_repo_path(repo)}/issues", what=f"issues of {repo}", params=params)
        found: dict[int, Issue] = {}
        for row in rows:
            if row.get("pull_request"):
                continue
            issue = _issue_from(row, self._shown)
            if all(name in issue.labels for name in wanted):
                found[issue.number] = issue
        return list(found.values())

    def issue(self, repo: str, number: int) -> Issue | None:
        """Issue ``number`` of ``repo``; None when there is none or it is a pull request."""
        what = f"issue {repo}#{number}"
        try:
            resp = self._get(f"{_repo_path(repo)}/issues/{int(number)}", what=what)
        except NotFoundError:
            self._require_repo(repo)
            return None
        data = self._object(resp, what)
        if data.get("pull_request"):
            return None
        return _issue_from(data, self._shown)

    def comment(self, repo: str, number: int, body: str, *, unless_marked: str | None = None) -> None:
        """Post ``body`` as a comment on issue ``number`` (not retried: a retry could post twice).

        With ``unless_marked``, nothing is posted when a comment already contains that
        marker, so a caller that lost a reply can safely call again.
        """
        path = f"{_repo_path(repo)}/issues/{int(number)}/comments"
        if unless_marked:
            existing = self._list(self._get(path, what=f"comments of {repo}#{number}"), f"comments of {repo}#{number}")
            if any(unless_marked in str(row.get("body", "")) for row in existing):
                return
        self._request("POST", path, what=f"a comment on {repo}#{number}", json={"body": body})

    # -- HTTP -------------------------------------------------------------------------------

    def _require_repo(self, repo: str) -> None:
        """After a 404, make sure it was the object that is missing, not the whole repository.

        A mistyped ``FORGE_OPS_REPO`` (or a token that cannot see a private repository) must
        not read as "no such pull request", which the gate would take as a final rejection:
        it is a transient error that names the settings to check. Asked once per repository.
        """
        if repo in self._known_repos:
            return
        try:
            self._get(_repo_path(repo), what=f"repository {repo}")
        except NotFoundError as exc:
            raise TransientError(
                f"forge at {self._shown} shows no repository {repo} to FORGE_TOKEN: "
                "check FORGE_OPS_REPO / FORGE_REPO and the token's access",
                system=SYSTEM,
            ) from exc
        self._known_repos.add(repo)

    def _check_admin_token(self) -> None:
        """Warn once when the admin token cannot see ``is_admin`` (it is not a site admin's)."""
        if self._admin_token_checked:
            return
        data = self._object(self._get("/user", what="the admin token's own user", admin=True), "the admin token's user")
        self._admin_token_checked = True
        if data.get("is_admin") is not True:
            log.warning(
                "%s belongs to %s, who is not a site admin of %s: the forge hides is_admin from it, "
                "so only admins of the ops repository (collaborator permission) count as admins",
                self._admin_var,
                data.get("login", "?"),
                self._shown,
            )

    def _get(
        self, path: str, *, what: str, params: dict[str, Any] | None = None, admin: bool = False
    ) -> requests.Response:
        """GET with a few retries on transient failures."""
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff, max=max(self._backoff * 8, 0.0)),
            retry=retry_if_exception_type(TransientError),
            sleep=self._sleep,
            reraise=True,
        )
        response: requests.Response | None = None
        for attempt in retrying:
            with attempt:
                response = self._request("GET", path, what=what, params=params, admin=admin)
        assert response is not None
        return response

    def _get_all(self, path: str, *, what: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every item of a paginated list.

        Stops at an empty page or once ``X-Total-Count`` items arrived; without that header, when
        no ``Link: rel="next"`` comes and the page was short. The server may cap ``limit``
        below what was asked, so a short page alone proves nothing when a total is given.
        """
        items: list[dict[str, Any]] = []
        page = 0
        while len(items) < MAX_ITEMS:
            page += 1
            query = {**(params or {}), "page": page, "limit": PAGE_LIMIT}
            resp = self._get(path, what=f"{what} (page {page})", params=query)
            batch = self._list(resp, what)
            items.extend(batch)
            total = _int_header(resp, "X-Total-Count")
            if not batch:
                return items
            if total is not None:
                if len(items) >= total:
                    return items
            elif "next" not in resp.links and len(batch) < PAGE_LIMIT:
                return items
            elif page >= MAX_PAGES:
                break
        raise PermanentError(f"forge at {self._shown} returned more than {len(items)} items ({page} pages) of {what} without ending the list", system=SYSTEM)

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: dict[str, Any] | None = None,
        json: Any = None,
        admin: bool = False,
    ) -> requests.Response:
        """One HTTP call, its failures translated into the project's errors."""
        token, variable = (self._admin_token, self._admin_var) if admin else (self._token, "FORGE_TOKEN")
        try:
            resp = self._session.request(
                method, self._api + path, params=params, json=json, auth=_TokenAuth(token), timeout=self._timeout
            )
        except requests.Timeout as exc:
            raise TransientError(
                f"forge at {self._shown} did not answer {what} within {self._timeout:g} s", system=SYSTEM
            ) from exc
        except requests.ConnectionError as exc:
            raise TransientError(
                f"cannot reach the forge at {self._shown} for {what}: connection failed", system=SYSTEM
            ) from exc
        except requests.RequestException as exc:
            raise TransientError(
                f"request to the forge at {self._shown} for {what} failed: {type(exc).__name__}", system=SYSTEM
            ) from exc
        self._raise_for_status(resp, what, variable)
        return resp

    def _raise_for_status(self, resp: requests.Response, what: str, variable: str) -> None:
        status = resp.status_code
        if status < 400:
            return
        message = self._scrub(_server_message(resp))
        if status == 401:
            raise PermanentError(f"forge token rejected by {self._shown}: check {variable}", system=SYSTEM)
        if status == 403:
            if "scope" in message:
                hint = f"give {variable} the scope(s) named (Forgejo: Settings > Applications > access tokens)"
            else:
                hint = f"check {variable} and its user's permissions"
            raise PermanentError(
                f"forge token rejected by {self._shown} for {what} (403 {message}): {hint}",
                system=SYSTEM,
            )
        if status == 404:
            raise NotFoundError(f"forge at {self._shown} has no {what} (404)", system=SYSTEM)
        if status == 429 or status >= 500:
            raise TransientError(
                f"forge at {self._shown} answered {status} to {what}: {message}",
                system=SYSTEM,
                delay=_retry_after(resp),
            )
        raise PermanentError(f"forge at {self._shown} refused {what} ({status}: {message})", system=SYSTEM)

    def _scrub(self, text: str) -> str:
        """``text`` with any token this client holds blanked out."""
        for token in {self._token, self._admin_token}:
            if token:
                text = text.replace(token, "***")
        return text

    def _json(self, resp: requests.Response, what: str) -> Any:
        try:
            return resp.json()
        except ValueError as exc:
            raise TransientError(
                f"forge at {self._shown} answered {what} with something that is not JSON (a proxy page?)", system=SYSTEM
            ) from exc

    def _object(self, resp: requests.Response, what: str) -> dict[str, Any]:
        data = self._json(resp, what)
        if not isinstance(data, dict):
            raise PermanentError(
                f"forge at {self._shown} sent {type(data).__name__} for {what}, expected an object", system=SYSTEM
            )
        return data

    def _list(self, resp: requests.Response, what: str) -> list[dict[str, Any]]:
        data = self._json(resp, what)
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise PermanentError(
                f"forge at {self._shown} sent {type(data).__name__} for {what}, expected a list", system=SYSTEM
            )
        return data


# -- reply parsing ----------------------------------------------------------------------------


def _login(user: Any) -> str | None:
    if isinstance(user, dict) and isinstance(user.get("login"), str) and user["login"]:
        return str(user["login"])
    return None


def _user_id(user: Any) -> int:
    if isinstance(user, dict) and isinstance(user.get("id"), int) and not isinstance(user.get("id"), bool):
        return int(user["id"])
    return 0


def _pull_from(data: dict[str, Any], shown: str) -> PullRequest:
    """A :class:`PullRequest` from ``GET .../pulls/{n}``: author ``user``, merger ``merged_by``."""
    try:
        merged = data.get("merged") is True
        base = data.get("base") or {}
        head = data.get("head") or {}
        return PullRequest(
            number=int(data["number"]),
            state=str(data["state"]),
            merged=merged,
            author=_login(data.get("user")) or "",
            merged_by=_login(data.get("merged_by")) if merged else None,
            merge_commit_sha=(data.get("merge_commit_sha") or None) if merged else None,
            base_ref=str(base.get("ref") or ""),
            head_ref=str(head.get("ref") or ""),
            head_sha=str(head.get("sha") or ""),
            merged_at=data.get("merged_at") or None,
            title=str(data.get("title") or ""),
            merge_base=str(data.get("merge_base") or ""),
            merged_by_id=_user_id(data.get("merged_by")) if merged else 0,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PermanentError(f"forge at {shown} sent a pull request without {exc}", system=SYSTEM) from exc


def _review_from(data: dict[str, Any], shown: str) -> Review:
    try:
        return Review(
            id=int(data["id"]),
            user=_login(data.get("user")) or "",
            state=str(data["state"]).upper(),
            stale=data.get("stale") is True,
            dismissed=data.get("dismissed") is True,
            official=data.get("official") is True,
            commit_id=str(data.get("commit_id") or ""),
            submitted_at=str(data.get("submitted_at") or ""),
            user_id=_user_id(data.get("user")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentError(f"forge at {shown} sent a review without {exc}", system=SYSTEM) from exc


def _issue_from(data: dict[str, Any], shown: str) -> Issue:
    try:
        return Issue(
            number=int(data["number"]),
            title=str(data.get("title") or ""),
            body=str(data.get("body") or ""),
            state=str(data["state"]),
            labels=tuple(str(label["name"]) for label in data.get("labels") or ()),
            updated_at=str(data.get("updated_at") or ""),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentError(f"forge at {shown} sent an issue without {exc}", system=SYSTEM) from exc


# -- small helpers ----------------------------------------------------------------------------


def _repo_path(repo: str) -> str:
    owner, sep, name = repo.partition("/")
    if not sep or not owner or not name or "/" in name:
        raise ValueError(f"repository must be 'owner/name', got {repo!r}")
    return f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"


def _rfc3339(value: str | datetime) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        raise ValueError("since must be a timezone-aware datetime (or an RFC 3339 string)")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _without_credentials(url: str) -> str:
    """``url`` without any ``user:password@`` part, fit for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _server_message(resp: requests.Response) -> str:
    """Forgejo's ``{"message": ...}``, else the start of the body."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:200].strip() or resp.reason or ""
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])[:300]
    return str(data)[:200]


def _int_header(resp: requests.Response, name: str) -> int | None:
    try:
        return int(resp.headers[name])
    except (KeyError, ValueError):
        return None


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


__all__ = ["Forge", "ForgeClient", "PAGE_LIMIT"]
