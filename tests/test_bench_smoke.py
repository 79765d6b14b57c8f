"""Smoke test of the benchmark: ``python -m bench.run --quick`` runs end to end and reports every action.

It drives the real reconciler against the doubles (100 actions, a 100-action
backlog, 1,000 completed actions of history), so a change that breaks the
pipeline under load - or the benchmark itself - shows here. It checks that the
work got done and the report is complete, not the timing targets (CI machines
vary); those are for ``docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], str]:
    out = tmp_path_factory.mktemp("bench") / "BENCHMARKS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=110,
    )
    return proc, out.read_text(encoding="utf-8") if out.exists() else ""


def test_quick_bench_succeeds_and_writes_the_report(quick_report):
    proc, report = quick_report
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report.startswith("# Benchmarks")
    for needle in ("## Machine", "CPU:", "memory:", "Python", "| metric | measured | target | verdict |"):
        assert needle in report


def test_quick_bench_reports_every_action(quick_report):
    proc, report = quick_report
    assert "(100/100 reported)" in report, proc.stdout
    assert "backlog 100 (capacity 20, max_in_flight 50): all reported" in report
    assert "ERROR" not in proc.stdout


def test_quick_backlog_never_exceeds_the_limits(quick_report):
    proc, _ = quick_report
    line = next(l for l in proc.stdout.splitlines() if l.startswith("| backlog: max in flight"))
    assert line.rstrip().endswith("| PASS |"), line


def test_quick_idle_pass_and_history_are_measured(quick_report):
    proc, _ = quick_report
    assert "| idle pass, 1000 completed actions (median of 20) |" in proc.stdout
    assert "| SQLite size at 1000 runs |" in proc.stdout
