"""A small in-memory model of an ops repo and its forge, for the approval gate's tests.

Commits form a real DAG (parents, full trees), so ancestry, merge bases and first-parent
history behave as in git; pull requests land in every Forgejo merge style the way
``services/pull/merge*.go`` lands them (true merge commit, rebased copies, squash commit,
fast-forward, manual marking). It implements :class:`reconciler.gate.GateReader`.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field, replace

from reconciler.facts import CommitInfo, PullRequest, Review

Tree = dict[str, bytes]

STYLES = ("merge", "rebase", "rebase-merge", "squash", "fast-forward-only")


@dataclass
class World:
    own_login: str = "vault-bot"
    merger_approves: bool = True
    repo_admins: set[str] = field(default_factory=lambda: {"admin", "ann"})
    site_admins: set[str] = field(default_factory=set)
    user_ids: dict[str, int] = field(default_factory=dict)
    commits: dict[str, CommitInfo] = field(default_factory=dict)
    trees: dict[str, Tree] = field(default_factory=dict)
    main: list[str] = field(default_factory=list)
    """The primary branch's first-parent chain, oldest first."""
    pulls: dict[int, PullRequest] = field(default_factory=dict)
    pull_commits: dict[int, list[str]] = field(default_factory=dict)
    """Each pull request's own commits, oldest first (its head last)."""
    review_lists: dict[int, list[Review]] = field(default_factory=dict)
    timelines: dict[int, list[str]] = field(default_factory=dict)
    unfetchable: set[str] = field(default_factory=set)
    created_at: str = "2026-01-01T00:00:00Z"
    _counter: itertools.count = field(default_factory=itertools.count)

    # -- users -----------------------------------------------------------------------

    def uid(self, login: str) -> int:
        return self.user_ids.setdefault(login.casefold(), 1000 + len(self.user_ids))

    def rename(self, old: str, new: str) -> None:
        """``old`` renames to ``new``; the old name is free and someone else takes it."""
        self.user_ids[new.casefold()] = self.user_ids.pop(old.casefold())
        for group in (self.repo_admins, self.site_admins):
            if old in group:
                group.discard(old)
                group.add(new)
        self.uid(old)  # a new user registers the free name

    # -- commits -----------------------------------------------------------------------

    def _new(self, tree: Tree, parents: tuple[str, ...], message: str, author: str) -> str:
        sha = hashlib.sha1(f"commit-{next(self._counter)}".encode()).hexdigest()
        self.trees[sha] = dict(tree)
        self.commits[sha] = CommitInfo(sha=sha, message=message, parents=parents, author=author)
        return sha

    @property
    def head_sha(self) -> str:
        return self.main[-1]

    def tree(self, sha: str | None = None) -> Tree:
        return dict(self.trees[sha or self.head_sha]) if (sha or self.main) else {}

    def commit(self, files: dict[str, bytes | None], message: str = "direct change", author: str = "mallory",
               *, on_main: bool = True) -> str:
        """A direct commit on main (or, with ``on_main=False``, beside it)."""
        tree = self.tree() if self.main else {}
        _apply(tree, files)
        sha = self._new(tree, (self.head_sha,) if self.main else (), message, author)
        if on_main:
            self.main.append(sha)
        return sha

    def rewind(self, sha: str) -> None:
        """A force-push of main back to ``sha``."""
        self.main = self.main[: self.main.index(sha) + 1]

    # -- pull requests -------------------------------------------------------------------

    def open_pull(self, number: int, files: dict[str, bytes | None], *, author: str = "alice",
                  base_ref: str = "main", fork: str | None = None, title: str = "") -> str:
        fork = fork or self.head_sha
        tree = self.tree(fork)
        _apply(tree, files)
        head = self._new(tree, (fork,), title or f"Change {number}", author)
        self.pull_commits[number] = [head]
        self.pulls[number] = PullRequest(
            number=number, state="open", merged=False, author=author, merged_by=None, merge_commit_sha=None,
            base_ref=base_ref, head_ref=f"feature-{number}", head_sha=head, merge_base=fork, title=title or f"Change {number}",
        )
        self.timelines[number] = []
        return head

    def push(self, number: int, files: dict[str, bytes | None]) -> str:
        """A new commit on the pull request's branch (no stale marking: Forgejo's is asynchronous)."""
        pull = self.pulls[number]
        tree = self.tree(pull.head_sha)
        _apply(tree, files)
        head = self._new(tree, (pull.head_sha,), f"more for {number}", pull.author)
        self.pull_commits[number].append(head)
        self.pulls[number] = replace(pull, head_sha=head)
        return head

    def refork(self, number: int, fork: str) -> str:
        """Force-push the branch: the same files as its head, replayed on ``fork``."""
        pull = self.pulls[number]
        changes = _diff(self.trees[pull.merge_base], self.trees[pull.head_sha])
        tree = self.tree(fork)
        _apply(tree, changes)
        head = self._new(tree, (fork,), f"reforked {number}", pull.author)
        self.pull_commits[number] = [head]
        self.pulls[number] = replace(pull, head_sha=head, merge_base=fork)
        return head

    def land(self, number: int, style: str = "merge", *, merged_by: str | None = "bob", commit: str | None = None,
             on_main: bool = True, events: tuple[str, ...] = ("merge_pull",)) -> str:
        """Merge pull request ``number`` as Forgejo's merge style ``style`` does; the merge commit's sha."""
        pull = self.pulls[number]
        base = self.head_sha
        changes = _diff(self.trees[pull.merge_base], self.trees[pull.head_sha])
        merged_tree = self.tree(base)
        _apply(merged_tree, changes)
        message = f"Merge pull request '{pull.title}' (#{number}) from {pull.head_ref} into {pull.base_ref}"
        landed: list[str]
        if style == "merge":
            landed = [self._new(merged_tree, (base, pull.head_sha), message, merged_by or "")]
        elif style == "squash":
            landed = [self._new(merged_tree, (base,), f"{pull.title} (#{number})", pull.author)]
        elif style in ("rebase", "rebase-merge"):
            landed, parent, previous = [], base, pull.merge_base
            for own in self.pull_commits[number]:
                tree = self.tree(parent)
                _apply(tree, _diff(self.trees[previous], self.trees[own]))
                parent = self._new(tree, (parent,), self.commits[own].message, pull.author)
                landed.append(parent)
                previous = own
            if style == "rebase-merge":
                landed = [self._new(self.trees[parent], (base, parent), message, merged_by or "")]
        elif style == "fast-forward-only":
            if not self.is_ancestor(base, pull.head_sha):
                raise ValueError("not a fast-forward")
            chain: list[str] = []
            sha = pull.head_sha
            while sha != base:
                chain.append(sha)
                sha = self.commits[sha].parents[0]
            landed = chain[::-1]
        elif style == "manually-merged":
            assert commit is not None and commit in self.main
            landed = []
        else:
            raise ValueError(style)
        if on_main:
            self.main.extend(landed)
        merge = commit if style == "manually-merged" else landed[-1]
        self.pulls[number] = replace(
            pull, state="closed", merged=True, merged_by=merged_by, merge_commit_sha=merge,
            merged_by_id=self.uid(merged_by) if merged_by else 0, merged_at="2026-06-01T00:00:00Z",
        )
        self.timelines[number].extend(events if style != "manually-merged" else ())
        return merge

    def merge(self, number: int, files: dict[str, bytes | None], *, author: str = "alice", merged_by: str | None = "bob",
              base: str = "main", on_main: bool = True, style: str = "merge") -> str:
        """Open and land a pull request in one go."""
        self.open_pull(number, files, author=author, base_ref=base)
        return self.land(number, style, merged_by=merged_by, on_main=on_main)

    def review(self, number: int, user: str, state: str = "APPROVED", *, at: str | None = None,
               stale: bool = False, dismissed: bool = False, commit_id: str | None = None) -> Review:
        reviews = self.review_lists.setdefault(number, [])
        rid = sum(len(v) for v in self.review_lists.values()) + 1
        review = Review(
            id=rid, user=user, state=state, stale=stale, dismissed=dismissed,
            submitted_at=at or f"2026-03-31T10:{rid % 60:02d}:{rid // 60:02d}Z",
            commit_id=self.pulls[number].head_sha if commit_id is None else commit_id, user_id=self.uid(user),
        )
        reviews.append(review)
        return review

    # -- GateReader ------------------------------------------------------------------------

    def _changed(self, path: str) -> list[CommitInfo]:
        out = []
        for sha in self.main:
            info = self.commits[sha]
            before = self.trees[info.parents[0]].get(path) if info.parents else None
            if self.trees[sha].get(path) != before:
                out.append(info)
        return out[::-1]

    def last_change(self, path: str) -> CommitInfo | None:
        changed = self._changed(path)
        return changed[0] if changed else None

    def history(self, path: str) -> list[CommitInfo]:
        return self._changed(path)

    def after(self, sha: str, limit: int) -> list[str]:
        i = self.main.index(sha)
        return self.main[i + 1 : i + 1 + limit]

    def commit_info(self, sha: str) -> CommitInfo | None:
        return self.commits.get(sha)

    def content_at(self, sha: str, path: str) -> bytes | None:
        return self.trees.get(sha, {}).get(path)

    def is_on_primary(self, sha: str) -> bool:
        return bool(self.main) and self.is_ancestor(sha, self.head_sha)

    def is_ancestor(self, a: str, b: str) -> bool:
        if a not in self.commits or b not in self.commits:
            return False
        todo, seen = [b], set()
        while todo:
            sha = todo.pop()
            if sha == a:
                return True
            if sha not in seen:
                seen.add(sha)
                todo.extend(self.commits[sha].parents)
        return False

    def _ancestors(self, sha: str) -> set[str]:
        out, todo = set(), [sha]
        while todo:
            s = todo.pop()
            if s not in out:
                out.add(s)
                todo.extend(self.commits[s].parents)
        return out

    def merge_base(self, a: str, b: str) -> str | None:
        if a not in self.commits or b not in self.commits:
            return None
        common = self._ancestors(a) & self._ancestors(b)
        best = [c for c in common if not any(c != d and c in self._ancestors(d) for d in common)]
        return min(best) if best else None

    def ensure_commit(self, sha: str, pull_number: int) -> bool:
        return sha in self.commits and sha not in self.unfetchable

    def pull(self, number: int) -> PullRequest | None:
        return self.pulls.get(number)

    def pull_for_commit(self, sha: str) -> PullRequest | None:
        return next((p for p in self.pulls.values() if p.merged and p.merge_commit_sha == sha), None)

    def reviews(self, number: int) -> list[Review]:
        return list(self.review_lists.get(number, []))

    def timeline_types(self, number: int) -> list[str]:
        return list(self.timelines.get(number, []))

    def repo_created_at(self) -> str:
        return self.created_at

    def is_admin(self, login: str, user_id: int = 0) -> bool:
        if user_id and self.user_ids.get(login.casefold()) != user_id:
            return False
        return login in self.repo_admins or login in self.site_admins


# The gate asks ``commit(sha)``; ``World.commit`` makes commits, so the reader's verb is bound here.
class Reader:
    """``World`` seen through the :class:`reconciler.gate.GateReader` protocol."""

    def __init__(self, world: World) -> None:
        self._world = world

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._world, name)

    def commit(self, sha: str) -> CommitInfo | None:
        return self._world.commit_info(sha)


def _apply(tree: Tree, files: dict[str, bytes | None]) -> None:
    for path, content in files.items():
        if content is None:
            tree.pop(path, None)
        else:
            tree[path] = content


def _diff(old: Tree, new: Tree) -> dict[str, bytes | None]:
    changes: dict[str, bytes | None] = {p: c for p, c in new.items() if old.get(p) != c}
    changes.update({p: None for p in old if p not in new})
    return changes
