"""How a run ends when a part of it fails: the defects the 2026-12-01 code review reproduced.

Each test here failed before its fix: the watermark passed records the http target
refused; a full disk ended in a raw OSError and a run stuck at `running`; a target
opened before the page loop leaked when the run failed before it; a target failure
waited out another page's Retry-After; SIGTERM's exit code and `.result` on early errors.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import whole, write_pipeline_file
from runner import targets as targets_module
from runner.dev.fake_crm import FakeCrm
from runner.engine import StopFlag, run
from runner.errors import ConfigError, EtlError, Interrupted, LockError, StateError, TargetError
from runner.state import open_store
from runner.timestamps import step_back

NO_WAIT = {"sleep": lambda seconds: None}


def runs_table(state: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(state)
    try:
        return db.execute("SELECT run_id, status FROM runs ORDER BY started_at").fetchall()
    finally:
        db.close()


def test_records_the_http_target_refused_hold_the_watermark_back_and_come_back_next_run(
    tmp_path: Path, demo_api: Any
) -> None:
    """Review 5.1: an incremental pipeline into a CRM that refuses the two records with the
    oldest updated_at: run 1 is partial; the watermark stays just before the oldest refused record,
    so once the CRM accepts them the next run sends both (before the fix: never again)."""
    api = demo_api(50)
    oldest = sorted(api.records, key=lambda r: r["updated_at"])[:2]
    refused = {r["id"] for r in oldest}
    crm = FakeCrm(fail_status_for=lambda body: (422, "refused") if body.get("id") in refused else None)
    with crm:
        path = write_pipeline_file(
            tmp_path, api.base_url,
            source={"incremental": {"cursor_field": "updated_at", "param": "updated_since"}},
            mapping={"fields": {"id": "id", "updated_at": "updated_at"}},
            target={"__replace__": True, "type": "http", "base_url": crm.base_url,
                    "upsert": {"method": "PUT", "path": "/contacts/by-key/{external_id}"}},
        )
        first = run(path, **NO_WAIT)
        assert (first.status, first.counts.created, first.counts.failed) == ("partial", 48, 2)
        store = open_store(load_state(path))
        try:
            saved = store.watermark("test")
        finally:
            store.close()
        assert saved == step_back(min(r["updated_at"] for r in oldest))
        crm.fail_status_for = None
        second = run(path, **NO_WAIT)
    assert (second.status, second.counts.created, second.counts.failed) == ("success", 2, 0)
    assert len(crm.objects) == 50


def load_state(path: Path) -> Any:
    from runner.config import load_pipeline

    return load_pipeline(path).state


def test_a_jsonl_target_on_a_full_disk_fails_the_run_in_one_error_and_records_it(
    tmp_path: Path, demo_api: Any
) -> None:
    """Review 5.2: /dev/full takes the write into its buffer, then fails the flush: one
    TargetError (no raw OSError from close), and the run row says failed, not running."""
    api = demo_api(3)
    target = {"__replace__": True, "type": "jsonl", "path": "/dev/full"}
    path = write_pipeline_file(tmp_path, api.base_url, target=target)
    with pytest.raises(TargetError) as caught:
        run(path, **NO_WAIT)
    assert "jsonl target" in str(caught.value) and caught.value.result is not None
    assert caught.value.result.status == "failed"
    assert [status for _, status in runs_table(tmp_path / "state.db")] == ["failed"]


class CountingTargets:
    """Wraps open_target: counts the targets opened and closed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened = self.closed = 0
        real = targets_module.open_target

        def opening(*args: Any, **kwargs: Any) -> Any:
            target = real(*args, **kwargs)
            self.opened += 1
            close = target.close

            def closing() -> None:
                self.closed += 1
                close()

            target.close = closing  # type: ignore[method-assign]
            return target

        monkeypatch.setattr("runner.engine.open_target", opening)


def test_a_target_opened_before_the_page_loop_is_closed_when_the_run_fails_before_it(
    tmp_path: Path, demo_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 5.3: start_run raising StateError after the target was opened: it is closed."""
    api = demo_api(10)
    counting = CountingTargets(monkeypatch)
    target = {"__replace__": True, "type": "jsonl", "path": "{tmp}/out.jsonl"}
    path = write_pipeline_file(tmp_path, api.base_url, target=target)

    def refuse(self: Any, *args: Any) -> None:
        raise StateError("state store: disk I/O error")

    monkeypatch.setattr("runner.state.sqlite.SqliteStateStore.start_run", refuse)
    with pytest.raises(StateError):
        run(path, **NO_WAIT)
    assert (counting.opened, counting.closed) == (1, 1)


def test_the_engine_opens_no_target_when_the_writer_process_writes(
    tmp_path: Path, demo_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 3: with the writer process, the engine opened the target too (one more
    connection per run); now only the writer does."""
    api = demo_api(300)
    counting = CountingTargets(monkeypatch)
    result = run(write_pipeline_file(tmp_path, api.base_url), **NO_WAIT)
    assert result.counts.created == 300 and counting.opened == 0


def test_a_target_failure_does_not_wait_out_another_pages_retry_after(tmp_path: Path) -> None:
    """Review 5.6: pages 2-4 answer 503 with Retry-After: 4 while the target fails on page 1
    (its answer comes after 0.5 s): the run returns at once, not after the 4 s wait."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "crm.test":
            time.sleep(0.5)  # the source's pages 2-4 are in their Retry-After waits by now
            return httpx.Response(401, json={"error": "token revoked"})
        page = int(request.url.params.get("page", "1"))
        seen.append(f"page {page}")
        if page == 1:
            return httpx.Response(200, json={"data": [{"id": 1, "name": "a"}], "total_pages": 4})
        return httpx.Response(503, headers={"Retry-After": "4"}, json={"error": "busy"})

    path = write_pipeline_file(
        tmp_path, "https://api.test",
        source={"url": "https://api.test/items", "concurrency": 4,
                "pagination": {"__replace__": True, "type": "page", "total_pages": "total_pages"}},
        target={"__replace__": True, "type": "http", "base_url": "https://crm.test",
                "upsert": {"method": "PUT", "path": "/contacts/{external_id}"}},
    )
    started = time.monotonic()
    with pytest.raises(EtlError, match="401"):
        run(path, transport=httpx.MockTransport(handler))
    elapsed = time.monotonic() - started
    assert "page 2" in seen  # the waits were under way
    assert elapsed < 3.0, f"the run waited {elapsed:.1f} s for a Retry-After after it had failed"


def test_sigterm_gives_exit_code_143_on_the_result_as_on_the_command_line(tmp_path: Path, demo_api: Any) -> None:
    """Review 5.7: RunResult.exit_code said 130 for SIGTERM where `etl run` exits 143."""
    api = demo_api(500)
    stop = StopFlag()
    stop.stop("SIGTERM")
    with pytest.raises(Interrupted) as caught:
        run(write_pipeline_file(tmp_path, api.base_url), stop=stop, **NO_WAIT)
    assert caught.value.exit_code == 143
    assert caught.value.result is not None and caught.value.result.exit_code == 143


def test_errors_before_the_run_begins_carry_a_result_too(tmp_path: Path, demo_api: Any) -> None:
    """Review 5.9: a LockError, or a StateError opening the store, had no `.result`."""
    api = demo_api(10)
    path = write_pipeline_file(tmp_path, api.base_url)
    holder = open_store(load_state(path))
    try:
        with holder.lock("test", "other-run"), pytest.raises(LockError) as locked:
            run(path, **NO_WAIT)
    finally:
        holder.close()
    assert locked.value.result is not None and locked.value.result.exit_code == 4
    assert locked.value.result.status == "failed"

    (tmp_path / "file").write_text("not a directory")
    broken = write_pipeline_file(tmp_path, api.base_url, file="broken.yaml", state={"path": "{tmp}/file/state.db"})
    with pytest.raises(StateError) as unopened:
        run(broken, **NO_WAIT)
    assert unopened.value.result is not None and unopened.value.result.exit_code == 1


def test_max_seconds_ends_a_run_inside_a_rate_limit_wait_as_a_limit(tmp_path: Path, demo_api: Any) -> None:
    """Reliability D7: requests_per_second 0.001 made the second request wait 1,000 s past a
    max_seconds of 2; the run now ends at once with stopped_by=max_seconds, the first page kept."""
    api = demo_api(300)
    path = write_pipeline_file(
        tmp_path, api.base_url,
        source={"rate_limit": {"requests_per_second": 0.001}, "limits": {"max_seconds": 2}, "concurrency": 1},
    )
    started = time.monotonic()
    result = run(path)
    assert time.monotonic() - started < 10
    assert (result.status, result.stopped_by, result.counts.created) == ("success", "max_seconds", 100)


def test_without_the_postgres_driver_a_postgres_target_fails_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review (new user): without psycopg, a postgres target printed two tracebacks; now one
    line naming the extra, exit 2, and no request is sent (the writer process would only
    have found out after the first fetch)."""
    monkeypatch.setattr("runner.db.postgres_driver_installed", lambda: False)
    sent: list[httpx.Request] = []
    path = write_pipeline_file(
        tmp_path, "https://api.test",
        target={"__replace__": True, "type": "postgres", "dsn": "postgresql://u@127.0.0.1:1/db", "table": "items"},
    )
    with pytest.raises(ConfigError) as caught:
        run(path, transport=httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(500)))
    assert str(caught.value) == "the postgres target needs the PostgreSQL driver: pip install 'etl-runner[postgres]'"
    assert caught.value.exit_code == 2 and sent == []


@pytest.mark.parametrize(
    "checkpoint",
    ["not json", '{"next": 5, "pages": 1}', '{"next": {"url": "http://x/items/page"}, "pages": 3}', "[]"],
    ids=["not-json", "next-not-a-request", "no-page-param", "a-list"],
)
def test_a_corrupt_checkpoint_is_one_state_error_naming_the_way_out(
    tmp_path: Path, demo_api: Any, checkpoint: str
) -> None:
    """Reliability D10: a checkpoint row that is not JSON, or not one, gave a JSONDecodeError,
    TypeError or KeyError traceback; now one StateError that says --restart or reset."""
    api = demo_api(30)
    path = write_pipeline_file(tmp_path, api.base_url, target=whole({"type": "jsonl", "path": "{tmp}/o.jsonl"}))
    assert run(path, **NO_WAIT).counts.created == 30
    db = sqlite3.connect(tmp_path / "state.db")
    with db:
        db.execute("UPDATE pipelines SET checkpoint=?", (checkpoint,))
    db.close()
    with pytest.raises(StateError, match="--restart") as caught:
        run(path, **NO_WAIT)
    assert caught.value.result is not None and caught.value.result.exit_code == 1
    assert run(path, restart=True, **NO_WAIT).status == "success"


def test_the_first_sigterm_ends_a_run_whose_next_page_is_slow(tmp_path: Path) -> None:
    """Issue 14: the first SIGTERM always ends a run. Page 2 takes 20 s to answer; a stop
    after page 1 is committed ends the run at once (it used to wait for the page)."""
    stop, release = StopFlag(), threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("page", "1") != "1":
            release.wait(20)
        return httpx.Response(200, json={"data": [{"id": int(request.url.params.get("page", "1")), "name": "a"}]})

    path = write_pipeline_file(
        tmp_path, "https://api.test",
        source={"url": "https://api.test/items", "concurrency": 1, "pagination": whole({"type": "page"})},
        target=whole({"type": "jsonl", "path": "{tmp}/out.jsonl"}),
    )
    started = time.monotonic()
    with pytest.raises(Interrupted) as caught:
        run(path, transport=httpx.MockTransport(handler), stop=stop,
            on_progress=lambda counts, pages, elapsed: stop.stop("SIGTERM"))
    elapsed = time.monotonic() - started
    release.set()  # the abandoned fetch ends; its thread with it
    for thread in threading.enumerate():
        if thread.name == "etl-prefetch":
            thread.join(5)
    assert elapsed < 5
    assert caught.value.result is not None and caught.value.result.counts.created == 1


@pytest.mark.parametrize("target", ["sqlite", "jsonl"])
def test_a_record_nested_500_deep_ends_the_run_with_one_error_not_a_hang(tmp_path: Path, target: str) -> None:
    """Reliability D1: one record 500 levels deep hung a database run forever (the plan never
    reached the writer, which the engine then waited for) and gave a RecursionError with the
    jsonl target; now the response is refused (deeper than 200 levels): exit 1, at once."""
    deep = '"leaf"'
    for _ in range(500):
        deep = '{"a": ' + deep + "}"
    body = '{"data": [{"id": 1, "name": "x", "v": ' + deep + "}]}"
    targets = {"sqlite": {"type": "sqlite", "path": "{tmp}/out.db", "table": "items"},
               "jsonl": {"type": "jsonl", "path": "{tmp}/out.jsonl"}}
    path = write_pipeline_file(
        tmp_path, "https://api.test",
        source={"url": "https://api.test/items", "pagination": whole({"type": "none"})},
        mapping={"fields": whole({"name": "name", "v": "v"})}, target=whole(targets[target]),
    )
    started = time.monotonic()
    with pytest.raises(EtlError, match="nested deeper than 200 levels") as caught:
        run(path, transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body.encode())))
    assert time.monotonic() - started < 10
    assert caught.value.result is not None and caught.value.result.exit_code == 1
