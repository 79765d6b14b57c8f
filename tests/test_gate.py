"""Tests for reconciler.gate: who may run what, with a fake reader made of plain dicts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.actions import Action, effective_tier, parse_action, parse_tiers
from reconciler.facts import CommitInfo, PullRequest, Review
from reconciler.gate import (
    Approval,
    GateReader,
    GateRejected,
    authorize,
    check_approval,
    check_direct,
    latest_decisive,
    trusted_tiers,
)
from reconciler.settings import ActionSettings

PATH = "vault/actions/release-v120.toml"
POLICY = "vault/policy.toml"
V1 = b'id = "release-v120"\nformula = "release"\ncontext = "Release v1.2.0"\nsecrets = []\n'
V2 = V1.replace(b"v1.2.0", b"v1.2.1")


@dataclass
class FakeForge:
    """An ops repo's primary branch (first-parent commits with full trees) and a forge, as dicts."""

    own_login: str = "vault-bot"
    admin_users: set[str] = field(default_factory=lambda: {"vault-bot", "admin", "ann"})
    site_admins: set[str] = field(default_factory=set)
    main: list[CommitInfo] = field(default_factory=list)
    """First-parent history of the primary branch, oldest first."""
    trees: dict[str, dict[str, bytes]] = field(default_factory=dict)
    pulls: dict[int, PullRequest] = field(default_factory=dict)
    review_lists: dict[int, list[Review]] = field(default_factory=dict)
    _next_review: int = 1

    # -- building the world -------------------------------------------------

    def _sha(self) -> str:
        return hashlib.sha1(f"commit-{len(self.trees)}".encode()).hexdigest()

    def _tree(self) -> dict[str, bytes]:
        return dict(self.trees[self.main[-1].sha]) if self.main else {}

    def commit(self, files: dict[str, bytes | None], message: str = "direct change", author: str = "mallory",
               on_main: bool = True, base_tree: dict[str, bytes] | None = None) -> str:
        """Add a commit changing ``files`` (None deletes); on main unless ``on_main`` is False."""
        tree = dict(base_tree) if base_tree is not None else self._tree()
        for path, content in files.items():
            if content is None:
                tree.pop(path, None)
            else:
                tree[path] = content
        sha = self._sha()
        parents = (self.main[-1].sha,) if self.main else ()
        self.trees[sha] = tree
        if on_main:
            self.main.append(CommitInfo(sha=sha, message=message, parents=parents, author=author))
        return sha

    def merge(self, number: int, files: dict[str, bytes | None], *, author: str = "alice",
              merged_by: str | None = "bob", base: str = "main", on_main: bool = True) -> str:
        """Merge pull request ``number`` through a merge commit (Forgejo's default style)."""
        message = f"Merge pull request 'Change {number}' (#{number}) from feature-{number} into {base}"
        sha = self.commit(files, message, author=merged_by or "", on_main=on_main)
        self.pulls[number] = PullRequest(number=number, state="closed", merged=True, author=author,
                                         merged_by=merged_by, merge_commit_sha=sha, base_ref=base)
        return sha

    def review(self, number: int, user: str, state: str = "APPROVED", *, at: str | None = None,
               stale: bool = False, dismissed: bool = False) -> None:
        rid = self._next_review
        self._next_review += 1
        stamp = at or f"2026-03-31T10:{rid:02d}:00Z"
        self.review_lists.setdefault(number, []).append(
            Review(id=rid, user=user, state=state, stale=stale, dismissed=dismissed, submitted_at=stamp))

    # -- GateReader ----------------------------------------------------------

    def _changed(self, path: str) -> list[CommitInfo]:
        out = []
        for i, c in enumerate(self.main):
            before = self.trees[self.main[i - 1].sha].get(path) if i else None
            if self.trees[c.sha].get(path) != before:
                out.append(c)
        return out[::-1]

    def last_change(self, path: str) -> CommitInfo | None:
        changed = self._changed(path)
        return changed[0] if changed else None

    def history(self, path: str) -> list[CommitInfo]:
        return self._changed(path)

    def content_at(self, sha: str, path: str) -> bytes | None:
        return self.trees.get(sha, {}).get(path)

    def is_on_primary(self, sha: str) -> bool:
        return any(c.sha == sha for c in self.main)

    def pull(self, number: int) -> PullRequest | None:
        return self.pulls.get(number)

    def pull_for_commit(self, sha: str) -> PullRequest | None:
        return next((p for p in self.pulls.values() if p.merged and p.merge_commit_sha == sha), None)

    def reviews(self, number: int) -> list[Review]:
        return list(self.review_lists.get(number, []))

    def is_admin(self, login: str) -> bool:
        return login in self.admin_users or login in self.site_admins

    # -- helpers -------------------------------------------------------------

    def head(self, path: str) -> bytes:
        content = self.trees[self.main[-1].sha].get(path)
        assert content is not None
        return content


def approve(forge: FakeForge) -> Approval:
    return check_approval(PATH, forge.head(PATH), forge, primary_branch="main")


def rejected(forge: FakeForge, path: str = PATH) -> str:
    with pytest.raises(GateRejected) as info:
        check_approval(path, forge.head(path), forge, primary_branch="main")
    return info.value.reason


@pytest.fixture
def forge() -> FakeForge:
    f = FakeForge()
    f.commit({"README.md": b"ops\n"}, "initial", author="admin")
    return f


def test_fake_forge_is_a_gate_reader(forge: FakeForge) -> None:
    reader: GateReader = forge
    assert reader.own_login == "vault-bot"


# --------------------------------------------------------------------------- accepted


def test_admin_review_approves(forge: FakeForge) -> None:
    merge = forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "ann")
    assert approve(forge) == Approval(pull_number=7, merge_commit=merge, approver="ann", via="review", author="alice")


def test_admin_via_forge_is_admin_accepted(forge: FakeForge) -> None:
    forge.site_admins.add("root")
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "root")
    assert approve(forge).approver == "root"


def test_merged_by_admin_fallback_accepted(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin")
    approval = approve(forge)
    assert (approval.via, approval.approver) == ("merger", "admin")


def test_merged_by_site_admin_fallback_accepted(forge: FakeForge) -> None:
    forge.site_admins.add("root")
    forge.merge(7, {PATH: V1}, merged_by="root")
    assert approve(forge).via == "merger"


def test_comment_after_approved_does_not_supersede(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "ann", "APPROVED")
    forge.review(7, "ann", "COMMENT")
    forge.review(7, "ann", "PENDING")
    assert approve(forge).approver == "ann"


def test_admin_approval_wins_over_non_admin_and_author(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "dave")
    forge.review(7, "alice")
    forge.review(7, "ann")
    assert approve(forge).approver == "ann"


def test_approval_after_request_changes_counts(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "ann", "REQUEST_CHANGES")
    forge.review(7, "ann", "APPROVED")
    assert approve(forge).via == "review"


def test_squash_merge_found_through_the_forge(forge: FakeForge) -> None:
    sha = forge.commit({PATH: V1}, "Release v1.2.0 (squashed, message edited)", author="admin")
    forge.pulls[3] = PullRequest(number=3, state="closed", merged=True, author="alice", merged_by="admin",
                                 merge_commit_sha=sha, base_ref="main")
    assert approve(forge).pull_number == 3


def test_base_ref_with_refs_heads_prefix(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin", base="refs/heads/main")
    assert approve(forge).pull_number == 7


def test_unrelated_later_commits_do_not_matter(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin")
    forge.commit({"other.txt": b"x"})
    assert approve(forge).pull_number == 7


def test_revert_to_approved_content_named_by_message_is_accepted(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin")
    forge.commit({PATH: V2})
    forge.commit({PATH: V1}, "Revert to the content of pull request (#7)")
    assert approve(forge).pull_number == 7


# --------------------------------------------------------------------------- rejected: who approved


def test_merged_by_non_admin_without_approval(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    assert rejected(forge) == (
        "pull request #7 has no valid admin approval: no reviewer approved it; merged by carol, who is not an admin"
    )


def test_only_dismissed_admin_approval(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "ann", dismissed=True)
    assert "ann's approval was dismissed" in rejected(forge)


def test_only_stale_admin_approval(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "ann", stale=True)
    assert "ann's approval is stale" in rejected(forge)


def test_approval_superseded_by_same_admins_request_changes(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "ann", "APPROVED")
    forge.review(7, "ann", "REQUEST_CHANGES")
    assert "ann's latest review requests changes" in rejected(forge)


def test_review_order_is_submitted_at_then_id(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "ann", "REQUEST_CHANGES", at="2026-03-31T12:00:00+02:00")  # 10:00 UTC, id 1
    forge.review(7, "ann", "APPROVED", at="2026-03-31T09:30:00Z")  # earlier, though a higher id
    assert "requests changes" in rejected(forge)
    forge.review(7, "ann", "APPROVED", at="2026-03-31T10:00:00Z")  # same instant, higher id: wins
    assert approve(forge).approver == "ann"


def test_latest_decisive_per_reviewer() -> None:
    reviews = [
        Review(id=1, user="ann", state="APPROVED", submitted_at="2026-01-01T00:00:00Z"),
        Review(id=2, user="ann", state="COMMENT", submitted_at="2026-01-02T00:00:00Z"),
        Review(id=3, user="bob", state="APPROVED", submitted_at="2026-01-01T00:00:00Z"),
        Review(id=4, user="Bob", state="REQUEST_CHANGES", submitted_at="2026-01-03T00:00:00Z"),
    ]
    latest = latest_decisive(reviews)
    assert {k: v.id for k, v in latest.items()} == {"ann": 1, "bob": 4}


def test_approval_only_by_the_author(forge: FakeForge) -> None:
    forge.admin_users.add("alice")  # even an admin author cannot approve their own change
    forge.merge(7, {PATH: V1}, author="alice", merged_by="alice")
    forge.review(7, "alice")
    reason = rejected(forge)
    assert "approval by the author (alice) does not count" in reason
    assert "merged by the author (alice), which does not count" in reason


def test_author_match_is_case_insensitive(forge: FakeForge) -> None:
    forge.admin_users.add("Alice")
    forge.merge(7, {PATH: V1}, author="alice", merged_by="carol")
    forge.review(7, "Alice")
    assert "approval by the author (Alice) does not count" in rejected(forge)


def test_approval_only_by_the_reconcilers_own_user(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="vault-bot")
    forge.review(7, "vault-bot")
    reason = rejected(forge)
    assert "approval by the reconciler's own user (vault-bot) does not count" in reason
    assert "merged by the reconciler's own user (vault-bot), which does not count" in reason


def test_non_admin_approval(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "dave")
    assert "dave's approval does not count: dave is not an admin" in rejected(forge)


def test_reasons_name_every_reviewer_and_the_merger(forge: FakeForge) -> None:
    forge.admin_users |= {"alice2", "bob"}
    forge.merge(7, {PATH: V1}, author="zed", merged_by="carol")
    forge.review(7, "alice2", "REQUEST_CHANGES")
    forge.review(7, "bob", stale=True)
    reason = rejected(forge)
    assert reason.startswith("pull request #7 has no valid admin approval: ")
    for part in ("alice2's latest review requests changes", "bob's approval is stale",
                 "merged by carol, who is not an admin"):
        assert part in reason


# --------------------------------------------------------------------------- rejected: provenance


def test_direct_push_without_dispatch_mode(forge: FakeForge) -> None:
    sha = forge.commit({PATH: V1}, "add release", author="mallory")
    assert rejected(forge) == (
        f"no merged pull request into main brought this content (last change: direct commit {sha[:7]} by mallory)"
    )


def test_direct_push_rejected_by_authorize(forge: FakeForge) -> None:
    forge.commit({PATH: V1}, "add release")
    action = parse_action("release-v120.toml", V1, ActionSettings(factory_root=Path("/work/shared/fixtures")))
    with pytest.raises(GateRejected, match="no merged pull request into main"):
        authorize(action, PATH, V1, "high", forge, primary_branch="main")


def test_forged_merge_message_with_no_such_pull(forge: FakeForge) -> None:
    sha = forge.commit({PATH: V1}, "Merge pull request 'Release' (#9) from release into main")
    assert rejected(forge) == (
        f"merge message of commit {sha[:7]} names #9 but the forge has no merged pull request #9 "
        f"with merge commit {sha[:7]}"
    )


def test_forged_merge_message_naming_an_open_pull(forge: FakeForge) -> None:
    forge.pulls[9] = PullRequest(number=9, state="open", merged=False, author="alice", merged_by=None,
                                 merge_commit_sha=None, base_ref="main")
    forge.commit({PATH: V1}, "Merge pull request 'Release' (#9) from release into main")
    assert "pull request #9 is 'open' and not merged" in rejected(forge)


def test_forged_message_naming_a_real_pull_whose_content_differs(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin")
    forge.review(7, "ann")
    forge.commit({PATH: V2}, "Merge pull request 'Release' (#7) from release into main")
    reason = rejected(forge)
    assert reason.startswith("pull request #7 names this file but its content at the merge commit")
    assert reason.endswith("differs from main (changed after approval)")


def test_file_changed_on_main_after_its_approved_merge(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin")
    forge.review(7, "ann")
    sha = forge.commit({PATH: V2}, "tweak", author="mallory")
    assert rejected(forge) == (
        f"no merged pull request into main brought this content (last change: direct commit {sha[:7]} by mallory)"
    )


def test_forged_message_naming_a_later_pull_that_did_not_touch_the_file(forge: FakeForge) -> None:
    direct = forge.commit({PATH: V1}, "Merge pull request 'Docs' (#8) from docs into main")
    forge.merge(8, {"docs.md": b"docs"}, merged_by="admin")  # approved, merged later, unrelated
    forge.review(8, "ann")
    reason = rejected(forge)
    assert f"did not change {PATH}; this content came from commit {direct[:7]}" in reason


def test_pull_merged_into_another_branch(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin", base="dev")
    forge.review(7, "ann")
    assert rejected(forge) == "pull request #7 was merged into 'dev', not 'main'"


def test_merge_commit_not_on_primary(forge: FakeForge) -> None:
    off = forge.merge(7, {PATH: V1}, merged_by="admin", on_main=False)  # e.g. main was force-pushed since
    forge.review(7, "ann")
    forge.commit({PATH: V1}, "Merge pull request 'Release' (#7) from release into main")
    assert rejected(forge) == f"pull request #7's merge commit {off[:7]} is not on main"


def test_file_absent_at_the_named_merge_commit(forge: FakeForge) -> None:
    forge.merge(7, {"other.txt": b"x"}, merged_by="admin")
    forge.commit({PATH: V1}, "Merge pull request 'Release' (#7) from release into main")
    assert f"pull request #7 does not contain {PATH} at its merge commit" in rejected(forge)


def test_file_not_on_main(forge: FakeForge) -> None:
    with pytest.raises(GateRejected, match="no commit on main changed"):
        check_approval(PATH, V1, forge, primary_branch="main")


def test_content_other_than_main_is_rejected(forge: FakeForge) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin")
    with pytest.raises(GateRejected, match="differs from main"):
        check_approval(PATH, V2, forge, primary_branch="main")


# --------------------------------------------------------------------------- direct mode


def _direct(**extra: object) -> Action:
    return Action.model_validate({"id": "x", "formula": "triage", "context": "c", "secrets": [],
                                  "dispatch_mode": "direct", **extra})


def test_direct_allowed_on_low_without_secrets_or_mounts(forge: FakeForge) -> None:
    check_direct(_direct(), "low")
    assert authorize(_direct(), PATH, V1, "low", forge, primary_branch="main") is None


@pytest.mark.parametrize(
    ("extra", "tier", "expected"),
    [
        ({}, "medium", "its tier is 'medium'"),
        ({}, "high", "its tier is 'high'"),
        ({"secrets": ["DEPLOY_KEY"]}, "low", "it declares secrets (DEPLOY_KEY)"),
        ({"mounts": ["ssh"]}, "low", "it declares mounts (ssh)"),
    ],
)
def test_direct_rejected(extra: dict[str, object], tier: str, expected: str) -> None:
    with pytest.raises(GateRejected) as info:
        check_direct(_direct(**extra), tier)
    assert expected in info.value.reason


def test_pr_mode_passes_check_direct() -> None:
    check_direct(Action.model_validate({"id": "x", "formula": "f", "context": "c", "secrets": ["DEPLOY_KEY"]}), "high")


# --------------------------------------------------------------------------- tiers


TIERS_V1 = b'[tiers]\nrelease = "high"\ntriage = "low"\n'
TIERS_V2 = b'[tiers]\nrelease = "low"\ntriage = "low"\n'


def test_approved_tiers_trusted(forge: FakeForge) -> None:
    merge = forge.merge(4, {POLICY: TIERS_V1}, merged_by="admin")
    trusted = trusted_tiers(POLICY, forge, primary_branch="main")
    assert (trusted.content, trusted.commit, trusted.ignored) == (TIERS_V1, merge, [])


def test_later_unapproved_tiers_change_ignored_and_listed(forge: FakeForge) -> None:
    merge = forge.merge(4, {POLICY: TIERS_V1}, merged_by="admin")
    sneaky = forge.commit({POLICY: TIERS_V2}, "make release low", author="mallory")
    also = forge.merge(5, {POLICY: TIERS_V2 + b"dev = \"low\"\n"}, merged_by="carol")  # non-admin merge
    trusted = trusted_tiers(POLICY, forge, primary_branch="main")
    assert trusted.content == TIERS_V1 and trusted.commit == merge
    assert [c.sha for c in trusted.ignored] == [also, sneaky]
    tiers = parse_tiers(trusted.content)
    assert effective_tier("release", None, tiers) == "high"


def test_approved_tiers_change_after_unapproved_one_is_trusted(forge: FakeForge) -> None:
    forge.commit({POLICY: TIERS_V2}, "unapproved")
    merge = forge.merge(4, {POLICY: TIERS_V1}, merged_by="admin")
    trusted = trusted_tiers(POLICY, forge, primary_branch="main")
    assert (trusted.content, trusted.commit, trusted.ignored) == (TIERS_V1, merge, [])


def test_no_approved_tiers_means_everything_high(forge: FakeForge) -> None:
    sha = forge.commit({POLICY: TIERS_V2}, "unapproved")
    trusted = trusted_tiers(POLICY, forge, primary_branch="main")
    assert trusted.content is None and trusted.commit is None
    assert [c.sha for c in trusted.ignored] == [sha]
    assert effective_tier("triage", None, parse_tiers(trusted.content or b"")) == "high"


def test_no_tiers_file_at_all(forge: FakeForge) -> None:
    assert trusted_tiers(POLICY, forge, primary_branch="main").content is None


def test_tiers_deletion_is_honoured_as_everything_high(forge: FakeForge) -> None:
    forge.merge(4, {POLICY: TIERS_V1}, merged_by="admin")
    deletion = forge.commit({POLICY: None}, "drop tiers")
    trusted = trusted_tiers(POLICY, forge, primary_branch="main")
    assert (trusted.content, trusted.commit, trusted.ignored) == (None, deletion, [])


def test_blast_radius_raises_tier_for_trusted_policy(forge: FakeForge) -> None:
    forge.merge(4, {POLICY: TIERS_V1}, merged_by="admin")
    tiers = parse_tiers(trusted_tiers(POLICY, forge, primary_branch="main").content or b"")
    assert effective_tier("triage", "medium", tiers) == "medium"
    assert effective_tier("release", "low", tiers) == "high"
