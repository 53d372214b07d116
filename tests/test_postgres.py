"""Tests of the PostgreSQL state store and target against a real server (see tests/pgserver.py)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from runner import log  # noqa: E402
from runner.errors import LockError, StateError, TargetError  # noqa: E402
from runner.model import PostgresTargetConfig, Secret, StateConfig  # noqa: E402
from runner.state import open_known, open_store  # noqa: E402
from runner.state.base import FailedRecord, PageCommit, RunRecord  # noqa: E402
from runner.state import postgres as state_postgres  # noqa: E402
from runner.state.postgres import MIGRATIONS, PostgresStateStore  # noqa: E402
from runner.targets import open_target  # noqa: E402
from runner.targets.base import Write  # noqa: E402
from runner.targets.postgres import PostgresTarget  # noqa: E402

import pgserver  # noqa: E402  (tests/ is on sys.path, pytest's rootdir-less import mode)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dsn(pg_admin: str) -> Iterator[str]:
    with pgserver.fresh_database(pg_admin) as url:
        yield url


@pytest.fixture
def store(dsn: str) -> Iterator[PostgresStateStore]:
    s = PostgresStateStore(dsn)
    yield s
    s.close()


def commit(store: PostgresStateStore, hashes=(), failed=(), succeeded=(), checkpoint=None, name="p") -> None:
    store.commit_page(name, PageCommit(list(hashes), list(failed), list(succeeded), checkpoint))


def query(dsn: str, text: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as db:
        cursor = db.execute(text, params)
        return cursor.fetchall() if cursor.description else []


def dump_state(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    tables = ("pipelines", "keys", "failed", "runs", "locks", "migrations")
    return {t: sorted(query(dsn, f"SELECT * FROM etl_state.{t}"), key=repr) for t in tables}


# --- state store -----------------------------------------------------------------


def test_new_database_is_migrated_to_the_latest_version(store: PostgresStateStore, dsn: str) -> None:
    """Opening an empty database creates the etl_state tables and records the schema version."""
    assert query(dsn, "SELECT max(version) FROM etl_state.migrations") == [(len(MIGRATIONS),)]
    tables = {r[0] for r in query(dsn, "SELECT tablename FROM pg_tables WHERE schemaname='etl_state'")}
    assert tables == {"migrations", "pipelines", "keys", "failed", "runs", "locks", "pending", "child_sweeps"}
    PostgresStateStore(dsn).close()  # opening again migrates nothing
    assert query(dsn, "SELECT count(*) FROM etl_state.migrations") == [(len(MIGRATIONS),)]


def test_newer_schema_is_refused(store: PostgresStateStore, dsn: str) -> None:
    """A database migrated by a newer etl is refused with a message that says to upgrade."""
    query(dsn, "INSERT INTO etl_state.migrations VALUES (%s, 't')", len(MIGRATIONS) + 1)
    with pytest.raises(StateError, match="upgrade etl"):
        PostgresStateStore(dsn)


@pytest.mark.parametrize(
    "value", ["2024-01-01T00:00:00Z", "07919", 1700000000, 1.5, True, [1, "a"], {"after": "x", "n": 2}]
)
def test_watermark_keeps_its_json_type(store: PostgresStateStore, value: Any) -> None:
    """The watermark round-trips as the JSON value written, type included."""
    store.finish_run("p", RunRecord("r"), watermark=value, clear_checkpoint=False)
    got = store.watermark("p")
    assert got == value and type(got) is type(value)


def test_checkpoint_is_kept_until_a_run_clears_it(store: PostgresStateStore) -> None:
    """A page's checkpoint is stored; a finish without a watermark keeps the old one and clear_checkpoint clears."""
    commit(store, checkpoint='{"next": 1}')
    assert store.checkpoint("p") == '{"next": 1}' and store.checkpoint("other") is None
    store.finish_run("p", RunRecord("r"), watermark=5, clear_checkpoint=True)
    store.finish_run("p", RunRecord("r"), watermark=None, clear_checkpoint=False)
    assert store.checkpoint("p") is None and store.watermark("p") == 5


def test_key_states_for_a_thousand_keys_in_one_call(store: PostgresStateStore) -> None:
    """key_states answers for 1,000 stored keys (and omits unknown ones) in one call."""
    commit(store, hashes=[(str(i), f"h{i}", None) for i in range(1000)])
    found = store.key_states("p", [str(i) for i in range(1050)])
    assert len(found) == 1000 and found["999"].hash == "h999"
    assert store.key_states("other", ["1"]) == {} and store.key_states("p", []) == {}


def test_target_id_is_kept_when_a_later_write_has_none(store: PostgresStateStore) -> None:
    """An update without a target id keeps the stored one, across pages and within one page."""
    commit(store, hashes=[("a", "h1", "crm_1")])
    commit(store, hashes=[("a", "h2", None)])
    commit(store, hashes=[("b", "h1", "crm_2"), ("b", "h2", None)])
    found = store.key_states("p", ["a", "b"])
    assert (found["a"].hash, found["a"].target_id) == ("h2", "crm_1")
    assert (found["b"].hash, found["b"].target_id) == ("h2", "crm_2")


def test_commit_page_is_all_or_nothing(store: PostgresStateStore) -> None:
    """A page whose last statement fails leaves no trace: no hashes, no failures, no checkpoint."""
    commit(store, hashes=[("old", "h", None)], checkpoint='"before"')
    with pytest.raises(StateError, match=r"state store .*/etl_t_"):
        commit(store, hashes=[("a", "h", None), ("old", "new", None)],
               failed=[FailedRecord("bad\x00key", {}, "e")], checkpoint='"after"')
    assert store.key_states("p", ["a", "old"]) == {"old": store.key_states("p", ["old"])["old"]}
    assert store.key_states("p", ["old"])["old"].hash == "h"
    assert store.checkpoint("p") == '"before"' and store.show("p")["failed_total"] == 0
    commit(store, hashes=[("a", "h", None)])  # the connection is usable afterwards
    assert set(store.key_states("p", ["a"])) == {"a"}


def test_failures_are_kept_and_cleared_on_success(store: PostgresStateStore) -> None:
    """A failed record is kept with its error and raw record, and cleared once its key succeeds."""
    commit(store, failed=[FailedRecord("a", {"id": "a"}, "422: bad email"), FailedRecord(None, {"x": 1}, "null key")])
    shown = store.show("p")
    assert shown["failed_total"] == 2
    assert {f["error"] for f in shown["failed"]} == {"422: bad email", "null key"}
    commit(store, failed=[FailedRecord("a", {"id": "a"}, "422: again")])
    assert store.show("p")["failed_total"] == 2
    commit(store, hashes=[("a", "h", None)], succeeded=["a"])
    assert [f["raw"] for f in store.show("p")["failed"]] == [{"x": 1}]


def test_reset_keeps_target_ids_only(store: PostgresStateStore) -> None:
    """reset clears watermark, checkpoint, hashes and failures, but keeps http target ids."""
    commit(store, hashes=[("a", "h", "crm_1"), ("b", "h", None)], failed=[FailedRecord("c", {}, "e")], checkpoint="{}")
    commit(store, hashes=[("z", "h", None)], name="other")
    store.finish_run("p", RunRecord("r"), watermark="2024-01-01", clear_checkpoint=False)
    store.reset("p")
    assert store.watermark("p") is None and store.checkpoint("p") is None
    found = store.key_states("p", ["a", "b"])
    assert list(found) == ["a"] and (found["a"].hash, found["a"].target_id) == (None, "crm_1")
    assert store.show("p")["failed_total"] == 0
    assert store.key_states("other", ["z"])["z"].hash == "h"


def test_runs_are_recorded_and_shown(store: PostgresStateStore) -> None:
    """start_run/finish_run keep one row per run with its counts; show lists them newest first."""
    for number in (1, 2):
        run = RunRecord(f"r{number}", started_at=f"2024-01-0{number}T00:00:00Z")
        store.start_run("p", run)
        run.status, run.finished_at, run.counts = "success", "later", {"created": number, "failed": 0}
        store.finish_run("p", run, watermark=number, clear_checkpoint=True)
    commit(store, hashes=[("a", "h", None)])
    shown = store.show("p", runs=5)
    assert [r["run_id"] for r in shown["runs"]] == ["r2", "r1"]
    assert shown["runs"][0] == {"run_id": "r2", "status": "success", "started_at": "2024-01-02T00:00:00Z",
                                "finished_at": "later", "created": 2, "failed": 0}
    assert (shown["keys"], shown["watermark"], shown["lock"]) == (1, 2, None)
    assert store.show("p", runs=1)["runs"][0]["run_id"] == "r2"


EMPTY = {
    "watermark": None, "checkpoint": None, "keys": 0, "pending": 0, "lock": None, "runs": [], "failed_total": 0,
    "failed": [],
}


def test_show_returns_each_part_of_a_pipeline_state(store: PostgresStateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """show returns, in this order, the watermark, checkpoint, key count, lock holder, runs with
    their counts, and failed records with their total: the SQLite store's dict."""
    monkeypatch.setattr(state_postgres, "now_iso", lambda: "T")
    run = RunRecord("r1", started_at="t1")
    store.start_run("p", run)
    commit(store, hashes=[("a", "h", None), ("b", "h", "crm_2")], failed=[FailedRecord("c", {"id": "c"}, "bad")],
           checkpoint='{"page": 2}')
    run.status, run.finished_at, run.counts = "partial", "t2", {"created": 2, "failed": 1}
    store.finish_run("p", run, watermark={"at": 5}, clear_checkpoint=False)
    with store.lock("p", "r2"):
        shown = store.show("p")
    assert shown == {
        "pipeline": "p", "watermark": {"at": 5}, "checkpoint": '{"page": 2}', "keys": 2, "pending": 0,
        "lock": {"run_id": "r2", "pid": os.getpid(), "host": socket.gethostname(), "acquired_at": "T"},
        "runs": [
            {"run_id": "r1", "status": "partial", "started_at": "t1", "finished_at": "t2", "created": 2, "failed": 1},
        ],
        "failed_total": 1,
        "failed": [{"external_id": "c", "error": "bad", "failed_at": "T", "raw": {"id": "c"}}],
    }
    assert list(shown) == ["pipeline", *EMPTY]
    assert store.show("other") == {"pipeline": "other", **EMPTY}


def test_read_only_store_on_an_empty_database_creates_nothing(dsn: str) -> None:
    """A read-only store on a database without state is empty, writes nothing and creates no schema."""
    store = PostgresStateStore(dsn, read_only=True)
    assert store.watermark("p") is None and store.checkpoint("p") is None and store.key_states("p", ["a"]) == {}
    assert store.show("p") == {"pipeline": "p", **EMPTY}
    with store.lock("p", "r"):
        commit(store, hashes=[("a", "h", None)], checkpoint="c")
        store.start_run("p", RunRecord("r"))
        store.finish_run("p", RunRecord("r"), watermark=1, clear_checkpoint=True)
    store.close()
    assert query(dsn, "SELECT to_regnamespace('etl_state')") == [(None,)]


def test_read_only_store_reads_and_changes_nothing(store: PostgresStateStore, dsn: str) -> None:
    """A read-only store reads existing state and leaves every row as it was, even when asked to write."""
    commit(store, hashes=[("a", "h", "t")], failed=[FailedRecord("b", {}, "e")], checkpoint='"c"')
    store.finish_run("p", RunRecord("r"), watermark="w", clear_checkpoint=False)
    before = dump_state(dsn)
    reader = PostgresStateStore(dsn, read_only=True)
    assert reader.key_states("p", ["a"])["a"].target_id == "t"
    assert (reader.watermark("p"), reader.checkpoint("p"), reader.show("p")["failed_total"]) == ("w", '"c"', 1)
    with reader.lock("p", "dry"):
        commit(reader, hashes=[("x", "h", None)], checkpoint="other")
        reader.start_run("p", RunRecord("dry"))
    with pytest.raises(StateError, match="read-only"):
        reader.reset("p")
    reader.close()
    assert dump_state(dsn) == before


# --- the advisory lock -------------------------------------------------------------


def test_second_store_on_a_held_pipeline_gets_lock_error(dsn: str) -> None:
    """While one store holds a pipeline's lock, another gets LockError naming the holder; other pipelines are free."""
    a, b = PostgresStateStore(dsn), PostgresStateStore(dsn)
    with a.lock("p", "run-a"):
        with (
            pytest.raises(LockError, match=r"'p' is already running \(run run-a, pid \d+ on .*etl state unlock p"),
            b.lock("p", "run-b"),
        ):
            pass
        with pytest.raises(LockError), a.lock("p", "run-a2"):
            pass
        assert b.show("p")["lock"]["run_id"] == "run-a"
        with b.lock("other", "run-c"):
            pass
    assert b.show("p")["lock"] is None
    with b.lock("p", "run-b"):
        assert a.show("p")["lock"]["run_id"] == "run-b"
    a.close(), b.close()


def locks_within(store: PostgresStateStore, pipeline: str, seconds: float = 10.0) -> bool:
    """Whether `store` gets the lock within `seconds` (a server frees a dropped session's locks moments later)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with store.lock(pipeline, "probe"):
                return True
        except LockError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def test_lock_is_freed_when_its_store_closes_or_its_session_dies(dsn: str) -> None:
    """A lock is released by close(), and freed by the server when the connection drops or the backend is ended."""
    other = PostgresStateStore(dsn)
    for end in ("close", "drop", "terminate"):
        holder = PostgresStateStore(dsn)
        holding = holder.lock("p", f"{end}-run")
        holding.__enter__()
        assert other.show("p")["lock"]["run_id"] == f"{end}-run"
        if end == "close":
            holder.close()
            with other.lock("p", "next"):  # at once: close() released it
                pass
            continue
        if end == "drop":
            holder._db.close()  # the socket closes with no unlock, as when a process dies
        else:
            (backend,) = holder._db.execute("SELECT pg_backend_pid()").fetchone()
            query(dsn, "SELECT pg_terminate_backend(%s)", backend)
        assert locks_within(other, "p")
        holding.__exit__(None, None, None)  # the session is gone; releasing does not raise
        holder.close()
    other.close()


def test_unlock_ends_the_session_that_holds_the_lock(dsn: str) -> None:
    """`unlock` ends the database session holding a pipeline's lock (a hung run) so the next run can start."""
    hung, admin = PostgresStateStore(dsn), PostgresStateStore(dsn)
    holding = hung.lock("p", "hung")
    holding.__enter__()
    with pytest.raises(LockError), admin.lock("p", "blocked"):
        pass
    assert admin.unlock("p") is True
    with admin.lock("p", "next"):
        pass
    assert admin.unlock("p") is False
    hung.close(), admin.close()


def test_reset_takes_the_lock_and_refuses_while_a_run_holds_it(dsn: str) -> None:
    """Reliability D12: `reset` while a run holds the pipeline's lock raises LockError naming the run
    and clears nothing; once the run ends it resets, and leaves no lock behind."""
    run, other = PostgresStateStore(dsn), PostgresStateStore(dsn)
    with run.lock("p", "run-live"):
        run.finish_run("p", RunRecord("run-live"), watermark=5, clear_checkpoint=False)
        with pytest.raises(LockError, match=r"'p' is already running \(run run-live, pid \d+ on "):
            other.reset("p")
        assert other.watermark("p") == 5
    other.reset("p")
    assert other.watermark("p") is None and other.show("p")["lock"] is None
    assert query(dsn, "SELECT count(*) FROM etl_state.locks") == [(0,)]
    run.close(), other.close()


def test_unlock_with_force_still_ends_the_holding_session(dsn: str) -> None:
    """`unlock(force=True)` is accepted and does what `unlock` does with this store: ends the session."""
    hung, admin = PostgresStateStore(dsn), PostgresStateStore(dsn)
    holding = hung.lock("p", "hung")
    holding.__enter__()
    assert admin.unlock("p", force=True) is True
    assert locks_within(admin, "p")
    hung.close(), admin.close()


def test_open_known_on_a_database_without_state_creates_nothing(dsn: str) -> None:
    """Reliability D14: the `etl state` commands' open, on a database never used for state, is
    `no state for pipeline` and creates no schema; on one that knows other pipelines, the same."""
    config = StateConfig(dsn=Secret(dsn))
    for read_only in (True, False):
        with pytest.raises(StateError, match=r"^no state for pipeline 'x' in 127\.0\.0\.1:\d+/etl_t_\w+$"):
            open_known(config, "x", read_only=read_only)
    assert query(dsn, "SELECT to_regnamespace('etl_state')") == [(None,)]
    writer = PostgresStateStore(dsn)
    writer.start_run("p", RunRecord("r"))
    writer.close()
    with pytest.raises(StateError, match="no state for pipeline 'x'"):
        open_known(config, "x")
    known = open_known(config, "p")
    assert known.knows("p") and not known.knows("x")
    known.close()


def test_a_column_added_to_every_state_table_breaks_no_write(store: PostgresStateStore, dsn: str) -> None:
    """Reliability D11: every INSERT names its columns, so a column added to the state's tables
    breaks nothing."""
    for table in ("pipelines", "keys", "failed", "runs", "locks", "migrations"):
        query(dsn, f"ALTER TABLE etl_state.{table} ADD COLUMN name text")
    with store.lock("p", "r"):
        store.start_run("p", RunRecord("r", started_at="t"))
        commit(store, hashes=[("a", "h", "t1")], failed=[FailedRecord("b", {"x": 1}, "e")], checkpoint="null")
        store.finish_run("p", RunRecord("r", status="success"), watermark=1, clear_checkpoint=True)
    assert store.key_states("p", ["a"])["a"].target_id == "t1" and store.show("p")["failed_total"] == 1


def test_no_secret_reaches_a_stored_checkpoint_or_failed_record(store: PostgresStateStore, dsn: str) -> None:
    """Reliability D6/D14: the checkpoint is stored without its secret query values (and the
    api_key's own parameter); a failed record's raw text and error with `***` for each secret."""
    secret = "s3cr3t-postgres-unit"
    log.add_secrets([secret])
    log.add_secret_params(["k_pg"])
    checkpoint = {"next": {"url": f"http://api.test/items?k_pg=x&page=2&key={secret}", "params": {"t": secret}},
                  "pages": 1, "watermark": None}
    commit(store, failed=[FailedRecord("a", {"token": secret, "n": [secret]}, f"bad {secret}")],
           checkpoint=json.dumps(checkpoint))
    assert json.loads(store.checkpoint("p"))["next"] == {"url": "http://api.test/items?page=2", "params": {}}
    (failed,) = store.show("p")["failed"]
    assert (failed["raw"], failed["error"]) == ({"token": "***", "n": ["***"]}, "bad ***")
    assert secret not in repr(dump_state(dsn))


def test_rows_that_cannot_be_read_are_one_state_error_and_reset_repairs_them(
    store: PostgresStateStore, dsn: str
) -> None:
    """A failed record's raw text that is not JSON, counts that are not an object, a checkpoint that
    is not JSON: `show` raises one StateError naming the table and `etl state reset`; the reset
    drops or clears them."""
    run = RunRecord("r1", started_at="t1", counts={"created": 1})
    store.start_run("p", run)
    commit(store, failed=[FailedRecord("b", {"x": 1}, "e")])
    store.finish_run("p", run, watermark=5, clear_checkpoint=False)
    cases = [
        ("UPDATE etl_state.failed SET raw='{'", "a failed record's raw text in table failed is not JSON"),
        (
            "UPDATE etl_state.runs SET counts='[1]'",
            "the counts column of run r1 in table runs is a list, not an object",
        ),
        ("UPDATE etl_state.pipelines SET checkpoint='x'", "the checkpoint in table pipelines is not JSON"),
    ]
    for sql, message in cases:
        query(dsn, sql)
        with pytest.raises(StateError, match=rf"^state store .*: pipeline 'p': {message}.*`etl state reset p`"):
            store.show("p")
        store.reset("p")
        assert store.show("p")["failed_total"] == 0


LOCKER = """
import sys
from runner.errors import LockError
from runner.state.postgres import PostgresStateStore
store = PostgresStateStore(sys.argv[1])
try:
    with store.lock("p", sys.argv[2]):
        print("locked", flush=True)
        sys.stdin.readline()
except LockError as exc:
    print(exc, file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def locker(dsn: str, run_id: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", LOCKER, dsn, run_id], cwd=ROOT, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def test_two_processes_one_gets_the_lock_the_other_lock_error(store: PostgresStateStore, dsn: str) -> None:
    """Of two processes taking one lock, one holds it and the other exits 4 with LockError; a killed holder frees it."""
    first, second = locker(dsn, "one"), locker(dsn, "two")
    try:
        deadline = time.monotonic() + 30
        while first.poll() is None and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        loser, winner = (first, second) if first.poll() is not None else (second, first)
        _, err = loser.communicate(timeout=30)
        assert loser.returncode == 4 and "already running" in err, err
        assert winner.stdout is not None and winner.stdout.readline() == "locked\n"
        winner.kill()  # SIGKILL: no release; the server frees the lock with the session
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)  # reaps it and closes its pipes
    for _ in range(50):  # the server notices the dead client within moments
        third = locker(dsn, "three")
        assert third.stdout is not None
        if third.stdout.readline() == "locked\n":
            third.communicate("\n", timeout=30)
            assert third.returncode == 0
            return
        third.communicate(timeout=30)
        time.sleep(0.1)
    pytest.fail("the killed holder's lock was never freed")


# --- target ----------------------------------------------------------------------


def target(dsn: str, fields: list[str], table: str = "items", schema: str | None = None) -> PostgresTarget:
    return PostgresTarget(PostgresTargetConfig(dsn=Secret(dsn), table=table, schema=schema), fields=fields)


def rows(dsn: str, table: str = "public.items") -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as db:
        cursor = db.execute(f"SELECT * FROM {table}")
        names = [c.name for c in cursor.description or []]
        return {row[0]: dict(zip(names[1:], row[1:], strict=True)) for row in cursor}


def writes(*records: tuple[str, dict[str, Any]]) -> list[Write]:
    return [Write("create", key, record) for key, record in records]


def test_table_is_created_with_a_text_key_and_jsonb_fields(dsn: str) -> None:
    """A missing table is created in public with external_id text primary key and one jsonb column per field."""
    target(dsn, ["name", "zip"]).close()
    columns = query(dsn, "SELECT column_name, data_type FROM information_schema.columns "
                         "WHERE table_schema='public' AND table_name='items' ORDER BY ordinal_position")
    assert columns == [("external_id", "text"), ("name", "jsonb"), ("zip", "jsonb")]
    assert query(dsn, "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid=i.indrelid "
                      "AND a.attnum = ANY(i.indkey) WHERE i.indrelid='public.items'::regclass AND i.indisprimary") \
        == [("external_id",)]


def test_values_keep_their_json_types(dsn: str) -> None:
    """"07919" stays a string, 7919 an integer, true a boolean, null NULL, lists and objects jsonb."""
    fields = ["zip", "n", "ratio", "flag", "none", "tags", "meta", "missing"]
    writer = target(dsn, fields)
    record = {"zip": "07919", "n": 7919, "ratio": 1.5, "flag": True, "none": None,
              "tags": ["a", 1], "meta": {"k": [1, {"x": None}]}}
    writer.write(writes(("1", record)))
    writer.close()
    assert rows(dsn)["1"] == {**record, "missing": None}
    types = query(dsn, "SELECT jsonb_typeof(zip), jsonb_typeof(n), jsonb_typeof(flag), jsonb_typeof(tags), "
                       "jsonb_typeof(meta), none IS NULL, meta->'k'->>0 FROM items")
    assert types == [("string", "number", "boolean", "array", "object", True, "1")]


def test_a_new_field_adds_a_column(dsn: str) -> None:
    """Opening the target with one more field adds its jsonb column; existing rows get NULL there."""
    first = target(dsn, ["a"])
    first.write(writes(("1", {"a": 1})))
    first.close()
    second = target(dsn, ["a", "b"])
    second.write(writes(("2", {"a": 2, "b": "x"})))
    second.close()
    assert rows(dsn) == {"1": {"a": 1, "b": None}, "2": {"a": 2, "b": "x"}}


def test_upsert_is_idempotent_and_updates_in_place(dsn: str) -> None:
    """Writing a page twice leaves one row per key; a changed record updates its row; a key twice in a page,
    the last wins."""
    writer = target(dsn, ["name"])
    page = writes(("1", {"name": "a"}), ("2", {"name": "b"}))
    writer.write(page)
    writer.write(page)
    writer.write(writes(("2", {"name": "B"}), ("3", {"name": "c"}), ("3", {"name": "C"})))
    writer.close()
    assert rows(dsn) == {"1": {"name": "a"}, "2": {"name": "B"}, "3": {"name": "C"}}


def test_a_page_is_all_or_nothing(dsn: str) -> None:
    """A page with one record the server refuses fails as a whole with TargetError and writes none of its records."""
    writer = target(dsn, ["name"])
    writer.write(writes(("1", {"name": "kept"})))
    bad = writes(("1", {"name": "changed"}), ("2", {"name": "new"}), ("3", {"name": "nul\x00byte"}))
    with pytest.raises(TargetError, match=r"postgres target public\.items"):
        writer.write(bad)
    assert rows(dsn) == {"1": {"name": "kept"}}
    writer.write(writes(("2", {"name": "new"})))  # the connection is usable afterwards
    writer.close()
    assert set(rows(dsn)) == {"1", "2"}


def test_schema_and_odd_names_are_quoted(dsn: str) -> None:
    """A configured schema is created when missing, and table and field names are quoted identifiers."""
    writer = target(dsn, ["Mixed Case", 'quo"te'], table="My Table", schema="crm")
    writer.write(writes(("1", {"Mixed Case": 1, 'quo"te': "q"})))
    writer.close()
    assert rows(dsn, 'crm."My Table"') == {"1": {"Mixed Case": 1, 'quo"te': "q"}}


def test_an_existing_table_without_external_id_is_refused(dsn: str) -> None:
    """A table that exists without an external_id column fails at open with a TargetError naming it."""
    query(dsn, "CREATE TABLE items (id int)")
    with pytest.raises(TargetError, match=r"public\.items.*no external_id column"):
        target(dsn, ["a"])


# --- errors, wiring ------------------------------------------------------------------


def test_errors_never_show_the_password(dsn: str) -> None:
    """Connection errors name host:port/db but never the DSN's password, not even in the chained cause."""
    refused = "postgresql://etl:s3cr3t-pw@127.0.0.1:1/db"
    with pytest.raises(StateError, match=r"127\.0\.0\.1:1/db.*cannot connect") as state_error:
        PostgresStateStore(refused)
    with pytest.raises(TargetError, match=r"public\.t .*127\.0\.0\.1:1/db") as target_error:
        target(refused, ["a"], table="t")
    with pytest.raises(StateError, match="not a valid") as bad_dsn:
        PostgresStateStore("postgresql//etl:s3cr3t-pw@host/db password")
    for error in (state_error.value, target_error.value, bad_dsn.value):
        assert "s3cr3t-pw" not in str(error) and "s3cr3t-pw" not in repr(error.__cause__)


def test_open_store_and_open_target_pick_postgres(dsn: str) -> None:
    """A state `dsn` opens the PostgreSQL store, and a postgres target config opens this writer."""
    store = open_store(StateConfig(dsn=Secret(dsn)))
    assert isinstance(store, PostgresStateStore)
    store.close()
    writer = open_target(PostgresTargetConfig(dsn=Secret(dsn), table="t"), fields=["a"], pipeline="p")
    assert isinstance(writer, PostgresTarget)
    writer.close()


# --- end to end -------------------------------------------------------------------


def test_a_run_with_postgres_state_and_target_lands_once_and_reruns_write_nothing(
    dsn: str, demo_api: Any, tmp_path: Path
) -> None:
    """A pipeline with a postgres target and state writes 1,000 rows once; a dry-run and a rerun change nothing."""
    from runner.engine import run

    api = demo_api(records=1000)
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "version: 1\nname: pg-e2e\n"
        f"source:\n  url: {api.base_url}/items/page\n  records: data\n"
        "  pagination: {type: page, size_param: per_page, size: 100, total_pages: total_pages}\n"
        "mapping:\n  external_id: to_string(id)\n  fields:\n    name: name\n    zip: address.zip\n    tags: tags\n"
        "target:\n  type: postgres\n  dsn: ${PG_DSN}\n  table: items\n"
        "state:\n  dsn: ${PG_DSN}\n"
    )
    env = {"PG_DSN": dsn}
    first = run(path, env=env, sleep=lambda s: None)
    assert (first.status, first.counts.created, first.pages) == ("success", 1000, 10)
    assert query(dsn, "SELECT count(*), count(DISTINCT external_id) FROM items") == [(1000, 1000)]
    assert {jsonb_type for (jsonb_type,) in query(dsn, "SELECT DISTINCT jsonb_typeof(zip) FROM items")} == {"string"}
    before = query(dsn, "SELECT * FROM items ORDER BY external_id")
    dry = run(path, env=env, dry_run=True, sleep=lambda s: None, stdout=io.StringIO())
    second = run(path, env=env, sleep=lambda s: None)
    assert (dry.counts.skipped, second.counts.skipped, second.counts.created + second.counts.updated) == (1000, 1000, 0)
    assert query(dsn, "SELECT * FROM items ORDER BY external_id") == before
    assert [r[0] for r in query(dsn, "SELECT status FROM etl_state.runs ORDER BY started_at")] == ["success", "success"]


def test_nan_into_a_postgres_target_fails_its_record_not_the_page(tmp_path: Path, dsn: str) -> None:
    """Reliability D9: jsonb refuses NaN, and the whole page failed on every run; now the
    record holding it fails alone and the others land (PostgreSQL takes a 2^63 integer)."""
    import httpx

    from conftest import whole, write_pipeline_file
    from runner.engine import run

    body = '{"data": [{"id": 1, "v": 1.5}, {"id": 2, "v": NaN}, {"id": 3, "v": 9223372036854775808}]}'
    path = write_pipeline_file(
        tmp_path, "https://api.test",
        source={"url": "https://api.test/items", "pagination": whole({"type": "none"})},
        mapping={"fields": whole({"v": "v"})}, target=whole({"type": "postgres", "dsn": dsn, "table": "items"}),
    )
    result = run(path, transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body.encode())))
    assert (result.status, result.counts.created, result.counts.failed) == ("partial", 2, 1)
    with psycopg.connect(dsn) as db:
        rows = dict(db.execute("SELECT external_id, v::text FROM items").fetchall())
    assert rows == {"1": "1.5", "3": "9223372036854775808"}
