"""End-to-end runs of the engine against the local demo API over real HTTP on 127.0.0.1."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import whole, write_pipeline_file
from runner.dev.demo_api import DemoApi
from runner.engine import StopFlag, run
from runner.result import RunResult
from runner.errors import FetchError, Interrupted
from runner.state.sqlite import SqliteStateStore

NO_WAIT = {"sleep": lambda seconds: None}
FIELDS = {"name": "name", "zip": "address.zip", "tags": "tags", "updated_at": "updated_at"}


@pytest.fixture
def api(demo_api: Any) -> DemoApi:
    return demo_api(1000)


def write_pipeline(tmp_path: Path, base_url: str, **overrides: Any) -> Path:
    """A `page` pipeline `demo-test` over the demo API into `out.db`; `overrides` as conftest's builder takes them."""
    defaults = {
        "name": "demo-test",
        "source": {"params": {"limit": 100}},
        "mapping": {"fields": whole(FIELDS)},
    }
    return write_pipeline_file(tmp_path, base_url, defaults=defaults, **overrides)


def table(tmp_path: Path) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(tmp_path / "out.db")
    try:
        return db.execute("SELECT * FROM items ORDER BY CAST(external_id AS INTEGER)").fetchall()
    finally:
        db.close()


def counts(result: RunResult) -> tuple[int, int, int, int, int]:
    c = result.counts
    return c.processed, c.created, c.updated, c.skipped, c.failed


def test_ten_thousand_records_land_once_and_a_rerun_writes_nothing(tmp_path: Path) -> None:
    """10,000 records are created once; the second run skips all of them and writes nothing."""
    with DemoApi(records=10_000) as server:
        path = write_pipeline(tmp_path, server.base_url)
        first = run(path, **NO_WAIT)
        assert (first.status, counts(first)) == ("success", (10_000, 10_000, 0, 0, 0))
        assert first.pages == 100
        rows = table(tmp_path)
        assert len(rows) == 10_000 and len({r[0] for r in rows}) == 10_000
        before = (tmp_path / "out.db").read_bytes()
        second = run(path, **NO_WAIT)
    assert counts(second) == (10_000, 0, 0, 10_000, 0)
    assert (tmp_path / "out.db").read_bytes() == before


def test_values_keep_their_types_in_sqlite(tmp_path: Path, api: DemoApi) -> None:
    """A zip with a leading zero stays a string and tags land as JSON text."""
    run(write_pipeline(tmp_path, api.base_url), **NO_WAIT)
    db = sqlite3.connect(tmp_path / "out.db")
    zips = {row[0] for row in db.execute("SELECT typeof(zip) FROM items")}
    tags = db.execute("SELECT tags FROM items LIMIT 1").fetchone()[0]
    db.close()
    assert zips == {"text"}
    assert isinstance(json.loads(tags), list)


def test_three_upstream_changes_are_three_updates(tmp_path: Path, api: DemoApi) -> None:
    """After three records change upstream, the next run updates exactly those three."""
    path = write_pipeline(tmp_path, api.base_url)
    run(path, **NO_WAIT)
    for record_id in (5, 500, 999):
        api.update_record(record_id, name=f"changed {record_id}")
    result = run(path, **NO_WAIT)
    assert counts(result) == (1000, 0, 3, 997, 0)
    names = {r[0]: r[1] for r in table(tmp_path)}
    assert names["500"] == "changed 500" and names["4"] != "changed 4"


def test_new_field_adds_a_column_and_updates_every_row(tmp_path: Path, api: DemoApi) -> None:
    """A field added to the mapping adds its column; every record is updated once to fill it."""
    run(write_pipeline(tmp_path, api.base_url), **NO_WAIT)
    result = run(write_pipeline(tmp_path, api.base_url, mapping={"fields": {"city": "address.city"}}), **NO_WAIT)
    assert counts(result) == (1000, 0, 1000, 0, 0)
    assert all(row[-1] for row in table(tmp_path))


def test_dry_run_changes_no_byte_and_prints_each_write(tmp_path: Path, api: DemoApi) -> None:
    """A dry run prints one jsonl line per intended write and leaves every file as it was."""
    path = write_pipeline(tmp_path, api.base_url)
    out = io.StringIO()
    fresh = run(path, dry_run=True, stdout=out, **NO_WAIT)
    assert fresh.dry_run and counts(fresh)[:2] == (1000, 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yaml"]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 1000 and lines[0]["op"] == "create" and set(lines[0]) == {"op", "external_id", "record"}
    run(path, **NO_WAIT)
    api.update_record(7, name="dry")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    out = io.StringIO()
    result = run(path, dry_run=True, stdout=out, **NO_WAIT)
    assert counts(result) == (1000, 0, 1, 999, 0)
    assert [json.loads(line)["external_id"] for line in out.getvalue().splitlines()] == ["7"]
    assert json.loads(out.getvalue())["op"] == "update"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_failed_records_are_counted_kept_and_the_run_goes_on(tmp_path: Path, api: DemoApi) -> None:
    """Records whose key maps to null fail, are kept with raw record and error, and the rest land."""
    mapping = {"external_id": "status != 'inactive' && to_string(id) || null", "filter": "@"}
    path = write_pipeline(tmp_path, api.base_url, mapping=mapping)
    result = run(path, **NO_WAIT)
    assert result.status == "partial" and result.exit_code == 3
    inactive = result.counts.failed
    assert inactive > 0 and result.counts.created == 1000 - inactive
    store = SqliteStateStore(tmp_path / "state.db")
    shown = store.show("demo-test", failed=5000)
    store.close()
    assert shown["failed_total"] == inactive
    assert all(f["raw"]["status"] == "inactive" and "null" in f["error"] for f in shown["failed"])
    assert len(table(tmp_path)) == 1000 - inactive


def test_failed_fetch_keeps_watermark_and_checkpoint(tmp_path: Path) -> None:
    """A run whose page 2 is HTML fails with exit 1, keeps page 1, and does not move the watermark."""
    incremental = {"incremental": {"cursor_field": "updated_at", "param": "updated_since"}}
    with DemoApi(records=300, faults=None) as server:
        path = write_pipeline(tmp_path, server.base_url, source=incremental)
        run(path, **NO_WAIT)
        store = SqliteStateStore(tmp_path / "state.db")
        mark = store.watermark("demo-test")
        store.close()
        assert mark is not None
    from runner.dev.demo_api import Faults

    with DemoApi(records=300, faults=Faults(html_on_pages={2})) as server:
        path = write_pipeline(tmp_path, server.base_url, source=incremental)
        with pytest.raises(FetchError) as caught:
            run(path, full_refresh=True, **NO_WAIT)
    assert caught.value.result.status == "failed" and caught.value.exit_code == 1
    assert "/items/page" in str(caught.value)
    store = SqliteStateStore(tmp_path / "state.db")
    assert store.watermark("demo-test") == mark
    assert store.show("demo-test")["runs"][0]["status"] == "failed"
    store.close()


def test_incremental_sends_the_saved_watermark(tmp_path: Path, api: DemoApi) -> None:
    """The second run sends the greatest updated_at of the first as the incremental param."""
    incremental = {"incremental": {"cursor_field": "updated_at", "param": "updated_since"}}
    path = write_pipeline(tmp_path, api.base_url, source=incremental)
    run(path, **NO_WAIT)
    store = SqliteStateStore(tmp_path / "state.db")
    mark = store.watermark("demo-test")
    store.close()
    api.request_log.clear()
    second = run(path, **NO_WAIT)
    assert second.counts.processed < 1000
    assert all("updated_since=" in entry[1] for entry in api.request_log)
    full = run(path, full_refresh=True, **NO_WAIT)
    assert full.counts.processed == 1000 and full.counts.skipped == 1000
    assert mark



def test_a_signal_cuts_a_long_retry_wait_short(tmp_path: Path) -> None:
    """A stop requested while the client waits out a long Retry-After ends the run as interrupted at once."""
    import threading
    import time as clock

    import httpx

    def always_limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "60"}, json={"error": "slow down"})

    path = write_pipeline(tmp_path, "http://api.test")
    flag = StopFlag()
    timer = threading.Timer(0.3, flag.stop, args=("SIGTERM",))
    timer.start()
    started = clock.monotonic()
    with pytest.raises(Interrupted) as caught:
        run(path, stop=flag, transport=httpx.MockTransport(always_limited))
    timer.join()
    assert clock.monotonic() - started < 10
    assert caught.value.exit_code == 143 and caught.value.result.status == "interrupted"
