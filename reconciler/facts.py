"""Plain value types for what the outside world told us.

Clients build these from API replies and git output; the pure decision code
(``reconciler.gate``, ``reconciler.decide``) reads them. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CommitInfo:
    """One commit of the ops repo."""

    sha: str
    message: str
    parents: tuple[str, ...] = ()
    author: str = ""
    committed_at: str = ""
    """RFC 3339 UTC."""


@dataclass(frozen=True)
class PullRequest:
    """A Forgejo pull request, as ``GET /repos/{o}/{r}/pulls/{n}`` shows it."""

    number: int
    state: str
    merged: bool
    author: str
    """``user.login``: who opened it. Never the merger."""
    merged_by: str | None
    """``merged_by.login``: who merged it (Forgejo has no separate merge-user field)."""
    merge_commit_sha: str | None
    base_ref: str
    head_ref: str = ""
    head_sha: str = ""
    merged_at: str | None = None
    title: str = ""
    merge_base: str = ""
    """The forge's fork point of the pull request (the base its diff is shown against)."""
    merged_by_id: int = 0
    """``merged_by.id``: logins can be renamed and re-registered, ids cannot."""


@dataclass(frozen=True)
class Review:
    """One review on a pull request."""

    id: int
    user: str
    state: str
    """``APPROVED``, ``REQUEST_CHANGES``, ``COMMENT``, ``PENDING`` or ``REQUEST_REVIEW``."""
    stale: bool = False
    dismissed: bool = False
    official: bool = False
    commit_id: str = ""
    """The head the reviewer saw: the content an approval vouches for."""
    submitted_at: str = ""
    user_id: int = 0
    """``user.id``: logins can be renamed and re-registered, ids cannot."""


@dataclass(frozen=True)
class Issue:
    """An issue on the project tracker."""

    number: int
    title: str
    body: str
    state: str
    labels: tuple[str, ...] = field(default_factory=tuple)
    updated_at: str = ""
