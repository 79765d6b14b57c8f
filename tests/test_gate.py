"""Tests for reconciler.gate: who may run what, with a fake reader made of plain dicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.actions import Action, effective_tier, parse_action, parse_tiers
from dataclasses import replace

from reconciler.facts import Review
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
from tests.gate_world import STYLES, Reader, World

PATH = "vault/actions/release-v120.toml"
POLICY = "vault/policy.toml"
V1 = b'id = "release-v120"\nformula = "release"\ncontext = "Release v1.2.0"\nsecrets = []\n'
V2 = V1.replace(b"v1.2.0", b"v1.2.1")


def on_main(forge: World, path: str = PATH) -> bytes:
    content = forge.tree().get(path)
    assert content is not None
    return content


def approve(forge: World) -> Approval:
    return check_approval(PATH, on_main(forge), Reader(forge), primary_branch="main")


def rejected(forge: World, path: str = PATH) -> str:
    with pytest.raises(GateRejected) as info:
        check_approval(path, on_main(forge, path), Reader(forge), primary_branch="main")
    return info.value.reason


@pytest.fixture
def forge() -> World:
    f = World()
    f.commit({"README.md": b"ops\n"}, "initial", author="admin")
    return f


def test_world_is_a_gate_reader(forge: World) -> None:
    reader: GateReader = Reader(forge)
    assert reader.own_login == "vault-bot"


# --------------------------------------------------------------------------- accepted


def test_admin_review_approves(forge: World) -> None:
    forge.open_pull(7, {PATH: V1})
    seen = forge.review(7, "ann").commit_id
    merge = forge.land(7, merged_by="carol")
    assert approve(forge) == Approval(
        pull_number=7, merge_commit=merge, approver="ann", via="review", author="alice", reviewed_commit=seen
    )


def test_admin_via_forge_is_admin_accepted(forge: World) -> None:
    forge.site_admins.add("root")
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "root")
    assert approve(forge).approver == "root"


def test_merged_by_admin_fallback_accepted(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin")
    approval = approve(forge)
    assert (approval.via, approval.approver) == ("merger", "admin")


def test_merged_by_site_admin_fallback_accepted(forge: World) -> None:
    forge.site_admins.add("root")
    forge.merge(7, {PATH: V1}, merged_by="root")
    assert approve(forge).via == "merger"


def test_comment_after_approved_does_not_supersede(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "ann", "APPROVED")
    forge.review(7, "ann", "COMMENT")
    forge.review(7, "ann", "PENDING")
    assert approve(forge).approver == "ann"


def test_admin_approval_wins_over_non_admin_and_author(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "dave")
    forge.review(7, "alice")
    forge.review(7, "ann")
    assert approve(forge).approver == "ann"


def test_approval_after_request_changes_counts(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "ann", "REQUEST_CHANGES")
    forge.review(7, "ann", "APPROVED")
    assert approve(forge).via == "review"


@pytest.mark.parametrize("style", STYLES)
def test_every_merge_style_of_an_approved_pull_is_approved(forge: World, style: str) -> None:
    """Case 8: rebase, squash and fast-forward-only land commits that are not ``merge_commit_sha``."""
    forge.open_pull(3, {PATH: V1})
    forge.push(3, {"notes.md": b"more"})  # two commits: a rebase lands the file's change before the last
    forge.review(3, "ann")
    forge.land(3, style)
    approval = approve(forge)
    assert (approval.pull_number, approval.via, approval.approver) == (3, "review", "ann")


def test_squash_message_edited_is_still_found_through_the_forge(forge: World) -> None:
    forge.open_pull(3, {PATH: V1})
    forge.review(3, "ann")
    squash = forge.land(3, "squash")
    forge.commits[squash] = replace(forge.commits[squash], message="Release v1.2.0 (message edited)")
    assert approve(forge).pull_number == 3


def test_base_ref_with_refs_heads_prefix(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin", base="refs/heads/main")
    assert approve(forge).pull_number == 7


def test_unrelated_later_commits_do_not_matter(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin")
    forge.commit({"other.txt": b"x"})
    assert approve(forge).pull_number == 7


def test_direct_revert_to_approved_content_needs_a_new_approval(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin")
    forge.review(7, "ann")
    forge.commit({PATH: V2})
    revert = forge.commit({PATH: V1}, "Revert to the content of pull request (#7)")
    assert f"this content came from commit {revert[:7]} by mallory, after pull request #7 merged" in rejected(forge)


# --------------------------------------------------------------------------- rejected: who approved


def test_merged_by_non_admin_without_approval(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    assert rejected(forge) == (
        "pull request #7 has no valid admin approval: no reviewer approved it; "
        "merged by carol, who is neither a site admin nor an admin of the ops repository"
    )


def test_only_dismissed_admin_approval(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "ann", dismissed=True)
    assert "ann's approval was dismissed" in rejected(forge)


def test_only_stale_admin_approval(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "ann", stale=True)
    assert "ann's approval is stale" in rejected(forge)


def test_approval_superseded_by_same_admins_request_changes(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "ann", "APPROVED")
    forge.review(7, "ann", "REQUEST_CHANGES")
    assert "ann's latest review requests changes" in rejected(forge)


def test_review_order_is_submitted_at_then_id(forge: World) -> None:
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


def test_approval_only_by_the_author(forge: World) -> None:
    forge.repo_admins.add("alice")  # even an admin author cannot approve their own change
    forge.merge(7, {PATH: V1}, author="alice", merged_by="alice")
    forge.review(7, "alice")
    reason = rejected(forge)
    assert "approval by the author (alice) does not count" in reason
    assert "merged by the author (alice), which does not count" in reason


def test_author_match_is_case_insensitive(forge: World) -> None:
    forge.repo_admins.add("Alice")
    forge.merge(7, {PATH: V1}, author="alice", merged_by="carol")
    forge.review(7, "Alice")
    assert "approval by the author (Alice) does not count" in rejected(forge)


def test_approval_only_by_the_reconcilers_own_user(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="vault-bot")
    forge.review(7, "vault-bot")
    reason = rejected(forge)
    assert "approval by the reconciler's own user (vault-bot) does not count" in reason
    assert "merged by the reconciler's own user (vault-bot), which does not count" in reason


def test_non_admin_approval(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="carol")
    forge.review(7, "dave")
    assert "dave's approval does not count: dave is neither a site admin nor an admin of the ops repository" in rejected(forge)


def test_reasons_name_every_reviewer_and_the_merger(forge: World) -> None:
    forge.repo_admins |= {"alice2", "bob"}
    forge.merge(7, {PATH: V1}, author="zed", merged_by="carol")
    forge.review(7, "alice2", "REQUEST_CHANGES")
    forge.review(7, "bob", stale=True)
    reason = rejected(forge)
    assert reason.startswith("pull request #7 has no valid admin approval: ")
    for part in ("alice2's latest review requests changes", "bob's approval is stale",
                 "merged by carol, who is neither a site admin"):
        assert part in reason


# --------------------------------------------------------------------------- rejected: provenance


def test_direct_push_without_dispatch_mode(forge: World) -> None:
    sha = forge.commit({PATH: V1}, "add release", author="mallory")
    assert rejected(forge) == (
        f"no merged pull request into main brought this content (last change: direct commit {sha[:7]} by mallory)"
    )


def test_direct_push_rejected_by_authorize(forge: World) -> None:
    forge.commit({PATH: V1}, "add release")
    action = parse_action("release-v120.toml", V1, ActionSettings(factory_root=Path(__file__).resolve().parent.parent / "reconciler" / "demo"))
    with pytest.raises(GateRejected, match="no merged pull request into main"):
        authorize(action, PATH, V1, "high", Reader(forge), primary_branch="main")


def test_forged_merge_message_with_no_such_pull(forge: World) -> None:
    sha = forge.commit({PATH: V1}, "Merge pull request 'Release' (#9) from release into main")
    assert rejected(forge) == f"commit {sha[:7]} names #9 but the forge has no pull request #9"


def test_forged_merge_message_naming_an_open_pull(forge: World) -> None:
    forge.open_pull(9, {PATH: V1})
    forge.review(9, "ann")
    forge.commit({PATH: V1}, "Merge pull request 'Release' (#9) from release into main")
    assert "pull request #9 is 'open' and not merged" in rejected(forge)


def test_forged_message_naming_a_real_pull_whose_content_differs(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin")
    forge.review(7, "ann")
    forge.commit({PATH: V2}, "Merge pull request 'Release' (#7) from release into main")
    reason = rejected(forge)
    assert reason.startswith(f"{PATH} at pull request #7's merge commit")
    assert reason.endswith("differs from main (changed after it merged)")


def test_file_changed_on_main_after_its_approved_merge(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin")
    forge.review(7, "ann")
    sha = forge.commit({PATH: V2}, "tweak", author="mallory")
    assert rejected(forge) == (
        f"no merged pull request into main brought this content (last change: direct commit {sha[:7]} by mallory)"
    )


def test_forged_message_naming_a_later_pull_that_did_not_touch_the_file(forge: World) -> None:
    direct = forge.commit({PATH: V1}, "Merge pull request 'Docs' (#8) from docs into main")
    forge.merge(8, {"docs.md": b"docs"}, merged_by="admin")  # approved, merged later, unrelated
    forge.review(8, "ann")
    reason = rejected(forge)
    assert f"did not change {PATH}; commit {direct[:7]} by mallory did" in reason


def test_pull_merged_into_another_branch(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin", base="dev")
    forge.review(7, "ann")
    assert rejected(forge) == "pull request #7 was merged into 'dev', not 'main'"


def test_merge_commit_not_on_primary(forge: World) -> None:
    off = forge.merge(7, {PATH: V1}, merged_by="admin", on_main=False)  # e.g. main was force-pushed since
    forge.review(7, "ann")
    forge.commit({PATH: V1}, "Merge pull request 'Release' (#7) from release into main")
    assert rejected(forge) == f"pull request #7's merge commit {off[:7]} is not on main"


def test_file_absent_at_the_named_merge_commit(forge: World) -> None:
    forge.merge(7, {"other.txt": b"x"}, merged_by="admin")
    forge.commit({PATH: V1}, "Merge pull request 'Release' (#7) from release into main")
    assert f"pull request #7 does not contain {PATH} at its merge commit" in rejected(forge)


def test_file_not_on_main(forge: World) -> None:
    with pytest.raises(GateRejected, match="no commit on main changed"):
        check_approval(PATH, V1, Reader(forge), primary_branch="main")


def test_content_other_than_main_is_rejected(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin")
    with pytest.raises(GateRejected, match="differs from main"):
        check_approval(PATH, V2, Reader(forge), primary_branch="main")


# --------------------------------------------------------------------------- direct mode


def _direct(**extra: object) -> Action:
    return Action.model_validate({"id": "x", "formula": "triage", "context": "c", "secrets": [],
                                  "dispatch_mode": "direct", **extra})


def test_direct_allowed_on_low_without_secrets_or_mounts(forge: World) -> None:
    check_direct(_direct(), "low")
    assert authorize(_direct(), PATH, V1, "low", Reader(forge), primary_branch="main") is None


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


def test_approved_tiers_trusted(forge: World) -> None:
    merge = forge.merge(4, {POLICY: TIERS_V1}, merged_by="admin")
    trusted = trusted_tiers(POLICY, Reader(forge), primary_branch="main")
    assert (trusted.content, trusted.commit, trusted.ignored) == (TIERS_V1, merge, [])


def test_later_unapproved_tiers_change_ignored_and_listed(forge: World) -> None:
    merge = forge.merge(4, {POLICY: TIERS_V1}, merged_by="admin")
    sneaky = forge.commit({POLICY: TIERS_V2}, "make release low", author="mallory")
    also = forge.merge(5, {POLICY: TIERS_V2 + b"dev = \"low\"\n"}, merged_by="carol")  # non-admin merge
    trusted = trusted_tiers(POLICY, Reader(forge), primary_branch="main")
    assert trusted.content == TIERS_V1 and trusted.commit == merge
    assert [c.sha for c in trusted.ignored] == [also, sneaky]
    tiers = parse_tiers(trusted.content)
    assert effective_tier("release", None, tiers) == "high"


def test_approved_tiers_change_after_unapproved_one_is_trusted(forge: World) -> None:
    forge.commit({POLICY: TIERS_V2}, "unapproved")
    merge = forge.merge(4, {POLICY: TIERS_V1}, merged_by="admin")
    trusted = trusted_tiers(POLICY, Reader(forge), primary_branch="main")
    assert (trusted.content, trusted.commit, trusted.ignored) == (TIERS_V1, merge, [])


def test_no_approved_tiers_means_everything_high(forge: World) -> None:
    sha = forge.commit({POLICY: TIERS_V2}, "unapproved")
    trusted = trusted_tiers(POLICY, Reader(forge), primary_branch="main")
    assert trusted.content is None and trusted.commit is None
    assert [c.sha for c in trusted.ignored] == [sha]
    assert effective_tier("triage", None, parse_tiers(trusted.content or b"")) == "high"


def test_no_tiers_file_at_all(forge: World) -> None:
    assert trusted_tiers(POLICY, Reader(forge), primary_branch="main").content is None


def test_tiers_deletion_is_honoured_as_everything_high(forge: World) -> None:
    forge.merge(4, {POLICY: TIERS_V1}, merged_by="admin")
    deletion = forge.commit({POLICY: None}, "drop tiers")
    trusted = trusted_tiers(POLICY, Reader(forge), primary_branch="main")
    assert (trusted.content, trusted.commit, trusted.ignored) == (None, deletion, [])


def test_blast_radius_raises_tier_for_trusted_policy(forge: World) -> None:
    forge.merge(4, {POLICY: TIERS_V1}, merged_by="admin")
    tiers = parse_tiers(trusted_tiers(POLICY, Reader(forge), primary_branch="main").content or b"")
    assert effective_tier("triage", "medium", tiers) == "medium"
    assert effective_tier("release", "low", tiers) == "high"


# --------------------------------------------------------------------------- the content proof (issue cases)


def test_approve_push_merge_is_rejected(forge: World) -> None:
    """Case 1: Forgejo marks reviews stale asynchronously and never after a merge: the flag proves nothing."""
    forge.open_pull(7, {PATH: V1})
    seen = forge.review(7, "ann").commit_id  # harmless content approved
    forge.push(7, {PATH: V2})  # new content pushed, merged at once: the review is not (yet) stale
    forge.land(7, merged_by="carol")
    reason = rejected(forge)
    assert f"ann approved commit {seen[:7]}, where {PATH} held other content" in reason


def test_manually_merged_marking_borrows_no_approval(forge: World) -> None:
    """Case 2: ``Do: manually-merged`` attaches any commit on main to an approved pull request."""
    forge.open_pull(7, {PATH: V1})
    forge.review(7, "ann")
    direct = forge.commit({PATH: V2}, "sneak in", author="mallory")
    forge.land(7, "manually-merged", merged_by="mallory", commit=direct)
    reason = rejected(forge)
    assert f"ann approved commit {forge.pulls[7].head_sha[:7]}, where {PATH} held other content" in reason


def test_manually_merged_by_an_admin_is_no_merger_approval(forge: World) -> None:
    """Case 3: a manual marking names a merger who merged nothing."""
    forge.open_pull(7, {PATH: V1})
    direct = forge.commit({PATH: V1}, "pushed by hand", author="mallory")
    forge.land(7, "manually-merged", merged_by="admin", commit=direct)
    assert "only a true merge vouches for its merger" in rejected(forge) or "before pull request #7 forked" in rejected(forge)


def test_scheduled_auto_merge_is_no_merger_approval(forge: World) -> None:
    """Case 3: a scheduled auto-merge runs as the admin who scheduled it, whatever was pushed after."""
    forge.open_pull(7, {PATH: V1})
    forge.push(7, {PATH: V2})
    forge.land(7, merged_by="admin", events=("pull_scheduled_merge", "merge_pull"))
    assert "through a scheduled auto-merge" in rejected(forge)


def test_migrated_merger_is_no_merger_approval(forge: World) -> None:
    """Case 3: a migration copies ``merged_by`` from another forge."""
    forge.created_at = "2026-12-01T00:00:00Z"  # the pull request merged (June) before the repo existed here
    forge.merge(7, {PATH: V1}, merged_by="admin")
    assert "before the repository was created here" in rejected(forge)


def test_merger_without_a_merge_commit_is_no_approval(forge: World) -> None:
    forge.merge(7, {PATH: V1}, merged_by="admin", style="squash")
    assert "only a true merge vouches for its merger" in rejected(forge)


def test_merger_path_can_be_turned_off(forge: World) -> None:
    forge.merger_approves = False
    forge.merge(7, {PATH: V1}, merged_by="admin")
    assert "approval by the merger is turned off (RECONCILER_MERGER_APPROVES)" in rejected(forge)


def test_listed_name_is_no_admin_without_the_forge(forge: World) -> None:
    """Case 4: ``vault-bot`` (or any name) in FORGE_ADMIN_USERS grants nothing; the forge decides."""
    forge.open_pull(7, {PATH: V1}, author="mallory")
    forge.review(7, "vault-bot2")  # a user who registered a name "like" a listed one
    forge.land(7, merged_by="mallory")
    assert "vault-bot2's approval does not count" in rejected(forge)


def test_renamed_admins_old_name_taken_by_someone_else(forge: World) -> None:
    """Case 4: an admin renames; another user registers the old name and approves."""
    forge.repo_admins.add("root")
    forge.uid("root")
    forge.rename("root", "root-old")  # the admin is now root-old; a new user owns "root"
    forge.repo_admins.add("root")  # a stale list (cache, FORGE_ADMIN_USERS) still says root
    forge.open_pull(7, {PATH: V1}, author="mallory")
    forge.review(7, "root")  # the impostor's review carries the impostor's id
    forge.user_ids["root"] = forge.user_ids["root"] + 1  # ...and the name moved on again since
    forge.land(7, merged_by="mallory")
    assert "root's approval does not count" in rejected(forge)


def test_direct_push_before_an_unrelated_pull_forked(forge: World) -> None:
    """A file pushed directly cannot borrow the approval of a pull request forked after it."""
    direct = forge.commit({PATH: V1}, "direct", author="mallory")
    forge.open_pull(8, {"docs.md": b"docs"})
    forge.review(8, "ann")
    forge.land(8, "fast-forward-only")
    forge.commits[direct] = replace(forge.commits[direct], message="Docs (#8)")
    reason = rejected(forge)
    assert "before pull request #8 forked" in reason or "did not change" in reason


def test_pull_reforked_before_a_direct_push_borrows_nothing(forge: World) -> None:
    """Approve a head that contains a direct push, then re-fork the branch before it and merge."""
    fork = forge.head_sha
    forge.commit({PATH: V1}, "direct", author="mallory")
    forge.open_pull(8, {"docs.md": b"docs"})
    forge.review(8, "ann")  # ann's diff showed docs.md only; the tree holds the direct V1
    forge.refork(8, fork)
    forge.land(8, "rebase", merged_by="mallory")
    assert "did not bring" in rejected(forge) or "did not change" in rejected(forge)


def test_approved_commit_that_cannot_be_fetched(forge: World) -> None:
    forge.open_pull(7, {PATH: V1})
    seen = forge.review(7, "ann").commit_id
    forge.land(7, merged_by="carol")
    forge.unfetchable.add(seen)
    assert f"ann approved commit {seen[:7]}, which the ops repository cannot fetch" in rejected(forge)


def test_approval_at_an_older_head_with_the_same_file_counts(forge: World) -> None:
    """Only the file's content matters: later pushes that leave it alone keep the approval."""
    forge.open_pull(7, {PATH: V1})
    forge.review(7, "ann")
    forge.push(7, {"notes.md": b"x"})
    for style in ("merge",):
        forge.land(7, style, merged_by="carol")
    assert approve(forge).approver == "ann"


# --------------------------------------------------------------------------- property


_CONTENTS = (V1, V2, V1 + b"# 3\n")
_USERS = ("ann", "admin", "dave", "alice")


def _admin_saw(world: World, path: str) -> set[bytes]:
    """Contents an admin approved as a change of ``path``: what the gate may let through."""
    saw: set[bytes] = set()
    for number, reviews in world.review_lists.items():
        pull = world.pulls[number]
        for review in latest_decisive(reviews).values():
            if review.state != "APPROVED" or review.user in (pull.author, world.own_login):
                continue
            if not world.is_admin(review.user, review.user_id):
                continue
            at = world.content_at(review.commit_id, path)
            fork = world._forks[review.id]  # type: ignore[attr-defined]
            if at is not None and world.content_at(fork, path) != at:
                saw.add(at)
    return saw


from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

_MIDDLE = st.one_of(
    st.tuples(st.just("push"), st.integers(0, 2)),
    st.tuples(st.just("push-other"),),
    st.tuples(st.just("review"), st.sampled_from(_USERS), st.sampled_from(("APPROVED", "APPROVED", "REQUEST_CHANGES", "COMMENT"))),
    st.tuples(st.just("direct"), st.integers(0, 2)),
    st.tuples(st.just("refork"), st.integers(0, 5)),
    st.tuples(st.just("other"),),
)
_PULL = st.tuples(
    st.integers(0, 2),
    st.sampled_from(_USERS[2:]),
    st.lists(_MIDDLE, max_size=6),
    st.sampled_from((*STYLES, "manually-merged")),
    st.sampled_from(_USERS),
)


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_PULL, min_size=1, max_size=3), st.booleans())
def test_property_dispatched_content_is_content_an_admin_approved(pulls: list[tuple], merger: bool) -> None:
    """For random pushes, reviews and merges: approved only content an admin's latest decisive review saw."""
    world = World(merger_approves=merger)
    world._forks = {}  # type: ignore[attr-defined]
    world.commit({"README.md": b"ops\n"}, "initial", author="admin")
    for number, (first, author, middle, style, by) in enumerate(pulls, start=1):
        world.open_pull(number, {PATH: _CONTENTS[first]}, author=author)
        for step in middle:
            kind = step[0]
            if kind == "push":
                world.push(number, {PATH: _CONTENTS[step[1]]})
            elif kind == "push-other":
                world.push(number, {"notes.md": str(len(world.commits)).encode()})
            elif kind == "review":
                review = world.review(number, step[1], step[2])
                world._forks[review.id] = world.pulls[number].merge_base  # type: ignore[attr-defined]
            elif kind == "direct":
                world.commit({PATH: _CONTENTS[step[1]]}, f"direct (#{number})")
            elif kind == "refork":
                world.refork(number, world.main[min(step[1], len(world.main) - 1)])
            else:
                world.commit({"other.txt": str(len(world.main)).encode()})
        try:
            world.land(number, style, merged_by=by, commit=world.head_sha if style == "manually-merged" else None)
        except ValueError:
            continue  # not a fast-forward: Forgejo refuses, the pull request stays open
    content = world.tree().get(PATH)
    if content is None:
        return
    try:
        approval = check_approval(PATH, content, Reader(world), primary_branch="main")
    except GateRejected:
        return
    if approval.via == "review":
        assert content in _admin_saw(world, PATH)
        assert world.content_at(approval.reviewed_commit, PATH) == content
    else:
        pull = world.pulls[approval.pull_number]
        merge = world.commits[pull.merge_commit_sha or ""]
        assert merger and len(merge.parents) == 2 and merge.parents[1] == pull.head_sha
        assert world.content_at(pull.head_sha, PATH) == content and world.is_admin(pull.merged_by or "")
