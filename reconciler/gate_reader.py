"""The approval gate's view of the world: the ops repo at one head, and the forge.

Answers are cached for the life of the reader (one pass), so approving many
actions merged by the same pull request asks the forge once.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from reconciler.facts import CommitInfo, PullRequest, Review
from reconciler.ports import ForgeAPI, OpsRepoAPI


class GateReaderAdapter:
    """Implements ``reconciler.gate.GateReader`` over an ops repo head and a forge client."""

    def __init__(self, ops: OpsRepoAPI, forge: ForgeAPI, repo: str, head: str) -> None:
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

    def is_admin(self, login: str) -> bool:
        return self._cached(("admin", login), lambda: self._forge.is_admin(login))
