"""Which sidecar runs (reproduce, triage, verify) the project's bug reports ask for.

Pure logic, no I/O: the loop scans the project repo's issues (incrementally, ``state=all``,
see :class:`IssueIndex`), asks :func:`wants` what applies to each open ``bug-report``, and
:func:`to_start` which of those become new runs now. Labels are always checked here, on the
client side: the forge silently drops unknown label names from its filters.

What applies (MISSION.md, "Sidecars"), for an open issue labelled ``bug-report``:

* no outcome label (``in-progress``, ``in-triage``, ``rejected``, ``blocked``) → ``reproduce``;
* ``in-triage`` → ``triage``;
* ``in-progress`` with at least one sub-issue, all of them closed → ``verify``. A sub-issue of
  #N is an issue whose body says ``Decomposed from #N``, matched exactly: ``#12`` is neither
  ``#123`` nor ``#1``;
* ``blocked`` or ``rejected`` → nothing. ``in-triage`` together with ``in-progress`` is
  contradictory and also gets nothing until someone fixes the labels.

When an issue earns a new run (the re-run rule)
------------------------------------------------
A run of kind K for issue N is started only when

1. no run of (N, K) is active (any state but ``reported``): at most one in flight per issue and
   kind; and
2. either there is no run of (N, K) at all, or the newest one is ``reported`` **and** its
   ``trigger`` differs from the want's trigger; and
3. the cap on sidecars in flight leaves room.

The *trigger* is a short hash of what made K apply: the issue's sorted label set, its label
revision (below), and for ``verify`` the sub-issues' numbers, states and revisions. A quiet
issue therefore keeps the same trigger and is never dispatched again, whatever the run's
outcome; our own failure comment does not change it either (comments are not part of it).
It changes when someone (a human or a formula) changes the labels, when a sub-issue is added,
closed or reopened, or when the issue is closed and reopened. A run whose record has no
trigger counts as unchanged (no re-run without evidence of a change). To re-run a sidecar on
purpose: change a label, or ``reconciler retry`` the run.

The *label revision* is kept by :class:`IssueIndex`: it counts the observed changes of an
issue's label set or open/closed state. A label set alone cannot tell "bug-report" now from
"bug-report" an hour ago, after a detour through ``in-triage`` or ``blocked``; the revision can
(as far as the scans observed the detour). Without revisions (``wants(..., revisions=None)``)
the trigger is the label set alone.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from reconciler.facts import Issue
from states.machine import State
from store.models import RunRecord

BUG_LABEL = "bug-report"
"""The label that puts an issue in the sidecars' hands."""

OUTCOME_LABELS: tuple[str, ...] = ("in-progress", "in-triage", "rejected", "blocked")
"""Labels that say where a bug report stands; none of them means "not yet reproduced"."""

SIDECAR_KINDS: tuple[str, ...] = ("reproduce", "triage", "verify")
"""The sidecar run kinds, in pipeline order."""

DEFAULT_FORMULAS: Mapping[str, str] = MappingProxyType({kind: kind for kind in SIDECAR_KINDS})
"""Sidecar kind → formula name handed to the ``sidecar`` job (configurable)."""

_FORMULA_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
_DECOMPOSED = re.compile(r"Decomposed from #([0-9]+)(?![0-9])")
_RUN_ID = re.compile(r"^issue[-:]([0-9]+)[-:]([a-z]+)[-:]([0-9]+)$")
_TRIGGER_LEN = 16


@dataclass(frozen=True)
class SidecarWant:
    """One sidecar run an issue asks for, and why."""

    issue: int
    kind: str
    """``reproduce``, ``triage`` or ``verify``."""
    formula: str
    """The formula name the ``sidecar`` job runs."""
    trigger: str
    """Short hash of what made ``kind`` apply; stored in the run, compared by :func:`to_start`."""
    reason: str
    """In words, for logs and the journal."""
    seq: int = 1
    """The run's sequence number for (issue, kind); :func:`to_start` sets it (1 for the first run)."""

    @property
    def run_id(self) -> str:
        """The id of the run this want becomes (see :func:`sidecar_run_id`)."""
        return sidecar_run_id(self.issue, self.kind, self.seq)


# -- what applies ------------------------------------------------------------------------------


def parents_named(body: str) -> tuple[int, ...]:
    """Issue numbers that ``body`` says it was decomposed from (``Decomposed from #<n>``), in order."""
    found: dict[int, None] = {}
    for match in _DECOMPOSED.finditer(body or ""):
        found[int(match.group(1))] = None
    return tuple(found)


def sub_issues_of(number: int, issues: Iterable[Issue]) -> list[Issue]:
    """The issues whose body says ``Decomposed from #<number>`` (exactly that number), by number.

    An issue never counts as its own sub-issue.
    """
    subs = {i.number: i for i in issues if i.number != number and number in parents_named(i.body)}
    return [subs[n] for n in sorted(subs)]


def kind_for(issue: Issue, sub_issues: list[Issue]) -> tuple[str, str] | None:
    """The sidecar kind ``issue`` asks for and why, or None.

    ``sub_issues`` are the issue's sub-issues (:func:`sub_issues_of`); only ``verify`` reads them.
    """
    labels = set(issue.labels)
    if not _is_open(issue) or BUG_LABEL not in labels:
        return None
    if labels & {"blocked", "rejected"}:
        return None
    triage, progress = "in-triage" in labels, "in-progress" in labels
    if triage and progress:
        return None
    if triage:
        return "triage", "bug-report labelled in-triage"
    if progress:
        if not sub_issues or any(_is_open(s) for s in sub_issues):
            return None
        numbers = ", ".join(f"#{s.number}" for s in sub_issues)
        if len(sub_issues) == 1:
            return "verify", f"in-progress and its only sub-issue ({numbers}) closed"
        return "verify", f"in-progress and all {len(sub_issues)} sub-issues ({numbers}) closed"
    return "reproduce", "bug-report without an outcome label"


def trigger_of(
    issue: Issue, kind: str, sub_issues: Iterable[Issue] = (), revisions: Mapping[int, int] | None = None
) -> str:
    """Fingerprint of why ``kind`` applies to ``issue`` (see the module docstring)."""
    facts: dict[str, Any] = {"kind": kind, "labels": sorted(set(issue.labels))}
    if revisions is not None:
        facts["revision"] = revisions.get(issue.number, 0)
    if kind == "verify":
        subs = sorted(sub_issues, key=lambda s: s.number)
        facts["subs"] = [
            [s.number, s.state.lower()] + ([revisions.get(s.number, 0)] if revisions is not None else []) for s in subs
        ]
    canonical = json.dumps(facts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:_TRIGGER_LEN]


def check_formulas(formulas: Mapping[str, str]) -> None:
    """Raise ValueError unless ``formulas`` names a valid formula for every sidecar kind."""
    missing = [kind for kind in SIDECAR_KINDS if kind not in formulas]
    if missing:
        raise ValueError(f"sidecar formulas: no formula configured for {', '.join(missing)}")
    for kind in SIDECAR_KINDS:
        name = formulas[kind]
        if not isinstance(name, str) or not _FORMULA_NAME.match(name):
            raise ValueError(
                f"sidecar formulas: {kind} → {name!r} is not a formula name "
                "(letters, digits, '-', '_', '.', not starting with '.')"
            )


def wants(
    open_bug_reports: list[Issue],
    all_known: Mapping[int, Issue],
    formulas: Mapping[str, str] = DEFAULT_FORMULAS,
    *,
    revisions: Mapping[int, int] | None = None,
) -> list[SidecarWant]:
    """What every issue in ``open_bug_reports`` asks for, ordered by issue number.

    ``all_known`` is every issue known (open and closed), where sub-issues are looked up.
    ``revisions`` (from :meth:`IssueIndex.revisions`) makes the trigger see label detours.
    Issues that are not open bug reports are skipped: labels are checked here, not trusted
    from the forge's filter.
    """
    check_formulas(formulas)
    children = _children(all_known.values())
    by_number = {i.number: i for i in open_bug_reports}
    out: list[SidecarWant] = []
    for number in sorted(by_number):
        issue = by_number[number]
        subs = children.get(number, [])
        applies = kind_for(issue, subs)
        if applies is None:
            continue
        kind, reason = applies
        out.append(
            SidecarWant(
                issue=number,
                kind=kind,
                formula=formulas[kind],
                trigger=trigger_of(issue, kind, subs, revisions),
                reason=reason,
            )
        )
    return out


# -- which wants start now ---------------------------------------------------------------------


def to_start(
    wanted: list[SidecarWant], existing: Iterable[RunRecord], *, cap: int, in_flight: int
) -> tuple[list[SidecarWant], list[str]]:
    """Which of ``wanted`` become new runs now, with their ``seq`` set, and notes on those held back.

    ``existing`` is every sidecar run in the store (other kinds are ignored). ``in_flight`` is
    how many sidecar runs count against ``cap`` now; count every run not yet ``reported``
    (``pending`` included), or the new ones started this pass are not counted on the next.
    Wants are considered by issue number, then pipeline order, so the oldest issues go first.
    Only wants held back by the cap get a note: the others are simply not wanted anew, and
    a quiet tracker should not fill the log every pass.
    """
    history = _runs_by_key(existing)
    room = max(0, cap - max(0, in_flight))
    started: list[SidecarWant] = []
    notes: list[str] = []
    seen: set[tuple[int, str]] = set()
    for want in sorted(wanted, key=_want_order):
        key = (want.issue, want.kind)
        if key in seen:
            continue
        seen.add(key)
        runs = history.get(key, [])
        if not _earns_run(want, runs):
            continue
        if len(started) >= room:
            notes.append(
                f"issue #{want.issue} {want.kind} held back: cap of {cap} sidecars in flight reached"
                f" ({in_flight} in flight, {len(started)} started this pass)"
            )
            continue
        started.append(replace(want, seq=_next_seq(runs)))
    return started, notes


def sidecar_run_id(issue: int, kind: str, seq: int) -> str:
    """``issue-<n>-<kind>-<seq>``: usable as a Nomad idempotency token and Variable path.

    Only ``[a-z0-9-]`` appear (no ``:`` or ``@``, which Nomad Variable paths refuse).
    """
    if isinstance(issue, bool) or not isinstance(issue, int) or issue < 1:
        raise ValueError(f"sidecar run id: issue must be a positive integer, got {issue!r}")
    if kind not in SIDECAR_KINDS:
        raise ValueError(f"sidecar run id: kind must be one of {', '.join(SIDECAR_KINDS)}, got {kind!r}")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError(f"sidecar run id: seq must be a positive integer, got {seq!r}")
    return f"issue-{issue}-{kind}-{seq}"


def parse_sidecar_run_id(run_id: str) -> tuple[int, str, int] | None:
    """``(issue, kind, seq)`` of a sidecar run id (``issue-12-triage-2``, or the older ``issue:12:triage:2``)."""
    match = _RUN_ID.match(run_id)
    if not match or match.group(2) not in SIDECAR_KINDS:
        return None
    return int(match.group(1)), match.group(2), int(match.group(3))


def _earns_run(want: SidecarWant, runs: list[RunRecord]) -> bool:
    """The re-run rule for one (issue, kind): see the module docstring."""
    if not runs:
        return True
    if any(State(r.state) != State.REPORTED for r in runs):
        return False
    newest = max(runs, key=_run_order)
    previous = getattr(newest, "trigger", None)
    return previous is not None and previous != want.trigger


def _runs_by_key(existing: Iterable[RunRecord]) -> dict[tuple[int, str], list[RunRecord]]:
    out: dict[tuple[int, str], list[RunRecord]] = {}
    for run in existing:
        if run.kind in SIDECAR_KINDS and run.issue is not None:
            out.setdefault((run.issue, run.kind), []).append(run)
    return out


def _run_seq(run: RunRecord) -> int:
    parsed = parse_sidecar_run_id(run.id)
    return parsed[2] if parsed else 0


def _run_order(run: RunRecord) -> tuple[int, float, str]:
    return _run_seq(run), _timestamp(run.created_at) or 0.0, run.id


def _next_seq(runs: list[RunRecord]) -> int:
    return max([len(runs)] + [_run_seq(r) for r in runs]) + 1


def _want_order(want: SidecarWant) -> tuple[int, int]:
    rank = SIDECAR_KINDS.index(want.kind) if want.kind in SIDECAR_KINDS else len(SIDECAR_KINDS)
    return want.issue, rank


# -- the incremental issue index ---------------------------------------------------------------


SCAN_OVERLAP_SECONDS = 60
"""How far before a scan's start the next scan's ``since`` goes (see :meth:`IssueIndex.update`)."""


class IssueIndex:
    """The project repo's issues that matter to sidecars, merged from incremental scans.

    The loop scans ``issues(repo, state="all", since=index.since())`` (no label filter: a
    sub-issue need not carry ``bug-report``) and hands the result to :meth:`update`. Kept are
    the open bug reports and every issue (open or closed) that names a parent with
    ``Decomposed from #<n>``, so that closing a sub-issue is seen; anything else is dropped.
    The forge's ``since`` is inclusive and second-precise, so the newest issues come back on
    the next scan: merging them again is harmless.

    Per issue the index also counts *revisions*: observed changes of its label set or its
    open/closed state, including leaving or re-entering the index. They feed the sidecar
    trigger (see the module docstring). Pure and serialisable (:meth:`to_json`).
    """

    FORMAT = 1

    def __init__(self, bug_label: str = BUG_LABEL) -> None:
        self.bug_label = bug_label
        self._issues: dict[int, Issue] = {}
        self._revisions: dict[int, int] = {}
        self._since: str | None = None

    # reading

    def since(self, overlap_seconds: int = 0) -> str | None:
        """The newest ``updated_at`` seen, for the forge's ``since``; None before the first scan.

        As the forge sent it, or, with ``overlap_seconds``, that many seconds earlier (RFC 3339
        UTC), to also catch an update whose transaction committed late with an older time.
        """
        if self._since is None or overlap_seconds <= 0:
            return self._since
        stamp = _timestamp(self._since)
        if stamp is None:
            return self._since
        earlier = datetime.fromtimestamp(stamp - overlap_seconds, tz=timezone.utc)
        return earlier.strftime("%Y-%m-%dT%H:%M:%SZ")

    def get(self, number: int) -> Issue | None:
        return self._issues.get(number)

    def __contains__(self, number: object) -> bool:
        return number in self._issues

    def __len__(self) -> int:
        return len(self._issues)

    def issues(self) -> dict[int, Issue]:
        """Every kept issue by number (a copy): the ``all_known`` of :func:`wants`."""
        return dict(self._issues)

    def open_bug_reports(self) -> list[Issue]:
        """Open issues labelled with the bug label, by number."""
        return [self._issues[n] for n in sorted(self._issues) if self._relevant_as_report(self._issues[n])]

    def revision(self, number: int) -> int:
        return self._revisions.get(number, 0)

    def revisions(self) -> dict[int, int]:
        """Revision per issue (absent means 0): the ``revisions`` of :func:`wants`."""
        return dict(self._revisions)

    # merging

    def update(self, issues: Iterable[Issue], *, scan_started: float | None = None) -> None:
        """Merge one scan's results; an older copy of an issue than the one kept is ignored.

        ``scan_started`` (epoch seconds, when the scan's first page was asked for) holds the
        cursor back: a multi-page scan is one query per page, so an issue on a page already read
        can be updated while later pages are read, and a cursor moved to the newest
        ``updated_at`` *seen* would skip it for good (CONTRACTS rev. 2). The next scan starts
        at ``SCAN_OVERLAP_SECONDS`` before this one started (clock skew between us and the
        forge, and second precision), whatever the newest change seen.
        """
        for issue in issues:
            self._note_time(issue.updated_at)
            kept = self._issues.get(issue.number)
            if kept is not None and _older(issue.updated_at, kept.updated_at):
                continue
            relevant = self._relevant(issue)
            if kept is None:
                if relevant:
                    self._issues[issue.number] = issue
                continue
            if not relevant:
                del self._issues[issue.number]
                self._bump(issue.number)
                continue
            if set(kept.labels) != set(issue.labels) or _is_open(kept) != _is_open(issue):
                self._bump(issue.number)
            self._issues[issue.number] = issue
        if scan_started is not None:
            # Every change made before the scan started was on a page read after it: seen.
            self._since = datetime.fromtimestamp(scan_started - SCAN_OVERLAP_SECONDS, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def forget(self, number: int) -> bool:
        """Drop an issue the forge no longer has (deleted, or moved to another repository)."""
        if self._issues.pop(number, None) is None:
            return False
        self._bump(number)
        return True

    def _relevant_as_report(self, issue: Issue) -> bool:
        return _is_open(issue) and self.bug_label in issue.labels

    def _relevant(self, issue: Issue) -> bool:
        return self._relevant_as_report(issue) or bool(parents_named(issue.body))

    def _bump(self, number: int) -> None:
        self._revisions[number] = self._revisions.get(number, 0) + 1

    def _note_time(self, updated_at: str) -> None:
        stamp = _timestamp(updated_at)
        if stamp is None:
            return
        current = _timestamp(self._since) if self._since else None
        if current is None or stamp > current:
            self._since = updated_at

    # persistence

    def to_json(self) -> str:
        """The index as one JSON document, for the store's key-value table."""
        return json.dumps(
            {
                "format": self.FORMAT,
                "bug_label": self.bug_label,
                "since": self._since,
                "issues": [
                    {
                        "number": i.number,
                        "title": i.title,
                        "body": i.body,
                        "state": i.state,
                        "labels": list(i.labels),
                        "updated_at": i.updated_at,
                    }
                    for _, i in sorted(self._issues.items())
                ],
                "revisions": {str(n): r for n, r in sorted(self._revisions.items())},
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "IssueIndex":
        """Rebuild an index from :meth:`to_json`; ValueError when the document is not one."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != cls.FORMAT:
                raise ValueError(f"unknown format {data.get('format') if isinstance(data, dict) else None!r}")
            index = cls(bug_label=str(data["bug_label"]))
            since = data.get("since")
            index._since = str(since) if since is not None else None
            for row in data["issues"]:
                issue = Issue(
                    number=int(row["number"]),
                    title=str(row["title"]),
                    body=str(row["body"]),
                    state=str(row["state"]),
                    labels=tuple(str(label) for label in row["labels"]),
                    updated_at=str(row["updated_at"]),
                )
                index._issues[issue.number] = issue
            index._revisions = {int(n): int(r) for n, r in data["revisions"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"saved issue index is unreadable: {exc}") from exc
        return index


# -- small helpers -----------------------------------------------------------------------------


def _is_open(issue: Issue) -> bool:
    return issue.state.lower() == "open"


def _children(issues: Iterable[Issue]) -> dict[int, list[Issue]]:
    """Parent number → its sub-issues (by number), in one pass over ``issues``."""
    out: dict[int, dict[int, Issue]] = {}
    for issue in issues:
        for parent in parents_named(issue.body):
            if parent != issue.number:
                out.setdefault(parent, {})[issue.number] = issue
    return {p: [subs[n] for n in sorted(subs)] for p, subs in out.items()}


def _timestamp(value: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (naive means UTC); None when unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _older(candidate: str, kept: str) -> bool:
    """True when ``candidate`` is known to be older than ``kept`` (unreadable times never are)."""
    a, b = _timestamp(candidate), _timestamp(kept)
    return a is not None and b is not None and a < b
