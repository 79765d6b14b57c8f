"""The approval gate: who may run what (``shared/docs/MISSION.md``, "Who may run what").

Pure logic over a :class:`GateReader`, so the rules are tested with plain values and
the loop supplies a reader backed by the local ops clone and the forge client.

The rule for a ``dispatch_mode = "pr"`` action, as implemented here:

1. The commit that brought the file's current content is the newest commit on the
   primary branch's first-parent history that changed it (``last_change``).
2. Candidate pull requests: the one the forge says has that commit as its merge commit
   (``pull_for_commit``), and the number in that commit's message
   (``Merge pull request '...' (#N) from ...`` or a squash ``... (#N)``). The message is
   typed text and only suggests whom to ask.
3. A candidate is confirmed only if the forge says it is merged, into the primary
   branch, its merge commit is on the primary branch, that merge commit is one of the
   first-parent commits that changed the file, and the file's content at the merge commit
   equals the content on main byte for byte. (The "changed the file" condition closes a
   hole left by content equality alone: a direct push naming a pull request that merged
   *later* without touching the file would otherwise inherit that pull request's approval.)
4. A confirmed pull request passes with a valid admin review, else with an admin merger;
   see :func:`_judge_pull`.

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

    def last_change(self, path: str) -> CommitInfo | None:
        """Newest commit on the primary branch's first-parent history that changed ``path``."""
        ...

    def history(self, path: str) -> list[CommitInfo]:
        """All commits on the primary branch's first-parent history that changed ``path``, newest first."""
        ...

    def content_at(self, sha: str, path: str) -> bytes | None:
        """``path`` at commit ``sha``; None if absent there or the commit is unknown."""
        ...

    def is_on_primary(self, sha: str) -> bool:
        """Whether ``sha`` is the primary branch head or one of its ancestors."""
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

    def is_admin(self, login: str) -> bool:
        """Whether ``login`` is in ``FORGE_ADMIN_USERS`` or a forge site admin."""
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

_MERGE_MESSAGE = re.compile(r"^Merge pull request '.*' \(#(\d{1,9})\) from ", re.DOTALL)
_SQUASH_MESSAGE = re.compile(r"\(#(\d{1,9})\)\s*$")


# --------------------------------------------------------------------------- public API


def check_approval(path: str, content: bytes, reader: GateReader, *, primary_branch: str) -> Approval:
    """Confirm that ``content`` (``path`` on the primary branch now) arrived through an approved PR.

    Returns the :class:`Approval`; raises :class:`GateRejected` with a specific reason.
    """
    commit = reader.last_change(path)
    if commit is None:
        raise GateRejected(f"no commit on {primary_branch} changed {path}; it is not on {primary_branch}")
    changed = {c.sha for c in reader.history(path)} | {commit.sha}
    return _approve_version(path, content, commit, changed, reader, primary_branch)


def trusted_tiers(path: str, reader: GateReader, *, primary_branch: str) -> TrustedTiers:
    """The newest version of the tiers file that itself passed the approval gate.

    Newer versions that did not pass are listed in ``ignored``. A deletion of the file is
    honoured without approval (no tiers means every formula is ``high``, the strictest).
    """
    history = reader.history(path)
    changed = {c.sha for c in history}
    ignored: list[CommitInfo] = []
    for commit in history:
        content = reader.content_at(commit.sha, path)
        if content is None:
            return TrustedTiers(content=None, commit=commit.sha, ignored=ignored)
        try:
            _approve_version(path, content, commit, changed, reader, primary_branch)
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


# --------------------------------------------------------------------------- confirmation


def _approve_version(
    path: str, content: bytes, commit: CommitInfo, changed: set[str], reader: GateReader, primary_branch: str
) -> Approval:
    """Approve ``content`` brought by ``commit``; ``changed`` = first-parent commits that changed ``path``."""
    candidates: list[tuple[PullRequest | None, int, bool]] = []  # (pull, number, from the message only)
    by_forge = reader.pull_for_commit(commit.sha)
    if by_forge is not None:
        candidates.append((by_forge, by_forge.number, False))
    named = _number_in_message(commit.message)
    if named is not None and (by_forge is None or by_forge.number != named):
        candidates.append((reader.pull(named), named, True))
    if not candidates:
        raise GateRejected(
            f"no merged pull request into {primary_branch} brought this content "
            f"(last change: direct commit {_describe_commit(commit)})"
        )

    problems: list[str] = []
    for pull, number, from_message in candidates:
        problem = _confirm(pull, number, from_message, path, content, commit, changed, reader, primary_branch)
        if problem is not None or pull is None:  # _confirm never accepts a missing pull request
            problems.append(problem or f"the forge has no pull request #{number}")
            continue
        verdict = _judge_pull(pull, reader)
        if isinstance(verdict, Approval):
            return verdict
        problems.append(verdict)
    raise GateRejected("; ".join(problems))


def _confirm(
    pull: PullRequest | None,
    number: int,
    from_message: bool,
    path: str,
    content: bytes,
    commit: CommitInfo,
    changed: set[str],
    reader: GateReader,
    primary_branch: str,
) -> str | None:
    """Why ``pull`` does not prove it brought ``content`` to the primary branch, or None."""
    short = commit.sha[:7]
    if pull is None or not pull.merged or not pull.merge_commit_sha:
        state = "" if pull is None else f" (pull request #{number} is {pull.state!r} and not merged)"
        if not from_message:
            return f"the forge names pull request #{number} for commit {short} but it is not merged{state}"
        return (
            f"merge message of commit {short} names #{number} but the forge has no merged pull "
            f"request #{number} with merge commit {short}{state}"
        )
    merge = pull.merge_commit_sha
    if _branch(pull.base_ref) != primary_branch:
        return f"pull request #{number} was merged into {pull.base_ref!r}, not {primary_branch!r}"
    if not reader.is_on_primary(merge):
        return f"pull request #{number}'s merge commit {merge[:7]} is not on {primary_branch}"
    at_merge = reader.content_at(merge, path)
    if at_merge is None:
        return f"pull request #{number} does not contain {path} at its merge commit {merge[:7]}"
    if at_merge != content:
        return (
            f"pull request #{number} names this file but its content at the merge commit "
            f"{merge[:7]} differs from {primary_branch} (changed after approval)"
        )
    if merge not in changed:
        return (
            f"pull request #{number}'s merge commit {merge[:7]} did not change {path}; "
            f"this content came from commit {_describe_commit(commit)}"
            + (" whose message only names it" if from_message else "")
        )
    return None


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


def latest_decisive(reviews: list[Review]) -> dict[str, Review]:
    """For each reviewer (by login, case-insensitively), their latest ``APPROVED``/``REQUEST_CHANGES``."""
    latest: dict[str, Review] = {}
    for review in sorted(reviews, key=_review_order):
        if review.state in DECISIVE and review.user:
            latest[review.user.casefold()] = review
    return latest


def _review_problem(review: Review, pull: PullRequest, reader: GateReader) -> str | None:
    """Why this reviewer's latest decisive review does not approve ``pull``, or None."""
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
    if not reader.is_admin(who):
        return f"{who}'s approval does not count: {who} is not an admin"
    return None


def _merger_problem(pull: PullRequest, reader: GateReader) -> str | None:
    """Why the merger does not approve ``pull``, or None."""
    merger = pull.merged_by
    if not merger:
        return "the forge does not say who merged it"
    if _same_user(merger, pull.author):
        return f"merged by the author ({merger}), which does not count"
    if _same_user(merger, reader.own_login):
        return f"merged by the reconciler's own user ({merger}), which does not count"
    if not reader.is_admin(merger):
        return f"merged by {merger}, who is not an admin"
    return None


def _judge_pull(pull: PullRequest, reader: GateReader) -> Approval | str:
    """An admin's latest decisive review approves, else an admin merger; else the reasons."""
    reasons: list[str] = []
    latest = sorted(latest_decisive(reader.reviews(pull.number)).values(), key=_review_order, reverse=True)
    for review in latest:
        problem = _review_problem(review, pull, reader)
        if problem is None:
            return _approval(pull, review.user, "review")
        reasons.append(problem)
    if not latest:
        reasons.append("no reviewer approved it")
    problem = _merger_problem(pull, reader)
    if problem is None and pull.merged_by:
        return _approval(pull, pull.merged_by, "merger")
    reasons.append(problem or "the forge does not say who merged it")
    return f"pull request #{pull.number} has no valid admin approval: " + "; ".join(reasons)


def _approval(pull: PullRequest, approver: str, via: Literal["review", "merger"]) -> Approval:
    return Approval(
        pull_number=pull.number,
        merge_commit=pull.merge_commit_sha or "",
        approver=approver,
        via=via,
        author=pull.author,
    )


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
