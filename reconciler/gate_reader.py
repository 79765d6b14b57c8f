"""The approval gate's view of the world: the ops repo at one head, and the forge.

Answers are cached for the life of the reader (one pass), so approving many
actions merged by the same pull request asks the forge once.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from reconciler.clients.errors import NotFoundError
from reconciler.facts import CommitInfo, PullRequest, Review
from reconciler.ports import ForgeAPI, OpsRepoAPI


class GateReaderAdapter:
    """Implements ``reconciler.gate.GateReader`` over an ops repo head and a forge client."""

    def __init__(self, ops: OpsRepoAPI, forge: ForgeAPI, repo: str, head: str, *, merger_approves: bool = False) -> None:
        self.merger_approves = merger_approves
        self._ops = ops
        self._forge = forge
        self._repo = repo
        self._head = head
        self._cache: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self._own: str | None = None

    def _cached(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = compute()
        with self._lock:
            self._cache[key] = value
        return value

    @property
    def own_login(self) -> str:
        if self._own is None:
            self._own = self._forge.own_login()
        return self._own

    def last_change(self, path: str) -> CommitInfo | None:
        batch = getattr(self._ops, "last_changes", None)
        directory = path.rsplit("/", 1)[0] if "/" in path else ""
        if batch is not None and directory:
            # one walk answers for every file of the folder (many actions merged together)
            changes = self._cached(("last-dir", directory), lambda: batch(self._head, directory))
            if path in changes:
                return changes[path]
        return self._cached(("last", path), lambda: self._ops.last_change(self._head, path))

    def history(self, path: str) -> list[CommitInfo]:
        batch = getattr(self._ops, "path_histories", None)
        directory = path.rsplit("/", 1)[0] if "/" in path else ""
        if batch is not None and directory:
            # one walk answers for every file of the folder; a file it does not list has no history
            histories = self._cached(("history-dir", directory), lambda: batch(self._head, directory))
            shas = histories.get(path, [])
            return self._cached(("history", path), lambda: self._ops.commits(shas) if shas else [])  # type: ignore[attr-defined]
        return self._cached(("history", path), lambda: self._ops.history(self._head, path))

    def after(self, sha: str, limit: int) -> list[str]:
        return self._cached(("after", sha, limit), lambda: self._ops.first_parents_after(self._head, sha, limit))

    def commit(self, sha: str) -> CommitInfo | None:
        def look() -> CommitInfo | None:
            try:
                return self._ops.commit(sha)
            except NotFoundError:
                return None

        return self._cached(("commit", sha), look)

    def is_ancestor(self, a: str, b: str) -> bool:
        return self._cached(("is-anc", a, b), lambda: self._ops.is_ancestor(a, b))

    def merge_base(self, a: str, b: str) -> str | None:
        def look() -> str | None:
            try:
                return self._ops.merge_base(a, b)
            except NotFoundError:
                return None

        return self._cached(("merge-base", a, b), look)

    def ensure_commit(self, sha: str, pull_number: int) -> bool:
        return self._cached(("ensure", sha), lambda: self._ops.ensure_commit(sha, pull_number))

    def timeline_types(self, number: int) -> list[str]:
        return self._cached(("timeline", number), lambda: self._forge.timeline_types(self._repo, number))

    def repo_created_at(self) -> str:
        return self._cached(("created",), lambda: self._forge.repo_created_at(self._repo))

    def content_at(self, sha: str, path: str) -> bytes | None:
        return self._cached(("content", sha, path), lambda: self._ops.read(sha, path))

    def is_on_primary(self, sha: str) -> bool:
        return self._cached(("anc", sha), lambda: self._ops.is_ancestor(sha, self._head))

    def pull(self, number: int) -> PullRequest | None:
        return self._cached(("pull", number), lambda: self._forge.pull(self._repo, number))

    def pull_for_commit(self, sha: str) -> PullRequest | None:
        return self._cached(("pullc", sha), lambda: self._forge.pull_for_commit(self._repo, sha))

    def reviews(self, number: int) -> list[Review]:
        return self._cached(("reviews", number), lambda: self._forge.reviews(self._repo, number))

    def is_admin(self, login: str, user_id: int = 0) -> bool:
        return self._cached(("admin", login, user_id), lambda: self._forge.is_admin(login, user_id, repo=self._repo))
