"""Deletes (issue 18): `mapping.deleted` markers and `target.deletes` (missing keys after a
complete read, hard or soft, the max_fraction guard) against real local servers, SQLite
(the writer process and ETL_WRITER=inline), the jsonl and dry-run printers, and the http
target on the fake CRM, including a kill -9 in the middle of the delete phase."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner

from conftest import whole, write_pipeline_file
from runner import EtlError, run
from runner.cli import main as cli
from runner.config.load import check_file
from runner.dev.fake_crm import FakeCrm
from runner.dev.localserver import Handler, LocalServer
from runner.state.sqlite import SqliteStateStore


class _CatalogHandler(Handler):
    do_GET = Handler.dispatch


class Catalog(LocalServer):
    """A stand-in list API: `GET /items?page=&per_page=[&since=]` -> {"data", "total_pages"}.
    `since` keeps records whose `updated_at` is at or after it; `items` may change between runs."""

    handler_class = _CatalogHandler
    thread_name = "catalog"

    def __init__(self, count: int) -> None:
        super().__init__()
        self.items: dict[int, dict[str, Any]] = {i: item(i) for i in range(1, count + 1)}

    def handle(self, handler: Handler) -> None:
        query = {k: v[-1] for k, v in parse_qs(urlsplit(handler.path).query).items()}
        page, size = int(query.get("page", 1)), int(query.get("per_page", 100))
        since = query.get("since", "")
        rows = [r for _, r in sorted(self.items.items()) if r["updated_at"] >= since]
        total_pages = max(1, -(-len(rows) // size))
        body = {"data": rows[(page - 1) * size : page * size], "total_pages": total_pages}
        handler.send_reply(200, json.dumps(body).encode())


def item(i: int, **changes: Any) -> dict[str, Any]:
    return {"id": i, "name": f"item {i}", "updated_at": f"2024-01-01T00:00:{i:02d}Z", **changes}


@pytest.fixture
def catalog() -> Iterator[Catalog]:
    with Catalog(10) as server:
        yield server


@pytest.fixture(params=["process", "inline"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a database target is written: the writer process, and in the engine's process."""
    monkeypatch.setenv("ETL_WRITER", request.param)
    return str(request.param)


def catalog_pipeline(tmp_path: Path, server: Catalog, **overrides: Any) -> Path:
    """Catalog pages of 4 into SQLite, name only."""
    source = {
        "url": f"{server.base_url}/items", "records": "data",
        "pagination": {"type": "page", "size_param": "per_page", "size": 4, "total_pages": "total_pages"},
    }
    defaults = {"source": whole(source), "mapping": {"fields": whole({"name": "name"})}}
    return write_pipeline_file(tmp_path, server.base_url, defaults=defaults, **overrides)


def rows(tmp_path: Path, columns: str = "external_id") -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "out.db") as db:
        return db.execute(f"SELECT {columns} FROM items ORDER BY CAST(external_id AS INTEGER)").fetchall()


def keys_held(tmp_path: Path, name: str = "test") -> list[str]:
    store = SqliteStateStore(tmp_path / "state.db")
    try:
        return sorted((key for key, in store._db.execute("SELECT external_id FROM keys WHERE pipeline=?", (name,))),
                      key=int)
    finally:
        store.close()


def ids(*numbers: int) -> list[tuple[str]]:
    return [(str(n),) for n in numbers]


# --- mapping.deleted -------------------------------------------------------------------------


def test_a_marked_record_deletes_its_row_and_its_key_once(tmp_path: Path, demo_api: Any, writer: str) -> None:
    """A record that `mapping.deleted` marks deletes its row and its state key (deleted=1); the next
    run, with the marker still in the source, deletes nothing more and writes nothing."""
    api = demo_api(30)
    path = write_pipeline_file(tmp_path, api.base_url, mapping={"deleted": "deleted"})
    assert run(path).counts.created == 30
    api.update_record(7, deleted=True)
    second = run(path)
    assert (second.counts.deleted, second.counts.updated, second.counts.created) == (1, 0, 0)
    assert ("7",) not in rows(tmp_path) and len(rows(tmp_path)) == 29
    assert "7" not in keys_held(tmp_path)
    third = run(path)
    assert (third.counts.deleted, third.counts.created, third.counts.updated, third.counts.skipped) == (0, 0, 0, 30)
    api.update_record(7, deleted=False)  # it comes back: created again
    assert run(path).counts.created == 1 and ("7",) in rows(tmp_path)


def test_a_marker_is_a_delete_line_in_jsonl_and_in_a_dry_run(tmp_path: Path, demo_api: Any) -> None:
    """jsonl writes {"op": "delete", "external_id", "record": null}; --dry-run prints the same and changes nothing."""
    api = demo_api(5)
    out = tmp_path / "out.jsonl"
    path = write_pipeline_file(
        tmp_path, api.base_url, mapping={"deleted": "deleted"}, target=whole({"type": "jsonl", "path": str(out)})
    )
    run(path)
    api.update_record(2, deleted=True)
    printed = _dry_run(path)
    assert printed == [{"op": "delete", "external_id": "2", "record": None}]
    assert run(path).counts.deleted == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[-1] == {"op": "delete", "external_id": "2", "record": None}
    assert [line["op"] for line in lines].count("delete") == 1


def _dry_run(path: Path, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, ["run", str(path), "--dry-run", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


# --- deletes.missing -------------------------------------------------------------------------


def test_keys_missing_after_a_complete_read_are_deleted(tmp_path: Path, catalog: Catalog, writer: str) -> None:
    """Two records gone from the source are deleted (deleted=2); a record now filtered out was
    read, so it stays; `etl state show` counts the deletes."""
    path = catalog_pipeline(
        tmp_path, catalog, mapping={"filter": "!hidden"}, target={"deletes": {"missing": True}}
    )
    assert run(path).counts.created == 10
    del catalog.items[3], catalog.items[8]
    catalog.items[5] = item(5, hidden=True)
    result = run(path)
    assert (result.counts.deleted, result.counts.skipped) == (2, 8)
    assert rows(tmp_path) == ids(1, 2, 4, 5, 6, 7, 9, 10)
    assert keys_held(tmp_path) == ["1", "2", "4", "5", "6", "7", "9", "10"]
    assert run(path).counts.deleted == 0  # nothing is missing twice
    shown = CliRunner().invoke(cli, ["state", "show", "test", "--state", str(tmp_path / "state.db")])
    assert "deleted=2" in shown.output and "deleted=0" in shown.output, shown.output


def test_no_missing_deletes_after_a_limit_stopped_or_an_incremental_run(tmp_path: Path, catalog: Catalog) -> None:
    """A run a limit stopped, and an incremental run, delete no missing key; --full-refresh does."""
    path = catalog_pipeline(tmp_path, catalog, target={"deletes": {"missing": True}})
    run(path)
    del catalog.items[2]
    limited = catalog_pipeline(
        tmp_path, catalog, file="limited.yaml", source={"limits": {"max_pages": 1}},
        target={"deletes": {"missing": True}},
    )
    stopped = run(limited)
    assert stopped.stopped_by == "max_pages" and stopped.counts.deleted == 0
    assert ("2",) in rows(tmp_path)
    incremental = catalog_pipeline(
        tmp_path, catalog, file="incremental.yaml", target={"deletes": {"missing": True}},
        source={"incremental": {"cursor_field": "updated_at", "param": "since"}},
    )
    assert run(incremental, restart=True).counts.deleted == 0
    assert run(incremental).counts.deleted == 0  # reads only what changed: nothing is missing
    assert ("2",) in rows(tmp_path)
    assert run(incremental, full_refresh=True).counts.deleted == 1
    assert ("2",) not in rows(tmp_path)


def test_a_soft_delete_stamps_the_row_and_a_returning_key_clears_it(
    tmp_path: Path, catalog: Catalog, writer: str
) -> None:
    """mode: soft keeps the row and sets _deleted_at to the run's start (ISO-8601 UTC); the key
    coming back clears it."""
    path = catalog_pipeline(tmp_path, catalog, target={"deletes": {"missing": True, "mode": "soft"}})
    run(path)
    gone = catalog.items.pop(4)
    result = run(path)
    assert result.counts.deleted == 1
    stamped = dict(rows(tmp_path, "external_id, _deleted_at"))
    assert stamped["4"] is not None and stamped["4"].endswith("Z") and stamped["4"][:4] == "20" + stamped["4"][2:4]
    assert [k for k, v in stamped.items() if v is not None] == ["4"]
    assert run(path).counts.deleted == 0  # deleting the same key twice writes nothing
    assert dict(rows(tmp_path, "external_id, _deleted_at"))["4"] == stamped["4"]
    catalog.items[4] = gone
    back = run(path)
    assert back.counts.created == 1
    assert dict(rows(tmp_path, "external_id, _deleted_at"))["4"] is None


def test_the_guard_refuses_an_empty_answer_and_deletes_nothing(tmp_path: Path, catalog: Catalog) -> None:
    """An API that suddenly answers an empty list: the run deletes nothing, fails with exit 1 and
    says how many keys it would have deleted; the dry run says the guard would refuse."""
    path = catalog_pipeline(tmp_path, catalog, target={"deletes": {"missing": True}})
    run(path)
    catalog.items.clear()
    with pytest.raises(EtlError) as failed:
        run(path)
    assert failed.value.result is not None and failed.value.result.exit_code == 1
    assert "refused to delete 10 of the 10 keys" in str(failed.value)
    assert "max_fraction 0.5" in str(failed.value)
    assert rows(tmp_path) == ids(*range(1, 11)) and len(keys_held(tmp_path)) == 10
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code == 1 and "refused to delete 10 of the 10 keys" in result.output
    dry = CliRunner().invoke(cli, ["run", str(path), "--dry-run"])
    assert dry.exit_code == 1 and "would refuse to delete 10 of the 10 keys" in dry.output
    assert rows(tmp_path) == ids(*range(1, 11))


def test_the_guard_lets_a_share_up_to_max_fraction_through(tmp_path: Path, catalog: Catalog) -> None:
    """max_fraction 0.2 of 10 keys: 2 missing are deleted, 3 are refused."""
    path = catalog_pipeline(tmp_path, catalog, target={"deletes": {"missing": True, "max_fraction": 0.2}})
    run(path)
    for i in (1, 2, 3):
        del catalog.items[i]
    with pytest.raises(EtlError, match="refused to delete 3 of the 10 keys"):
        run(path)
    catalog.items[1] = item(1)
    assert run(path).counts.deleted == 2
    assert rows(tmp_path) == ids(1, *range(4, 11))


def test_a_dry_run_prints_the_missing_deletes_and_changes_nothing(tmp_path: Path, catalog: Catalog) -> None:
    """--dry-run prints a delete op for each missing key and leaves the target and the state as they were."""
    path = catalog_pipeline(tmp_path, catalog, target={"deletes": {"missing": True}})
    run(path)
    del catalog.items[6], catalog.items[9]
    before = (tmp_path / "state.db").read_bytes()
    printed = _dry_run(path)
    assert printed == [
        {"op": "delete", "external_id": "6", "record": None}, {"op": "delete", "external_id": "9", "record": None},
    ]
    assert rows(tmp_path) == ids(*range(1, 11)) and (tmp_path / "state.db").read_bytes() == before


def test_missing_deletes_skip_a_run_with_a_record_whose_key_is_unknown(tmp_path: Path, catalog: Catalog) -> None:
    """A record that failed without a key may be any of the missing ones: nothing missing is deleted."""
    path = catalog_pipeline(tmp_path, catalog, target={"deletes": {"missing": True}})
    run(path)
    catalog.items[3] = item(3, id="")  # to_string("") is empty: no key
    result = run(path)
    assert (result.counts.failed, result.counts.deleted, result.exit_code) == (1, 0, 3)
    assert ("3",) in rows(tmp_path)


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "mapping", "message"),
    [
        ({"deletes": {"missing": True}}, {}, "target.deletes needs a `delete: {method, path}` operation"),
        ({}, {"deleted": "gone"}, "mapping.deleted needs a `delete: {method, path}` operation"),
        ({"delete": {"path": "/contacts/{target_id}"}, "deletes": {"mode": "soft"}}, {},
         "an http target has no row to mark deleted"),
        ({"delete": {"path": "/contacts/{id}"}}, {}, "unknown placeholder '{id}' in delete path"),
    ],
)
def test_http_deletes_the_target_cannot_carry_out_are_validation_errors(
    tmp_path: Path, target: dict[str, Any], mapping: dict[str, Any], message: str
) -> None:
    """Deletes on an http target need its `delete` operation, hard mode, and a known placeholder."""
    create_update = {k: v for k, v in CRM_OPERATIONS.items() if k != "delete"}
    http = {"type": "http", "base_url": "http://127.0.0.1:9", **create_update, **target}
    path = write_pipeline_file(tmp_path, target=whole(http), mapping=mapping)
    problems = [p.message for p in check_file(path)]
    assert any(message in p for p in problems), problems


def test_a_field_named_deleted_at_is_refused_with_soft_deletes(tmp_path: Path) -> None:
    """A soft delete owns the `_deleted_at` column: a field of that name is a validation error at its line."""
    path = write_pipeline_file(
        tmp_path, mapping={"fields": {"_deleted_at": "removed"}}, target={"deletes": {"mode": "soft"}}
    )
    problems = {p.path: p.message for p in check_file(path)}
    assert "the column a soft delete sets" in problems.get("mapping.fields._deleted_at", ""), problems
    hard = write_pipeline_file(tmp_path, file="hard.yaml", mapping={"fields": {"_deleted_at": "removed"}})
    assert [p for p in check_file(hard) if p.severity == "error"] == []


def test_deletes_keys_are_checked_by_the_schema(tmp_path: Path) -> None:
    """An unknown mode or a fraction past 1 is an error naming the key."""
    path = write_pipeline_file(tmp_path, target={"deletes": {"mode": "archive", "max_fraction": 2}})
    problems = {p.path: p.message for p in check_file(path)}
    assert "target.deletes.mode" in problems and "target.deletes.max_fraction" in problems, problems


# --- the http target ---------------------------------------------------------------------------

CRM_OPERATIONS = {
    "create": {"method": "POST", "path": "/contacts", "id_path": "id"},
    "update": {"method": "PATCH", "path": "/contacts/{target_id}"},
    "delete": {"method": "DELETE", "path": "/contacts/{target_id}"},
}


def crm_pipeline(tmp_path: Path, server: Catalog, crm: FakeCrm, **deletes: Any) -> Path:
    target = {
        "type": "http", "base_url": crm.base_url, **CRM_OPERATIONS,
        "retry": {"max_attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.02},
        "deletes": {"missing": True, **deletes},
    }
    return catalog_pipeline(
        tmp_path, server, target=whole(target), mapping={"fields": whole({"key": "to_string(id)", "name": "name"})}
    )


def deletes_sent(crm: FakeCrm) -> list[str]:
    return [r.path for r in crm.request_log if r.method == "DELETE"]


def test_the_http_target_deletes_by_the_stored_target_id_and_a_404_counts_as_done(
    tmp_path: Path, catalog: Catalog
) -> None:
    """Missing keys get DELETE /contacts/{target_id} with the id their create stored; one already
    gone on the CRM answers 404, which counts as deleted; no key is sent a DELETE twice."""
    with FakeCrm() as crm:
        path = crm_pipeline(tmp_path, catalog, crm)
        assert run(path).counts.created == 10
        by_key = {obj["key"]: obj["id"] for obj in crm.objects.values()}
        del catalog.items[2], catalog.items[5]
        del crm.objects[by_key["5"]]  # removed on the CRM by hand: its DELETE gets a 404
        result = run(path)
        assert (result.counts.deleted, result.counts.failed) == (2, 0)
        assert sorted(deletes_sent(crm)) == sorted([f"/contacts/{by_key['2']}", f"/contacts/{by_key['5']}"])
        assert sorted(obj["key"] for obj in crm.objects.values()) == sorted(str(i) for i in catalog.items)
        assert run(path).counts.deleted == 0
        assert len(deletes_sent(crm)) == 2


def test_an_http_upsert_target_deletes_a_marked_record_by_its_external_id(tmp_path: Path, catalog: Catalog) -> None:
    """With `upsert` and `delete` by `{external_id}` (no target ids), a marked record is one DELETE
    /contacts/by-key/{external_id}; the marker still in the source sends nothing more."""
    with FakeCrm() as crm:
        target = {
            "type": "http", "base_url": crm.base_url,
            "upsert": {"method": "PUT", "path": "/contacts/by-key/{external_id}"},
            "delete": {"path": "/contacts/by-key/{external_id}"},
        }
        path = catalog_pipeline(tmp_path, catalog, target=whole(target), mapping={"deleted": "gone"})
        assert run(path).counts.created == 10
        catalog.items[6] = item(6, gone=True)
        assert run(path).counts.deleted == 1
        assert deletes_sent(crm) == ["/contacts/by-key/6"]
        assert sorted(int(obj["name"].split()[1]) for obj in crm.objects.values()) == [1, 2, 3, 4, 5, 7, 8, 9, 10]
        assert run(path).counts.deleted == 0 and len(deletes_sent(crm)) == 1


def test_an_http_delete_the_target_refuses_fails_that_key_alone(tmp_path: Path, catalog: Catalog) -> None:
    """A 422 to a DELETE fails that key (kept, exit 3); the key stays held, so the next run tries again."""
    with FakeCrm() as crm:
        path = crm_pipeline(tmp_path, catalog, crm)
        run(path)
        del catalog.items[4]
        crm.fail_next(1, 422)
        result = run(path)
        assert (result.counts.deleted, result.counts.failed, result.exit_code) == (0, 1, 3)
        assert "4" in keys_held(tmp_path)
        assert run(path).counts.deleted == 1
        assert "4" not in keys_held(tmp_path)


# --- kill -9 in the delete phase ------------------------------------------------------------------


class StallingCrm(FakeCrm):
    """The fake CRM, whose `stall_at`-th DELETE waits (unanswered) until `release` is set."""

    def __init__(self, stall_at: int) -> None:
        super().__init__()
        self.stall_at = stall_at
        self.stalled = threading.Event()
        self.release = threading.Event()
        self._deletes = 0

    def handle(self, handler: Handler) -> None:
        if handler.command == "DELETE":
            self._deletes += 1
            if self._deletes == self.stall_at:
                self.stalled.set()
                self.release.wait(20)
        super().handle(handler)


def test_a_kill_in_the_delete_phase_then_a_rerun_deletes_each_key_once(tmp_path: Path) -> None:
    """kill -9 while the 3rd of 6 DELETEs waits for its answer: the re-run deletes the rest, sends
    no second DELETE for the 2 answered before the kill, and the CRM ends with exactly the source."""
    with Catalog(20) as source, StallingCrm(stall_at=3) as crm:
        path = crm_pipeline(tmp_path, source, crm, max_fraction=0.5)
        assert run(path).counts.created == 20
        by_id = {obj["id"]: obj["key"] for obj in crm.objects.values()}
        for i in (2, 5, 9, 11, 14, 17):
            del source.items[i]
        with open(tmp_path / "killed.log", "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "run", str(path)], cwd=tmp_path,
                stdout=subprocess.DEVNULL, stderr=log_file,
            )
        try:
            assert crm.stalled.wait(30), (tmp_path / "killed.log").read_text()
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
        finally:
            crm.release.set()
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        time.sleep(0.05)  # the stalled DELETE is answered after the kill: the object goes, no one hears it
        answered_before_kill = [by_id[p.rsplit("/", 1)[1]] for p in deletes_sent(crm)[:2]]
        assert set(keys_held(tmp_path)) == {str(i) for i in range(1, 21)} - set(answered_before_kill)
        result = run(path)
        assert result.counts.deleted == 4 and result.counts.failed == 0
        sent = [by_id[p.rsplit("/", 1)[1]] for p in deletes_sent(crm)]
        assert sorted(set(sent), key=int) == ["2", "5", "9", "11", "14", "17"]
        assert all(sent.count(key) == 1 for key in answered_before_kill)
        assert len(sent) == 7  # the stalled one, unanswered when killed, was sent again (and got its 404)
        assert sorted((obj["key"] for obj in crm.objects.values()), key=int) == [str(i) for i in sorted(source.items)]
        assert keys_held(tmp_path) == [str(i) for i in sorted(source.items)]


def test_a_kill_in_the_sqlite_delete_phase_then_a_rerun_ends_exact(tmp_path: Path) -> None:
    """kill -9 once the delete phase has committed its first plans (3,000 missing keys in plans of
    500, applied in the engine's process, target then state): the re-run deletes the rest, counts
    only what the state still held, and leaves exactly the source's rows and keys."""
    with Catalog(6000) as server:
        path = catalog_pipeline(
            tmp_path, server, source={"pagination": {"size": 1000}},
            target={"deletes": {"missing": True, "max_fraction": 0.6}},
        )
        assert run(path).counts.created == 6000
        for i in range(1, 6001, 2):
            del server.items[i]
        log_path = tmp_path / "killed.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "run", str(path)], cwd=tmp_path,
                stdout=subprocess.DEVNULL, stderr=log_file, env={**os.environ, "ETL_WRITER": "inline"},
            )
        try:
            deadline = time.monotonic() + 60
            while _count(tmp_path) > 5000 and proc.poll() is None:  # two plans' rows gone: the first's state is in
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.001)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=10)
        assert "keys=3000" in log_path.read_text()
        held_before = len(keys_held(tmp_path))
        assert 3000 <= held_before < 6000
        result = run(path)
        want = ids(*sorted(server.items))
        assert rows(tmp_path) == want and keys_held(tmp_path) == [key for key, in want]
        assert result.counts.deleted == held_before - 3000
        assert run(path).counts.deleted == 0


def _count(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "out.db") as db:
        return int(db.execute("SELECT count(*) FROM items").fetchone()[0])


def test_a_sigterm_in_the_delete_phase_stops_after_the_answered_delete(tmp_path: Path) -> None:
    """SIGTERM while the 2nd of 6 DELETEs waits: that DELETE is answered and committed, no further
    one is sent, the run exits 143; the next run deletes the other 4, none of the 6 twice."""
    with Catalog(20) as source, StallingCrm(stall_at=2) as crm:
        path = crm_pipeline(tmp_path, source, crm, max_fraction=0.5)
        run(path)
        by_id = {obj["id"]: obj["key"] for obj in crm.objects.values()}
        for i in (3, 6, 7, 12, 15, 20):
            del source.items[i]
        with open(tmp_path / "stopped.log", "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "run", str(path)], cwd=tmp_path,
                stdout=subprocess.DEVNULL, stderr=log_file,
            )
        try:
            assert crm.stalled.wait(30), (tmp_path / "stopped.log").read_text()
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)  # the signal is handled while the DELETE still waits
        finally:
            crm.release.set()
            code = proc.wait(timeout=20)
        assert code == 143, (tmp_path / "stopped.log").read_text()
        assert "status=interrupted" in (tmp_path / "stopped.log").read_text()
        assert len(deletes_sent(crm)) == 2
        assert len(keys_held(tmp_path)) == 18
        assert run(path).counts.deleted == 4
        sent = [by_id[p.rsplit("/", 1)[1]] for p in deletes_sent(crm)]
        assert sorted(sent, key=int) == ["3", "6", "7", "12", "15", "20"]
        assert keys_held(tmp_path) == [str(i) for i in sorted(source.items)]


# --- apply: deletes in a batch of pages ------------------------------------------------------------


def test_deletes_in_a_batch_leave_what_the_pages_one_by_one_leave(tmp_path: Path) -> None:
    """Pages that create, delete and re-create keys give the same rows, state keys and counts
    applied one by one and as one batch (what the writer process does when it is behind)."""
    from runner.load.apply import PagePlan, apply_plans
    from runner.load.contenthash import RecordHasher
    from runner.model import SqliteTargetConfig
    from runner.result import Counts
    from runner.targets.sqlite import SqliteTarget

    hasher = RecordHasher(["name"])

    def page(number: int, mapped: dict[str, str], deleted: list[str]) -> PagePlan:
        records = [(key, {"name": name}) for key, name in mapped.items()]
        counts = Counts(processed=len(records) + len(deleted))
        return PagePlan(number, len(records), records, [], None, counts, deleted=deleted, deleted_at="t")

    def pages() -> list[PagePlan]:
        return [
            page(1, {"a": "A", "b": "B"}, ["z"]), page(2, {"c": "C"}, ["a"]), page(3, {"a": "A again"}, ["b", "q"]),
            page(4, {}, ["c"]), page(5, {"b": "B again"}, ["a"]),
        ]

    outcomes = []
    for batched in (False, True):
        folder = tmp_path / str(batched)
        store = SqliteStateStore(folder / "state.db")
        target = SqliteTarget(SqliteTargetConfig(folder / "out.db", "items"), fields=["name"])
        apply_plans("p", store, target, hasher, [page(0, {"z": "Z", "q": "Q"}, [])], committed=None)
        total = Counts()
        for group in ([pages()] if batched else [[p] for p in pages()]):
            total.add(apply_plans("p", store, target, hasher, group, committed=None).counts)
        with sqlite3.connect(folder / "out.db") as db:
            landed = db.execute("SELECT external_id, name FROM items ORDER BY 1").fetchall()
        held = sorted(k for k, in store._db.execute("SELECT external_id FROM keys WHERE pipeline='p'"))
        outcomes.append((total.created, total.updated, total.deleted, total.skipped, landed, held))
        target.close()
        store.close()
    assert outcomes[0] == outcomes[1]
    created, updated, deleted, skipped, landed, held = outcomes[0]
    assert landed == [("b", "B again")] and held == ["b"]
    assert (created, updated, deleted, skipped) == (5, 0, 6, 0)


def test_a_child_resource_soft_deletes_a_marked_record_with_the_runs_start(tmp_path: Path, catalog: Catalog) -> None:
    """The resources form: a `from_parent` child whose record is marked deleted gets its
    `_deleted_at` set to the run's start (an ISO-8601 UTC time, never empty)."""
    for record in catalog.items.values():
        record["tags"] = [{"tag": "a", "removed": False}, {"tag": "b", "removed": False}]
    document = {
        "version": 1, "name": "kids",
        "source": {"base_url": catalog.base_url},
        "target": {"type": "sqlite", "path": str(tmp_path / "out.db"), "deletes": {"mode": "soft"}},
        "state": {"path": str(tmp_path / "state.db")},
        "resources": {
            "items": {
                "source": {"path": "/items", "records": "data", "pagination": {
                    "type": "page", "size_param": "per_page", "size": 4, "total_pages": "total_pages"}},
                "mapping": {"external_id": "to_string(id)", "fields": {"name": "name"}},
            },
            "tags": {
                "parent": "items", "from_parent": "tags",
                "mapping": {"external_id": "join('/', [to_string(_parent.id), tag])", "deleted": "removed",
                            "fields": {"tag": "tag"}},
            },
        },
    }
    path = tmp_path / "kids.yaml"
    path.write_text(json.dumps(document))
    run(path)
    catalog.items[3] = {**catalog.items[3], "name": "item 3 changed",
                        "tags": [{"tag": "a", "removed": True}, {"tag": "b", "removed": False}]}
    run(path)
    with sqlite3.connect(tmp_path / "out.db") as db:
        stamped = db.execute("SELECT external_id, _deleted_at FROM tags WHERE _deleted_at IS NOT NULL").fetchall()
    assert [key for key, _ in stamped] == ["3/a"]
    assert stamped[0][1].endswith("Z") and stamped[0][1][:2] == "20", stamped
