"""When the incremental watermark may move: the rule that keeps every record (reliability
review D3, D4, D13), against a source whose records change between and during runs.

The source here is an API listed in ascending `updated_at`, filtered by `since`
(inclusive or exclusive), in every pagination style; it serves through
httpx.MockTransport, so a test can change records between any two requests.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from conftest import whole, write_pipeline_file
from runner.config import load_pipeline
from runner.engine import StopFlag, run
from runner.errors import Interrupted
from runner.result import RunResult
from runner.state import open_store

PER_PAGE = 10


class SortedApi:
    """Records sorted by updated_at (then id); `since` filters; four pagination styles."""

    def __init__(self, count: int, *, exclusive: bool = False) -> None:
        self.exclusive = exclusive
        self.clock = 0
        self.records: dict[int, dict[str, Any]] = {}
        for i in range(1, count + 1):
            self.touch(i)
        self.on_request: Callable[[int], None] = lambda n: None
        self.requests = 0

    def touch(self, record_id: int, *, at: int | None = None, name: str | None = None) -> None:
        """Create or change a record; it gets the newest updated_at (or `at`)."""
        if at is None:
            self.clock += 1
            at = self.clock
        record = self.records.setdefault(record_id, {"id": record_id, "name": f"n{record_id}"})
        record["updated_at"] = f"2024-01-01T00:{at // 60:02d}:{at % 60:02d}Z"
        record["name"] = name or f"{record['name'].split('.')[0]}.{at}"

    def listing(self, since: str | None) -> list[dict[str, Any]]:
        rows = sorted(self.records.values(), key=lambda r: (r["updated_at"], r["id"]))
        if since is None:
            return rows
        return [r for r in rows if (r["updated_at"] > since if self.exclusive else r["updated_at"] >= since)]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self.on_request(self.requests)
        query = {k: v[0] for k, v in parse_qs(urlsplit(str(request.url)).query).items()}
        rows = self.listing(query.get("since"))
        style = request.url.path.strip("/")
        start = {
            "page": (int(query.get("page", "1")) - 1) * PER_PAGE,
            "offset": int(query.get("offset", "0")),
            "cursor": int(query.get("cursor", "0")),
            "next": int(query.get("at", "0")),
            "link": int(query.get("at", "0")),
        }[style]
        chunk = [dict(r) for r in rows[start : start + PER_PAGE]]
        body: dict[str, Any] = {"data": chunk}
        more = start + PER_PAGE < len(rows)
        if style == "cursor":
            body["next_cursor"] = str(start + PER_PAGE) if more else None
        if style == "next":
            since = f"&since={query['since']}" if "since" in query else ""
            body["next"] = f"/next?at={start + PER_PAGE}{since}" if more else None
        if style == "link":
            since = f"&since={query['since']}" if "since" in query else ""
            link = f'<https://api.test/link?at={start + PER_PAGE}{since}>; rel="next"' if more else ""
            return httpx.Response(200, json=chunk, headers={"Link": link} if link else {})
        return httpx.Response(200, json=body)


PAGINATION = {
    "page": {"type": "page", "size_param": "per_page", "size": PER_PAGE},
    "offset": {"type": "offset", "limit": PER_PAGE},
    "cursor": {"type": "cursor", "path": "next_cursor", "param": "cursor"},
    "next": {"type": "next_url", "path": "next"},
    "link": {"type": "link_header"},
}


def pipeline(tmp_path: Path, style: str, **incremental: Any) -> Path:
    return write_pipeline_file(
        tmp_path, "https://api.test",
        source={
            "url": f"https://api.test/{style}", "concurrency": 1, "pagination": whole(PAGINATION[style]),
            "records": "@" if style == "link" else "data",
            "incremental": {"cursor_field": "updated_at", "param": "since", **incremental},
        },
        mapping={"fields": whole({"name": "name", "updated_at": "updated_at"})},
    )


def landed(tmp_path: Path) -> dict[str, str]:
    db = sqlite3.connect(tmp_path / "out.db")
    try:
        return dict(db.execute("SELECT external_id, name FROM items").fetchall())
    finally:
        db.close()


def expected(api: SortedApi) -> dict[str, str]:
    return {str(r["id"]): r["name"] for r in api.records.values()}


def saved_watermark(path: Path) -> Any:
    store = open_store(load_pipeline(path).state, read_only=True)
    try:
        return store.watermark("test")
    finally:
        store.close()


def run_interrupted_after(path: Path, api: SortedApi, pages: int) -> RunResult:
    """A run stopped (as by SIGTERM) once `pages` pages are committed; returns its result."""
    stop = StopFlag()

    def progress(counts: Any, committed: int, elapsed: float) -> None:
        if committed >= pages:
            stop.stop("SIGTERM")

    with pytest.raises(Interrupted) as caught:
        run(path, transport=httpx.MockTransport(api), stop=stop, on_progress=progress)
    assert caught.value.result is not None
    return caught.value.result


@pytest.mark.parametrize("style", sorted(PAGINATION))
def test_records_that_change_between_a_kill_and_the_resume_are_read_by_the_run_after(
    tmp_path: Path, style: str
) -> None:
    """D3: after 4 of 20 pages, the 10 earliest (committed) records change and move to the end:
    every later record shifts back, so the resumed run skips those that slid onto page 4. It
    keeps the watermark its interrupted run started from; the run after it reads them."""
    api = SortedApi(200)
    path = pipeline(tmp_path, style)
    assert run(path, transport=httpx.MockTransport(api)).counts.created == 200
    for i in range(1, 201):
        api.touch(i)  # every record changes once: the next run has 200 to read
    before = saved_watermark(path)
    run_interrupted_after(path, api, 4)
    for i in range(1, 11):
        api.touch(i)  # the source changes while the run is down
    resumed = run(path, transport=httpx.MockTransport(api))
    assert resumed.resumed and saved_watermark(path) == before
    after = run(path, transport=httpx.MockTransport(api))
    assert not after.resumed
    assert landed(tmp_path) == expected(api)
    assert saved_watermark(path) == max(r["updated_at"] for r in api.records.values())


@pytest.mark.parametrize("style", ["page", "offset"])
def test_records_that_change_during_a_run_are_read_again_with_lookback(tmp_path: Path, style: str) -> None:
    """D3 without a crash: records change while one run reads page by page; with a lookback
    that covers the run, the next run reads the window again and ends exact."""
    api = SortedApi(200)
    path = pipeline(tmp_path, style, lookback=3600)

    def change_early_records(n: int) -> None:
        if n == 5:
            for i in range(1, 11):
                api.touch(i)

    api.on_request = change_early_records
    run(path, transport=httpx.MockTransport(api))
    api.on_request = lambda n: None
    second = run(path, transport=httpx.MockTransport(api))
    assert landed(tmp_path) == expected(api)
    assert second.counts.processed > 0


def test_a_limit_keeps_the_checkpoint_and_the_watermark_so_nothing_is_skipped(tmp_path: Path) -> None:
    """D4: max_pages stops paging after 3 of 10 pages of an API NOT sorted by the cursor: the
    watermark does not move and the checkpoint stays; the next runs go on until every record
    is read (before: 70 of 100 never read, every run exit 0)."""
    api = SortedApi(100)
    api.listing = lambda since: sorted(api.records.values(), key=lambda r: -r["id"])  # type: ignore[method-assign]
    path = write_pipeline_file(
        tmp_path, "https://api.test",
        source={"url": "https://api.test/page", "concurrency": 1, "pagination": whole(PAGINATION["page"]),
                "limits": {"max_pages": 3}, "incremental": {"cursor_field": "updated_at", "param": "since"}},
    )
    results = [run(path, transport=httpx.MockTransport(api)) for _ in range(4)]
    assert [r.stopped_by for r in results] == ["max_pages", "max_pages", "max_pages", None]
    assert [r.counts.created for r in results] == [30, 30, 30, 10]
    assert len(landed(tmp_path)) == 100


def test_order_asc_moves_the_watermark_at_a_limit_and_lookback_covers_equal_timestamps(tmp_path: Path) -> None:
    """D4/D13 with `order: asc`: a limit saves the greatest committed value and the next run
    starts fresh from it; against an exclusive `since`, records sharing the boundary's
    timestamp are kept by `lookback` (before: 15 of 40 lost)."""
    api = SortedApi(0, exclusive=True)
    for i in range(1, 41):
        api.touch(i, at=(i + 4) // 5)  # five records per timestamp
    path = write_pipeline_file(
        tmp_path, "https://api.test",
        source={"url": "https://api.test/cursor", "concurrency": 1, "pagination": whole(PAGINATION["cursor"]),
                "limits": {"max_items": 12},
                "incremental": {"cursor_field": "updated_at", "param": "since", "order": "asc", "lookback": 1}},
    )
    for _ in range(8):
        result = run(path, transport=httpx.MockTransport(api))
        if result.stopped_by is None:
            break
    assert landed(tmp_path) == expected(api)


def test_a_record_whose_cursor_is_not_a_timestamp_fails_alone(tmp_path: Path) -> None:
    """D9: one record's updated_at is "yesterday": it fails alone (exit 3), the others land,
    and it neither moves nor holds the watermark (before: every run failed, nothing written)."""
    api = SortedApi(30)
    api.records[7]["updated_at"] = "yesterday"
    path = pipeline(tmp_path, "page")
    result = run(path, transport=httpx.MockTransport(api))
    assert (result.status, result.counts.created, result.counts.failed) == ("partial", 29, 1)
    assert saved_watermark(path) == max(r["updated_at"] for r in api.records.values() if r["id"] != 7)
