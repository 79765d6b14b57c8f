"""The approval gate: who may run what (``docs/approval.md``).

Pure logic over a :class:`GateReader`, so the rules are tested with plain values and
the loop supplies a reader backed by the local ops clone and the forge client.

The proof is the content, not the metadata around it. For a ``dispatch_mode = "pr"``
action at ``path`` whose bytes on the primary branch are ``content``:

1. ``L``, the commit that brought ``content``, is the newest commit on the primary
   branch's first-parent history that changed the file (``last_change``).
2. Candidate pull requests: the one the forge names as the merge commit of ``L`` or of one
   of the few first-parent commits after it (a rebase or fast-forward lands several commits
   and the forge names only the last), and the number in ``L``'s message. Messages and
   ``merge_commit_sha`` only say where to look; nothing below trusts them.
3. A candidate counts only if the forge says it is merged into the primary branch, its
   merge commit ``M`` is on the primary branch with ``content`` at ``path``, and ``L`` is one
   of the commits the pull request landed: ``L`` is ``M`` or an ancestor of it, ``L`` is not
   in the pull request's fork point ``F`` (the forge's ``merge_base``), the file at ``F`` is
   not ``content`` (the pull request's own diff changed it), a true merge commit brought
   nothing but itself (``L == M``, unless it is the pull request's own head, fast-forwarded),
   and its target branch was never changed (Forgejo then recomputes the merge base).
4. Approval by review: for each reviewer only the latest decisive review counts; it must be
   ``APPROVED``, not flagged ``dismissed`` or ``stale`` (flags only take an approval away),
   by an admin who is neither the author nor the reconciler's own user, and the file in the
   tree at its ``commit_id`` -- the head the admin saw -- must equal ``content`` byte for
   byte, and differ at that head's fork from the primary branch as it was before ``L`` (the
   admin's diff showed the change: a rebase onto a base without the file, or a re-targeted
   branch, cannot make an approval of an unrelated diff count). When ``L`` lies in that head's
   history it must also lie in the pull request's final head.
5. Approval by merger (when enabled): the admin in ``merged_by`` counts only for a true merge
   commit whose second parent is the pull request's final head with the same file, ``L == M``,
   no scheduled auto-merge or manual-merge marking in the timeline, merged after the
   repository was created (a migration copies ``merged_by``).

Admins are site admins or users the forge confirms have ``admin`` permission on the ops
repository, checked by user id so that a renamed or re-registered login gains nothing.

Reader errors (``TransientError`` and friends) propagate unchanged: the gate never turns
"could not ask" into "rejected". ``content`` and the reader must describe the same
snapshot of the primary branch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal, Protocol

from reconciler.actions import Action, dispatch_problem
from reconciler.facts import CommitInfo, PullRequest, Review


class GateRejected(Exception):
    """The action may not run; ``reason`` says why, in words for the action's author."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class GateReader(Protocol):
    """What the gate needs to know about the ops repo and the forge."""

    own_login: str
    """The reconciler's own forge user; its approvals never count."""

    merger_approves: bool
    """Whether an admin merger may stand in for a review (``RECONCILER_MERGER_APPROVES``)."""

    def last_change(self, path: str) -> CommitInfo | None:
        """Newest commit on the primary branch's first-parent history that changed ``path``."""
        ...

    def history(self, path: str) -> list[CommitInfo]:
        """All commits on the primary branch's first-parent history that changed ``path``, newest first."""
        ...

    def after(self, sha: str, limit: int) -> list[str]:
        """Up to ``limit`` first-parent commits of the primary branch after ``sha``, oldest first."""
        ...

    def commit(self, sha: str) -> CommitInfo | None:
        """The commit (with its parents); None when it is not in the local clone."""
        ...

    def content_at(self, sha: str, path: str) -> bytes | None:
        """``path`` at commit ``sha``; None if absent there or the commit is unknown."""
        ...

    def is_on_primary(self, sha: str) -> bool:
        """Whether ``sha`` is the primary branch head or one of its ancestors."""
        ...

    def is_ancestor(self, a: str, b: str) -> bool:
        """Whether ``a`` is ``b`` or one of its ancestors (False when either is unknown)."""
        ...

    def merge_base(self, a: str, b: str) -> str | None:
        """The best common ancestor of ``a`` and ``b``; None when they share none or either is unknown."""
        ...

    def ensure_commit(self, sha: str, pull_number: int) -> bool:
        """Make ``sha`` present locally (fetching the pull request's head ref); whether it is now."""
        ...

    def pull(self, number: int) -> PullRequest | None:
        """Pull request ``number`` as the forge shows it; None if it does not exist."""
        ...

    def pull_for_commit(self, sha: str) -> PullRequest | None:
        """The pull request whose *merge commit* is ``sha``; None for any other commit."""
        ...

    def reviews(self, number: int) -> list[Review]:
        """Every review on pull request ``number``."""
        ...

    def timeline_types(self, number: int) -> list[str]:
        """The ``type`` of every timeline event of pull request ``number``."""
        ...

    def repo_created_at(self) -> str:
        """When the ops repository was created on the forge (RFC 3339)."""
        ...

    def is_admin(self, login: str, user_id: int = 0) -> bool:
        """Whether ``login`` (the user with ``user_id`` when non-zero) is a site admin or a repo admin."""
        ...


@dataclass(frozen=True)
class Approval:
    """Why an action may run: the pull request that brought it and who approved it."""

    pull_number: int
    merge_commit: str
    approver: str
    """The admin whose review approved it, or who merged it (see ``via``)."""
    via: Literal["review", "merger"]
    author: str
    """Who opened the pull request."""
    reviewed_commit: str = ""
    """The head the approving admin saw (``review.commit_id``; the final head for a merger)."""


@dataclass(frozen=True)
class TrustedTiers:
    """The tiers file as far as it is trusted."""

    content: bytes | None
    """The newest approved version's bytes; None: none approved (every formula is ``high``)."""
    commit: str | None
    """The commit that brought ``content`` (or deleted the file); None if none."""
    ignored: list[CommitInfo] = field(default_factory=list)
    """Newer changes that did not pass the gate, newest first, for ``reconciler status``."""


DECISIVE = ("APPROVED", "REQUEST_CHANGES")
"""Review states that decide; ``COMMENT``, ``PENDING``, ``REQUEST_REVIEW`` never supersede."""

LANDING_WINDOW = 250
"""First-parent commits after the file's last change asked for a pull request (rebase, fast-forward);
the walk stops earlier at the first true merge commit, since a rebase or fast-forward run is linear."""

MERGER_DISQUALIFIERS = ("pull_scheduled_merge", "pull_cancel_scheduled_merge")
"""Timeline events after which ``merged_by`` says who scheduled a merge, not who saw what merged."""

TIMELINE_TRUNCATED = "timeline-truncated"
"""What a reader adds to ``timeline_types`` when it stopped before the end (it then proves nothing)."""

_MERGE_MESSAGE = re.compile(r"^Merge pull request '.*' \(#(\d{1,9})\) from ", re.DOTALL)
_SQUASH_MESSAGE = re.compile(r"\(#(\d{1,9})\)\s*$")


# --------------------------------------------------------------------------- public API


def check_approval(path: str, content: bytes, reader: GateReader, *, primary_branch: str) -> Approval:
    """Confirm that ``content`` (``path`` on the primary branch now) is content an admin approved.

    Returns the :class:`Approval`; raises :class:`GateRejected` with a specific reason.
    """
    commit = reader.last_change(path)
    if commit is None:
        raise GateRejected(f"no commit on {primary_branch} changed {path}; it is not on {primary_branch}")
    return _approve_version(path, content, commit, reader, primary_branch)


def trusted_tiers(path: str, reader: GateReader, *, primary_branch: str) -> TrustedTiers:
    """The newest version of the tiers file that itself passed the approval gate.

    Newer versions that did not pass are listed in ``ignored``. A deletion of the file is
    honoured without approval (no tiers means every formula is ``high``, the strictest).
    """
    ignored: list[CommitInfo] = []
    for commit in reader.history(path):
        content = reader.content_at(commit.sha, path)
        if content is None:
            return TrustedTiers(content=None, commit=commit.sha, ignored=ignored)
        try:
            _approve_version(path, content, commit, reader, primary_branch)
        except GateRejected:
            ignored.append(commit)
            continue
        return TrustedTiers(content=content, commit=commit.sha, ignored=ignored)
    return TrustedTiers(content=None, commit=None, ignored=ignored)


def check_direct(action: Action, tier: str) -> None:
    """Raise :class:`GateRejected` unless a ``direct`` action may skip approval at ``tier``."""
    problem = dispatch_problem(action, tier)
    if problem is not None:
        raise GateRejected(problem)


def authorize(
    action: Action, path: str, content: bytes, tier: str, reader: GateReader, *, primary_branch: str
) -> Approval | None:
    """The whole gate for one action: ``direct`` rules or an approved pull request.

    Returns the approval (``pr`` mode) or None (an allowed ``direct`` action); raises
    :class:`GateRejected` otherwise.
    """
    if action.dispatch_mode == "direct":
        check_direct(action, tier)
        return None
    return check_approval(path, content, reader, primary_branch=primary_branch)


# --------------------------------------------------------------------------- candidates


def _approve_version(path: str, content: bytes, commit: CommitInfo, reader: GateReader, primary_branch: str) -> Approval:
    """Approve ``content`` of ``path``, brought to the primary branch by ``commit``."""
    candidates = _candidates(commit, reader)
    if not candidates:
        raise GateRejected(
            f"no merged pull request into {primary_branch} brought this content "
            f"(last change: direct commit {_describe_commit(commit)})"
        )
    problems: list[str] = []
    for number, pull in candidates:
        if pull is None:
            problems.append(f"commit {commit.sha[:7]} names #{number} but the forge has no pull request #{number}")
            continue
        problem = _landing_problem(pull, path, content, commit, reader, primary_branch)
        if problem is not None:
            problems.append(problem)
            continue
        verdict = _judge_pull(pull, path, content, commit, reader)
        if isinstance(verdict, Approval):
            return verdict
        problems.append(verdict)
    raise GateRejected("; ".join(problems))


def _candidates(commit: CommitInfo, reader: GateReader) -> list[tuple[int, PullRequest | None]]:
    """Pull requests worth asking about, in order: named by the forge, then by the message."""
    found: dict[int, PullRequest | None] = {}
    pull = reader.pull_for_commit(commit.sha)
    if pull is not None:
        found[pull.number] = pull
    else:  # a rebase or fast-forward: the forge names only the last commit it landed
        for sha in reader.after(commit.sha, LANDING_WINDOW):
            pull = reader.pull_for_commit(sha)
            if pull is not None:
                found.setdefault(pull.number, pull)  # every one is checked in full; a marked-merged one hides none
            landed = reader.commit(sha)
            if landed is not None and len(landed.parents) > 1:
                break  # a rebase or fast-forward run is linear: a merge commit ends it
    named = _number_in_message(commit.message)
    if named is not None and named not in found:
        found[named] = reader.pull(named)
    return list(found.items())


def _landing_problem(
    pull: PullRequest, path: str, content: bytes, commit: CommitInfo, reader: GateReader, primary_branch: str
) -> str | None:
    """Why ``pull`` cannot be what brought ``content`` (changed in ``commit``) to the primary branch, or None."""
    number, short = pull.number, commit.sha[:7]
    if not pull.merged or not pull.merge_commit_sha:
        return f"pull request #{number} is {pull.state!r} and not merged"
    merge = pull.merge_commit_sha
    if _branch(pull.base_ref) != primary_branch:
        return f"pull request #{number} was merged into {pull.base_ref!r}, not {primary_branch!r}"
    if not reader.is_on_primary(merge):
        return f"pull request #{number}'s merge commit {merge[:7]} is not on {primary_branch}"
    at_merge = reader.content_at(merge, path)
    if at_merge is None:
        return f"pull request #{number} does not contain {path} at its merge commit {merge[:7]}"
    if at_merge != content:
        return f"{path} at pull request #{number}'s merge commit {merge[:7]} differs from {primary_branch} (changed after it merged)"
    if not reader.is_ancestor(commit.sha, merge):
        return f"this content came from commit {_describe_commit(commit)}, after pull request #{number} merged"
    landed = reader.commit(merge)
    if landed is not None and len(landed.parents) > 1 and commit.sha != merge and merge != pull.head_sha:
        return f"pull request #{number}'s merge commit {merge[:7]} did not change {path}; commit {_describe_commit(commit)} did"
    fork = pull.merge_base
    if not fork:
        return f"the forge gives no merge base for pull request #{number}: cannot tell what its diff showed"
    if not reader.ensure_commit(fork, number):
        return f"pull request #{number}'s merge base {fork[:7]} is not in the ops repository"
    if reader.is_ancestor(commit.sha, fork):
        return f"commit {_describe_commit(commit)} was on {primary_branch} before pull request #{number} forked; its diff never showed {path}"
    if reader.content_at(fork, path) == content:
        return f"pull request #{number} did not change {path} (the same content was at its merge base {fork[:7]})"
    events = reader.timeline_types(number)
    if "change_target_branch" in events:
        return f"pull request #{number}'s target branch was changed: what its reviewers were shown is unknown"
    if TIMELINE_TRUNCATED in events:
        return f"pull request #{number}'s timeline is too long to read, so what happened to it is unknown"
    return None


# --------------------------------------------------------------------------- approval


def _same_user(a: str | None, b: str | None) -> bool:
    """Forge logins compare case-insensitively."""
    if not a or not b:
        return False
    return a.casefold() == b.casefold()


def _review_order(review: Review) -> tuple[datetime, int]:
    """Sort key: ``submitted_at`` (unparseable or empty sorts first), then ``id``."""
    try:
        at = datetime.fromisoformat(review.submitted_at)
        if at.tzinfo is None:
            at = at.replace(tzinfo=timezone.utc)
    except ValueError:
        at = datetime.min.replace(tzinfo=timezone.utc)
    return (at, review.id)


def _reviewer_key(review: Review) -> str:
    """A reviewer is a user id when the forge gives one (logins can be renamed), else the login."""
    return f"#{review.user_id}" if review.user_id else review.user.casefold()


def latest_decisive(reviews: list[Review]) -> dict[str, Review]:
    """For each reviewer, their latest ``APPROVED``/``REQUEST_CHANGES`` review."""
    latest: dict[str, Review] = {}
    for review in sorted(reviews, key=_review_order):
        if review.state in DECISIVE and review.user:
            latest[_reviewer_key(review)] = review
    return latest


def _review_problem(review: Review, pull: PullRequest, path: str, content: bytes, commit: CommitInfo, reader: GateReader) -> str | None:
    """Why this reviewer's latest decisive review does not approve ``content``, or None."""
    who = review.user
    if review.state != "APPROVED":
        return f"{who}'s latest review requests changes"
    if review.dismissed:
        return f"{who}'s approval was dismissed"
    if review.stale:
        return f"{who}'s approval is stale"
    if _same_user(who, pull.author):
        return f"approval by the author ({who}) does not count"
    if _same_user(who, reader.own_login):
        return f"approval by the reconciler's own user ({who}) does not count"
    if not reader.is_admin(who, review.user_id):
        return f"{who}'s approval does not count: {who} is neither a site admin nor an admin of the ops repository"
    seen = review.commit_id
    if not seen:
        return f"{who}'s approval names no commit, so what {who} saw is unknown"
    if not reader.ensure_commit(seen, pull.number):
        return f"{who} approved commit {seen[:7]}, which the ops repository cannot fetch"
    at_review = reader.content_at(seen, path)
    if at_review != content:
        state = "had no such file" if at_review is None else "held other content"
        return f"{who} approved commit {seen[:7]}, where {path} {state}: the content on main was never approved"
    # what the admin's diff was shown against: seen's fork from the primary branch as it was before L
    seen_fork = reader.merge_base(seen, commit.parents[0]) if commit.parents else None
    if seen_fork is None or reader.content_at(seen_fork, path) == content:
        return f"{who} approved commit {seen[:7]}, whose diff did not change {path} (it already held this content at {str(seen_fork)[:7]})"
    if reader.is_ancestor(commit.sha, seen) and not (pull.head_sha and reader.is_ancestor(commit.sha, pull.head_sha)):
        return f"{who} approved commit {seen[:7]}, whose history holds commit {commit.sha[:7]} that pull request #{pull.number} did not bring"
    return None


def _merger_problem(pull: PullRequest, path: str, content: bytes, commit: CommitInfo, reader: GateReader) -> str | None:
    """Why the merger does not approve ``pull``, or None."""
    merger = pull.merged_by
    if not reader.merger_approves:
        return "approval by the merger is turned off (RECONCILER_MERGER_APPROVES)"
    if not merger:
        return "the forge does not say who merged it"
    if _same_user(merger, pull.author):
        return f"merged by the author ({merger}), which does not count"
    if _same_user(merger, reader.own_login):
        return f"merged by the reconciler's own user ({merger}), which does not count"
    if not reader.is_admin(merger, pull.merged_by_id):
        return f"merged by {merger}, who is neither a site admin nor an admin of the ops repository"
    merge = pull.merge_commit_sha or ""
    landed = reader.commit(merge)
    if landed is None or len(landed.parents) != 2 or commit.sha != merge:
        return f"merged by {merger}, but not with a merge commit that brought {path} (only a true merge vouches for its merger)"
    if not pull.head_sha or landed.parents[1] != pull.head_sha:
        return f"merged by {merger}, but the merge commit's second parent is not the pull request's head"
    if reader.content_at(pull.head_sha, path) != content:
        return f"merged by {merger}, but {path} at the pull request's head differs from the merge"
    events = set(reader.timeline_types(pull.number))
    scheduled = events.intersection(MERGER_DISQUALIFIERS)
    if scheduled:
        return f"merged by {merger} through a scheduled auto-merge, which merges whatever was pushed after"
    if "merge_pull" not in events:
        return f"the timeline shows no merge by {merger} (a manual-merge marking or migration names a merger who merged nothing)"
    created = reader.repo_created_at()
    if created and pull.merged_at and _instant(pull.merged_at) < _instant(created):
        return f"merged by {merger} before the repository was created here (a migration copies merged_by)"
    return None


def _judge_pull(pull: PullRequest, path: str, content: bytes, commit: CommitInfo, reader: GateReader) -> Approval | str:
    """An admin's latest decisive review of this content approves, else an admin merger; else the reasons."""
    reasons: list[str] = []
    latest = sorted(latest_decisive(reader.reviews(pull.number)).values(), key=_review_order, reverse=True)
    for review in latest:
        problem = _review_problem(review, pull, path, content, commit, reader)
        if problem is None:
            return _approval(pull, review.user, "review", review.commit_id)
        reasons.append(problem)
    if not latest:
        reasons.append("no reviewer approved it")
    problem = _merger_problem(pull, path, content, commit, reader)
    if problem is None and pull.merged_by:
        return _approval(pull, pull.merged_by, "merger", pull.head_sha)
    reasons.append(problem or "the forge does not say who merged it")
    return f"pull request #{pull.number} has no valid admin approval: " + "; ".join(reasons)


def _approval(pull: PullRequest, approver: str, via: Literal["review", "merger"], seen: str) -> Approval:
    return Approval(
        pull_number=pull.number,
        merge_commit=pull.merge_commit_sha or "",
        approver=approver,
        via=via,
        author=pull.author,
        reviewed_commit=seen,
    )


# --------------------------------------------------------------------------- helpers


def _number_in_message(message: str) -> int | None:
    """The pull request number a merge or squash message suggests; a hint, never a proof."""
    match = _MERGE_MESSAGE.match(message)
    if match is None:
        first_line = message.split("\n", 1)[0]
        match = _SQUASH_MESSAGE.search(first_line)
    return int(match.group(1)) if match else None


def _branch(ref: str) -> str:
    return ref.removeprefix("refs/heads/")


def _describe_commit(commit: CommitInfo) -> str:
    return commit.sha[:7] + (f" by {commit.author}" if commit.author else "")


def _instant(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.max.replace(tzinfo=timezone.utc)
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


__all__ = [
    "DECISIVE",
    "Approval",
    "GateReader",
    "GateRejected",
    "TrustedTiers",
    "authorize",
    "check_approval",
    "check_direct",
    "latest_decisive",
    "trusted_tiers",
]
