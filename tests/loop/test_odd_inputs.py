"""Odd entries in the ops repo never stop the loop: the real CLI against the doubles and a real bare repo.

CONTRACTS.md "Git": file names in a tree may hold newlines, tabs and any UTF-8 (or bytes that are
not UTF-8 at all); entries may be symlinks or submodules. Pushed with git plumbing next to valid
actions, each such entry gets its own specific reason - a rejected result when its name gives a
safe result file, a journaled rejection when it does not, a single warning when it cannot even
be named - while the valid actions run and are reported as usual, on an incremental scan (a
running installation) and on a full one (a new installation).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.crash.support import Service
from tests.loop.test_end_to_end import _remote_paths, action_toml, children_of, result

pytestmark = pytest.mark.timeout(300)

IDENTITY = {
    "GIT_AUTHOR_NAME": "Human",
    "GIT_AUTHOR_EMAIL": "human@example.org",
    "GIT_COMMITTER_NAME": "Human",
    "GIT_COMMITTER_EMAIL": "human@example.org",
}

# Regular files whose names give no safe id: rejected, journal only (the rule of ``.hidden.toml``).
UNSAFE_NAMES = {
    b"vault/actions/odd\nnewline.toml": "odd\nnewline.toml",
    b"vault/actions/odd\ttab.toml": "odd\ttab.toml",
    "vault/actions/odd-ünï-cödé.toml".encode(): "odd-ünï-cödé.toml",
}
NOT_UTF8 = b"vault/actions/odd-\xff\xfe.toml"
SYMLINK = "vault/actions/odd-link.toml"
GITLINK = "vault/actions/odd-sub.toml"
DIRECTORY = "vault/actions/odd-dir.toml"
UNSAFE_SYMLINK = b"vault/actions/odd link\n.toml"


def _git(bare: Path, *args: str, input: bytes | None = None, index: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | IDENTITY
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    proc = subprocess.run(["git", "--git-dir", str(bare), *args], input=input, capture_output=True, env=env, timeout=30)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr.decode(errors='replace')}"
    return proc.stdout.decode("utf-8", "replace").strip()


def push_odd_entries(bare: Path, valid_content: bytes) -> str:
    """One commit on main, written with plumbing as a human's push would land: every odd entry.

    Names travel NUL-terminated (``update-index -z --index-info``), so a newline or a byte that is
    not UTF-8 is stored verbatim; the gitlink goes in with ``--cacheinfo 160000``.
    """
    old = _git(bare, "rev-parse", "refs/heads/main")
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        _git(bare, "read-tree", "refs/heads/main", index=index)

        def blob(data: bytes) -> bytes:
            return _git(bare, "hash-object", "-w", "--stdin", input=data).encode()

        # every regular file below holds a valid action (its own id), so only its name can be wrong
        lines = [b"100644 " + blob(valid_content) + b"\t" + path + b"\0" for path in UNSAFE_NAMES]
        lines.append(b"100644 " + blob(b'id = "odd-bytes"\n') + b"\t" + NOT_UTF8 + b"\0")
        # a symlink's blob is its target; this one points at a valid action file
        lines.append(b"120000 " + blob(b"odd-target.toml") + b"\t" + SYMLINK.encode() + b"\0")
        lines.append(b"120000 " + blob(b"odd-target.toml") + b"\t" + UNSAFE_SYMLINK + b"\0")
        lines.append(b"100644 " + blob(b'id = "inner"\n') + b"\t" + f"{DIRECTORY}/inner.toml".encode() + b"\0")
        _git(bare, "update-index", "-z", "--index-info", input=b"".join(lines), index=index)
        _git(bare, "update-index", "--add", "--cacheinfo", f"160000,{old},{GITLINK}", index=index)
        tree = _git(bare, "write-tree", index=index)
    commit = _git(bare, "commit-tree", tree, "-p", old, "-m", "odd entries, pushed by hand")
    _git(bare, "update-ref", "refs/heads/main", commit, old)
    return commit


def runs_at(svc: Service, path: str) -> list[dict]:
    return [r for r in svc.runs() if r.get("path") == path]


def test_odd_entries_get_their_reasons_and_the_valid_actions_run(cluster, tmp_path):
    svc = Service(cluster, tmp_path)
    # a running installation: its first (full) scan sees only a valid action
    cluster.merge_action("odd-before", action_toml("odd-before"))
    svc.until_idle(timeout=90)
    assert result(cluster, "odd-before")["outcome"] == "success"

    # then valid actions (one approved pull request) and, pushed by hand on top, the odd entries next to them
    # (in this order: the forge double cannot rebuild a tree that holds a name which is not UTF-8)
    cluster.merge_files(
        {f"vault/actions/{a}.toml": action_toml(a).encode() for a in ("odd-target", "odd-neighbour")},
        title="valid actions next to odd entries",
    )
    push_odd_entries(cluster.bare, action_toml("odd-target").encode())
    svc.until_idle(timeout=90)  # an incremental scan: the changed paths are listed with -z

    for action_id in ("odd-before", "odd-target", "odd-neighbour"):
        res = result(cluster, action_id)
        assert res is not None and res["outcome"] == "success" and res["exit_code"] == 0, (action_id, res)
        assert len(children_of(cluster, action_id)) == 1, action_id

    # named safely: a rejected result with the specific reason; never dispatched
    for action_id, needle in (("odd-link", "is a symlink, not a file"), ("odd-sub", "is a submodule (gitlink), not a file"),
                              ("odd-dir", "is a directory, not a file")):
        res = result(cluster, action_id)
        assert res is not None, action_id
        assert res["outcome"] == "rejected" and res["exit_code"] == 1, (action_id, res)
        assert needle in res["reason"], (action_id, res["reason"])
        assert children_of(cluster, action_id) == [], action_id

    # no safe result name: rejected in the journal only, with what is wrong with the name
    for raw, name in UNSAFE_NAMES.items():
        runs = runs_at(svc, raw.decode())
        assert len(runs) == 1, name
        run = runs[0]
        assert run["state"] == "reported" and run["outcome"] == "rejected" and run["result_path"] is None, run
        assert "file name" in run["error"] and "safe id" in run["error"], run["error"]
        assert "\n" not in run["error"] and "\t" not in run["error"], "the name is quoted, not pasted"
    link = runs_at(svc, UNSAFE_SYMLINK.decode())
    assert len(link) == 1 and link[0]["outcome"] == "rejected" and "is a symlink, not a file" in link[0]["error"]
    assert link[0]["result_path"] is None

    # a name that is not UTF-8 cannot be recorded anywhere: one warning, no run
    warnings = [line for line in svc.log_tail(10**7).splitlines() if " warning " in line and "odd-\\xff\\xfe.toml" in line]
    assert len(warnings) == 1, warnings
    assert "not valid UTF-8" in warnings[0]
    expected = {f"vault/actions/{a}.toml" for a in ("odd-before", "odd-target", "odd-neighbour", "odd-link", "odd-sub", "odd-dir")}
    expected |= {raw.decode() for raw in (*UNSAFE_NAMES, UNSAFE_SYMLINK)}
    assert sorted(r["path"] for r in svc.runs()) == sorted(expected), "one run per entry named like an action, none for the rest"
    assert "internal error" not in svc.log_tail(10**7) and "Traceback" not in svc.log_tail(10**7)

    # nothing written outside vault/actions/, no result for an entry that has no safe name
    pushed = [p for p in _remote_paths(cluster) if p.endswith(".result.json")]
    assert all(p.startswith("vault/actions/") and "\\" not in p and '"' not in p for p in pushed), pushed

    # a new installation (own store and clone) scans everything at once: it too finishes, runs nothing again
    before = len(cluster.nomad.children("vault-runner"))
    fresh = Service(cluster, tmp_path, name="fresh")
    fresh.until_idle(timeout=90)
    assert len(cluster.nomad.children("vault-runner")) == before
    for action_id in ("odd-target", "odd-neighbour", "odd-link", "odd-sub", "odd-dir"):
        assert len(cluster.remote_log(f"vault/actions/{action_id}.result.json")) == 1, action_id
    for raw in UNSAFE_NAMES:
        assert [r["outcome"] for r in runs_at(fresh, raw.decode())] == ["rejected"]
    assert "not valid UTF-8" in fresh.log_tail(10**7)
