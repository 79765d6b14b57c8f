"""The issue scan at real sizes, against the Forgejo double (``GET /repos/{o}/{r}/issues``:
``X-Total-Count``, ``Link``, ``limit`` capped at 50, ``since`` inclusive on ``updated_at``,
newest created first, one query per page - ``routers/api/v1/repo/issue.go`` ``ListIssues``)."""

from __future__ import annotations

import time

import pytest
import requests

from reconciler.clients.forge import ForgeClient
from doubles.forge import ForgeDouble
from reconciler.settings import ForgeSettings
from reconciler.sidecars import SCAN_OVERLAP_SECONDS, IssueIndex

pytestmark = pytest.mark.timeout(300)
PROJECT = "factory/project"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(time.time())


@pytest.fixture
def forge(tmp_path, clock):
    f = ForgeDouble(clock=clock).start()
    f.add_user("factory")
    f.add_repo(PROJECT, tmp_path / "project.git")
    yield f
    f.stop()


def client(forge: ForgeDouble, session: requests.Session | None = None) -> ForgeClient:
    settings = ForgeSettings(url=forge.address, token=forge.add_user("reconciler"), repo=PROJECT, timeout=30.0)
    return ForgeClient(settings, session=session, sleep=lambda _: None)


def test_a_12000_issue_tracker_scan_completes(forge):
    """More than the old 200-page cap (10,000 issues at 50 a page): the first scan must not fail for good."""
    for n in range(12_000):
        forge.add_issue(PROJECT, title=f"issue {n}", labels=["bug-report"] if n % 7 == 0 else ())
    started = time.monotonic()
    issues = client(forge).issues(PROJECT, state="all")
    assert len(issues) == 12_000
    assert {i.number for i in issues} == set(range(1, 12_001))
    print(f"12,000-issue scan: {time.monotonic() - started:.1f}s")


def test_a_relabel_during_a_multi_page_scan_is_seen_within_two_scans(forge, clock):
    """Issue #150 is on page 1 (newest created first); it is relabelled after page 1 was read, and
    issue #10 (page 3) a second later, before page 3 is read. A cursor moved to the newest
    ``updated_at`` seen (#10's) would skip #150's change for good."""
    for n in range(150):
        forge.add_issue(PROJECT, title=f"issue {n}")
    clock.now += 3600  # the scans happen an hour after the issues were filed
    pages: list[int] = []

    def on_page(resp: requests.Response, *args, **kwargs):
        if "/issues" in resp.url and "page=" in resp.url:
            page = int(resp.url.split("page=")[1].split("&")[0])
            pages.append(page)
            if page == 1 and len(pages) == 1:
                forge.set_labels(PROJECT, 150, ["bug-report"])
                clock.now += 1
                forge.set_labels(PROJECT, 10, ["bug-report"])
        return resp

    session = requests.Session()
    session.hooks["response"].append(on_page)
    forge_client = client(forge, session)
    index = IssueIndex()
    started = clock.now
    index.update(forge_client.issues(PROJECT, state="all", since=index.since()), scan_started=started)
    assert pages[:3] == [1, 2, 3], pages
    assert index.get(10) is not None and index.get(150) is None  # #150 was read before its relabel
    clock.now += 5
    index.update(forge_client.issues(PROJECT, state="all", since=index.since()), scan_started=clock.now)
    assert index.get(150) is not None and "bug-report" in index.get(150).labels


def test_the_cursor_stays_an_overlap_behind_the_scan_start(clock):
    index = IssueIndex()
    index.update([], scan_started=clock.now)
    from datetime import datetime, timezone

    expected = datetime.fromtimestamp(clock.now - SCAN_OVERLAP_SECONDS, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert index.since() == expected
    assert IssueIndex.from_json(index.to_json()).since() == expected  # persisted
    index.update([], scan_started=clock.now + 30)
    assert index.since() > expected  # moves on with the scans, always an overlap behind
