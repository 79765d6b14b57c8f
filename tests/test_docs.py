"""The docs cannot drift from the code: the state graph block equals states.machine.mermaid()."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from states.machine import EDGES, mermaid

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block(text: str, begin: str, end: str) -> str:
    return text[text.index(begin) + len(begin) : text.index(end)]


def test_architecture_state_graph_matches_the_machine():
    gen = _generator()
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = _block(text, gen.BEGIN, gen.END).strip()
    assert block == "```mermaid\n" + mermaid().rstrip("\n") + "\n```", (
        "docs/architecture.md's state graph differs from states.machine.mermaid(); run: python docs/generate.py"
    )
    assert gen.render(text) == text


def test_every_transition_is_described_in_the_architecture():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    outside = text.replace(_block(text, "<!-- state-graph:begin -->", "<!-- state-graph:end -->"), "")
    for edge in EDGES:
        assert f"`{edge.transition.value}`" in outside, f"transition {edge.transition.value} is not explained in prose"


def test_render_replaces_a_stale_block_and_check_mode_reports_it(tmp_path):
    gen = _generator()
    doc = tmp_path / "a.md"
    doc.write_text(f"# t\n{gen.BEGIN}\n```mermaid\nstale\n```\n{gen.END}\ntail\n", encoding="utf-8")
    assert gen.main(["--check", "--file", str(doc)]) == 1
    assert gen.main(["--file", str(doc)]) == 0
    new = doc.read_text(encoding="utf-8")
    assert "stale" not in new and mermaid().splitlines()[1].strip() in new and new.endswith("tail\n")
    assert gen.main(["--check", "--file", str(doc)]) == 0


def test_render_without_markers_is_an_error():
    gen = _generator()
    with pytest.raises(gen.MarkersMissing):
        gen.render("no markers here")


def test_the_repository_stands_alone():
    """README, docs/ and the package point at nothing outside the repository."""
    offenders = []
    for path in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "reconciler").rglob("*.py")]:
        if "../shared" in path.read_text(encoding="utf-8"):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_every_setting_is_documented_in_the_contract():
    from reconciler.settings import _KEYS

    text = (ROOT / "docs" / "interface.md").read_text(encoding="utf-8")
    assert [k for k in _KEYS if f"`{k}`" not in text] == []


def test_docs_links_resolve():
    import re

    for doc in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_shell_completion_is_generated():
    import os
    import subprocess
    import sys

    env = {**os.environ, "_RECONCILER_COMPLETE": "bash_source"}
    out = subprocess.run([sys.executable, "-m", "reconciler"], env=env, capture_output=True, text=True, timeout=30)
    assert "_reconciler_completion" in out.stdout, out.stdout + out.stderr
