"""Approvals are read at a head that the reconciler's own result pushes do not move."""

from reconciler import desired


def test_result_pushes_keep_the_approval_head_and_any_other_change_moves_it(cluster, harness):
    ctx = harness.ctx
    ctx.ops.ensure_ready()
    cluster.merge_action("ah-one", 'id = "ah-one"\nformula = "release"\ncontext = "t"\nsecrets = []\n')
    first = ctx.ops.fetch()
    assert desired.approval_head(ctx, None, first) == first

    ctx.ops.push_files({"vault/actions/ah-one.result.json": b"{}\n"}, "reconciler: results")
    after_results = ctx.ops.fetch()
    assert after_results != first
    assert desired.approval_head(ctx, first, after_results) == first

    # a result file pushed outside vault/actions, or any other file, is a change approvals may depend on
    ctx.ops.push_files({"vault/policy.toml": b"[tiers]\n"}, "tiers")
    after_policy = ctx.ops.fetch()
    assert desired.approval_head(ctx, first, after_policy) == after_policy

    cluster.merge_action("ah-two", 'id = "ah-two"\nformula = "release"\ncontext = "t"\nsecrets = []\n')
    after_action = ctx.ops.fetch()
    assert desired.approval_head(ctx, after_policy, after_action) == after_action

    # not a fast-forward (history rewritten, or an unknown commit): the new head
    assert desired.approval_head(ctx, after_action, first) == first
    assert desired.approval_head(ctx, "0" * 40, after_action) == after_action
