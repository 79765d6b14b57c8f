"""Regenerate the generated blocks of ``docs/`` from the code they describe.

Today there is one: the run state graph in ``docs/architecture.md``, between the
markers ``<!-- state-graph:begin -->`` and ``<!-- state-graph:end -->``, built
from :func:`states.machine.mermaid` (the single table of states and transitions).

    python docs/generate.py          # rewrite the block in place
    python docs/generate.py --check  # exit 1 when the block is out of date (CI)

``tests/test_docs.py`` runs the same comparison, so the doc cannot drift.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ARCHITECTURE = DOCS / "architecture.md"
BEGIN = "<!-- state-graph:begin -->"
END = "<!-- state-graph:end -->"


class MarkersMissing(ValueError):
    """The document lacks the begin/end markers (or has them out of order)."""


def state_graph_block() -> str:
    """The block that belongs between the markers: a fenced Mermaid diagram."""
    sys.path.insert(0, str(DOCS.parent))
    from states.machine import mermaid

    return "```mermaid\n" + mermaid().rstrip("\n") + "\n```"


def render(text: str, block: str | None = None) -> str:
    """``text`` with whatever stands between the markers replaced by ``block`` (default: the state graph)."""
    start = text.find(BEGIN)
    end = text.find(END)
    if start < 0 or end < 0 or end < start:
        raise MarkersMissing(f"expected {BEGIN} ... {END} in the document")
    body = state_graph_block() if block is None else block
    return text[: start + len(BEGIN)] + "\n" + body + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the document is out of date")
    parser.add_argument("--file", type=Path, default=ARCHITECTURE, help="document to update (default: docs/architecture.md)")
    args = parser.parse_args(argv)
    current = args.file.read_text(encoding="utf-8")
    wanted = render(current)
    if current == wanted:
        print(f"{args.file}: up to date")
        return 0
    if args.check:
        print(f"{args.file}: state graph out of date; run: python docs/generate.py", file=sys.stderr)
        return 1
    args.file.write_text(wanted, encoding="utf-8")
    print(f"{args.file}: state graph rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
