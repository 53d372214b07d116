"""Typed fields end to end: a real API on 127.0.0.1 -> typed columns in SQLite and in a real
PostgreSQL (tests/pgserver.py), through the writer process and inline; the converted values
in the jsonl and http targets; rejected values as failed records (exit 3); `required`; the
column-type conflict (exit 1, nothing written); decimals stored exactly."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from conftest import whole, write_pipeline_file
from runner import run
from runner.dev.fake_crm import FakeCrm
from runner.dev.localserver import Handler, LocalServer
from runner.errors import EtlError, TargetError
from runner.state.sqlite import SqliteStateStore

NO_WAIT = {"sleep": lambda seconds: None}
BIG_DECIMAL = "12345678901234567890.123456789"  # more digits than a float keeps

TYPED = {
    "s": {"path": "s", "type": "string"},
    "i": {"path": "i", "type": "integer"},
    "n": {"path": "n", "type": "number"},
    "d": {"path": "d", "type": "decimal"},
    "b": {"path": "b", "type": "boolean"},
    "t": {"path": "t", "type": "timestamp"},
    "dt": {"path": "dt", "type": "date"},
    "j": {"path": "j", "type": "json"},
    "raw": "raw",  # untyped, beside them
}
# every type in another form than the one it writes
GOOD = (
    '{"id": 1, "s": 42, "i": "42", "n": "4.5", "d": "19.99", "b": "TRUE", "t": "2024-05-01T10:00:00+02:00",'
    ' "dt": "2024-05-01T23:30:00-02:00", "j": {"a": [1, 2]}, "raw": 7}'
)
GOOD2 = (
    f'{{"id": 2, "s": "x", "i": 7.0, "n": 2, "d": {BIG_DECIMAL}, "b": 0, "t": 1714550400.25,'
    ' "dt": "2024-05-01", "j": "abc", "raw": "07919"}'
)
NULLS = '{"id": 3}'
# one rejected value per record: (field, JSON literal, the type's name)
BAD = [
    ("s", "[1]", "string"),
    ("s", '{"a": 1}', "string"),
    ("i", '"abc"', "integer"),
    ("i", "1.5", "integer"),
    ("i", "true", "integer"),
    ("i", "9223372036854775808", "integer"),
    ("n", '"abc"', "number"),
    ("n", "false", "number"),
    ("d", '"abc"', "decimal"),
    ("d", '"NaN"', "decimal"),
    ("b", '"yes"', "boolean"),
    ("b", "2", "boolean"),
    ("t", '"yesterday"', "timestamp"),
    ("t", "true", "timestamp"),
    ("dt", '"2024-02-30"', "date"),
    ("dt", "[1]", "date"),
]


def body(*records: str) -> bytes:
    return ("[" + ", ".join(records) + "]").encode()


def bad_records() -> list[str]:
    return [f'{{"id": {100 + k}, "{name}": {literal}}}' for k, (name, literal, _) in enumerate(BAD)]


class _Handler(Handler):
    do_GET = Handler.dispatch


class Api(LocalServer):
    """GET /records answers `self.body` as given: the test decides every number's literal."""

    handler_class = _Handler

    def __init__(self) -> None:
        super().__init__()
        self.body = b"[]"

    def handle(self, handler: Handler) -> None:
        handler.send_reply(200, self.body)


@pytest.fixture
def api() -> Iterator[Api]:
    server = Api()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["process", "inline"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a database target is written: the writer process, and in-process."""
    monkeypatch.setenv("ETL_WRITER", request.param)
    return str(request.param)


def pipeline(tmp_path: Path, api: Api, target: dict[str, Any], fields: dict[str, Any] | None = None) -> Path:
    return write_pipeline_file(
        tmp_path, api.base_url,
        source=whole({"url": "{base_url}/records"}),
        mapping=whole({"external_id": "to_string(id)", "fields": fields or TYPED}),
        target=whole(target),
    )


def sqlite_target(tmp_path: Path) -> dict[str, Any]:
    return {"type": "sqlite", "path": str(tmp_path / "out.db"), "table": "items"}


def sqlite_rows(tmp_path: Path, columns: str = "*") -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "out.db") as db:
        return db.execute(f"SELECT {columns} FROM items ORDER BY CAST(external_id AS INTEGER)").fetchall()


def failed_errors(tmp_path: Path) -> dict[str, str]:
    store = SqliteStateStore(tmp_path / "state.db")
    try:
        shown = store.show("test", failed=1000)
    finally:
        store.close()
    return {f["external_id"]: f["error"] for f in shown["failed"]}


def assert_bad_records_failed(tmp_path: Path) -> None:
    errors = failed_errors(tmp_path)
    assert len(errors) == len(BAD)
    for k, (name, literal, type_) in enumerate(BAD):
        shown = json.dumps(json.loads(literal), separators=(",", ":"))
        assert errors[str(100 + k)].startswith(f"field {name!r} ({type_}): cannot convert {shown}: ")


# --- SQLite ------------------------------------------------------------------------------


def test_sqlite_typed_columns_hold_converted_values_and_bad_values_fail_alone(
    tmp_path: Path, api: Api, writer: str
) -> None:
    """Typed columns (PRAGMA table_info), the converted values with their SQLite types, the
    untyped column as before; each rejected kind is one failed record and the run exits 3."""
    api.body = body(GOOD, GOOD2, NULLS, *bad_records())
    result = run(pipeline(tmp_path, api, sqlite_target(tmp_path)), **NO_WAIT)
    assert result.exit_code == 3 and result.counts.created == 3 and result.counts.failed == len(BAD)
    with sqlite3.connect(tmp_path / "out.db") as db:
        declared = {row[1]: row[2] for row in db.execute("PRAGMA table_info(items)")}
    assert declared == {
        "external_id": "TEXT", "s": "TEXT", "i": "INTEGER", "n": "REAL", "d": "TEXT", "b": "INTEGER",
        "t": "TEXT", "dt": "TEXT", "j": "TEXT", "raw": "",
    }
    assert sqlite_rows(tmp_path) == [
        ("1", "42", 42, 4.5, "19.99", 1, "2024-05-01T08:00:00Z", "2024-05-02", '{"a":[1,2]}', 7),
        ("2", "x", 7, 2.0, BIG_DECIMAL, 0, "2024-05-01T08:00:00.25Z", "2024-05-01", '"abc"', "07919"),
        ("3", None, None, None, None, None, None, None, None, None),
    ]
    kinds = "typeof(s), typeof(i), typeof(n), typeof(d), typeof(b), typeof(raw)"
    assert sqlite_rows(tmp_path, kinds)[:2] == [
        ("text", "integer", "real", "text", "integer", "integer"),
        ("text", "integer", "real", "text", "integer", "text"),
    ]
    assert_bad_records_failed(tmp_path)


def test_the_same_values_in_another_form_are_no_change_on_the_next_run(
    tmp_path: Path, api: Api, writer: str
) -> None:
    """"42" then 42, "19.99" then 19.99, one instant in two offsets: the hash covers the
    converted values, so the second run updates nothing."""
    path = pipeline(tmp_path, api, sqlite_target(tmp_path))
    api.body = body('{"id": 1, "i": "42", "d": "19.99", "t": "2024-05-01T10:00:00+02:00", "b": "true"}')
    assert run(path, **NO_WAIT).counts.created == 1
    api.body = body('{"id": 1, "i": 42, "d": 19.990, "t": 1714550400, "b": true}')
    second = run(path, **NO_WAIT)
    assert (second.counts.created, second.counts.updated, second.counts.skipped) == (0, 0, 1)
    api.body = body('{"id": 1, "i": 43, "d": 19.99, "t": 1714550400, "b": true}')
    assert run(path, **NO_WAIT).counts.updated == 1  # a real change is one
    assert sqlite_rows(tmp_path, "i, d") == [(43, "19.99")]


def test_required_fails_a_null_or_missing_value(tmp_path: Path, api: Api, writer: str) -> None:
    """`required: true`: a null and a missing value fail their records; a value lands."""
    fields = {"amount": {"path": "amount", "type": "decimal", "required": True}, "note": "note"}
    api.body = body('{"id": 1, "amount": "5.10"}', '{"id": 2, "amount": null}', '{"id": 3, "note": "x"}')
    result = run(pipeline(tmp_path, api, sqlite_target(tmp_path), fields), **NO_WAIT)
    assert result.exit_code == 3 and result.counts.created == 1 and result.counts.failed == 2
    assert sqlite_rows(tmp_path) == [("1", "5.1", None)]
    assert set(failed_errors(tmp_path).values()) == {"field 'amount' (decimal) is required but is null or missing"}


def test_a_typed_field_over_a_column_of_another_type_fails_before_any_write(
    tmp_path: Path, api: Api, writer: str
) -> None:
    """A column made untyped by an earlier run, then `type: integer`: exit 1 naming the table,
    the column, the type it has and the type asked for; the table and the state are unchanged."""
    api.body = body('{"id": 1, "i": "42", "d": "1"}')
    untyped = {"i": "i", "d": "d"}
    assert run(pipeline(tmp_path, api, sqlite_target(tmp_path), untyped), **NO_WAIT).counts.created == 1
    api.body = body('{"id": 1, "i": "43", "d": "1"}', '{"id": 2, "i": 5, "d": "2"}')
    typed = {"i": {"path": "i", "type": "integer"}, "d": "d"}
    with pytest.raises(TargetError) as caught:
        run(pipeline(tmp_path, api, sqlite_target(tmp_path), typed), **NO_WAIT)
    assert caught.value.exit_code == 1
    message = str(caught.value)
    assert "table items" in message and "column 'i' has type none (untyped)" in message
    assert "asks for INTEGER (type: integer)" in message
    assert sqlite_rows(tmp_path) == [("1", "42", "1")]


def test_a_conflict_with_a_table_made_by_hand_names_both_types(tmp_path: Path, api: Api, writer: str) -> None:
    """A REAL column where a decimal (TEXT) is asked for: refused, nothing inserted."""
    with sqlite3.connect(tmp_path / "out.db") as db:
        db.execute("CREATE TABLE items (external_id TEXT PRIMARY KEY, d REAL)")
    api.body = body('{"id": 1, "d": "19.99"}')
    with pytest.raises(TargetError, match=r"column 'd' has type REAL, but field 'd' asks for TEXT \(type: decimal\)"):
        run(pipeline(tmp_path, api, sqlite_target(tmp_path), {"d": TYPED["d"]}), **NO_WAIT)
    assert sqlite_rows(tmp_path) == []


def test_an_untyped_pipeline_keeps_untyped_columns_and_float_values(tmp_path: Path, api: Api) -> None:
    """Untyped fields behave as before: no declared type, 19.99 a REAL, "42" TEXT."""
    api.body = body(f'{{"id": 1, "d": 19.99, "i": "42", "big": {BIG_DECIMAL}}}')
    run(pipeline(tmp_path, api, sqlite_target(tmp_path), {"d": "d", "i": "i", "big": "big"}), **NO_WAIT)
    with sqlite3.connect(tmp_path / "out.db") as db:
        assert {row[1]: row[2] for row in db.execute("PRAGMA table_info(items)")} == {
            "external_id": "TEXT", "d": "", "i": "", "big": "",
        }
    assert sqlite_rows(tmp_path, "d, typeof(d), i, typeof(i), typeof(big)") == [(19.99, "real", "42", "text", "real")]


# --- jsonl and http ---------------------------------------------------------------------


def test_the_jsonl_target_writes_converted_values(tmp_path: Path, api: Api) -> None:
    """The JSON lines hold the converted values; a decimal is its exact string."""
    api.body = body(GOOD, GOOD2)
    out = tmp_path / "out.jsonl"
    run(pipeline(tmp_path, api, {"type": "jsonl", "path": str(out)}), **NO_WAIT)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["record"] for line in lines] == [
        {"s": "42", "i": 42, "n": 4.5, "d": "19.99", "b": True, "t": "2024-05-01T08:00:00Z", "dt": "2024-05-02",
         "j": {"a": [1, 2]}, "raw": 7},
        {"s": "x", "i": 7, "n": 2, "d": BIG_DECIMAL, "b": False, "t": "2024-05-01T08:00:00.25Z", "dt": "2024-05-01",
         "j": "abc", "raw": "07919"},
    ]


def test_the_http_target_sends_converted_values(tmp_path: Path, api: Api) -> None:
    """The request bodies hold the converted values; a rejected value is never sent."""
    crm = FakeCrm()
    crm.start()
    try:
        api.body = body(GOOD2, '{"id": 9, "i": "x"}')
        upsert = {"method": "PUT", "path": "/contacts/by-key/{external_id}"}
        target = {"type": "http", "base_url": crm.base_url, "upsert": upsert}
        result = run(pipeline(tmp_path, api, target), **NO_WAIT)
        sent = [r.body for r in crm.writes()]
    finally:
        crm.stop()
    assert result.exit_code == 3 and result.counts.failed == 1
    assert sent == [
        {"s": "x", "i": 7, "n": 2, "d": BIG_DECIMAL, "b": False, "t": "2024-05-01T08:00:00.25Z", "dt": "2024-05-01",
         "j": "abc", "raw": "07919"},
    ]


# --- PostgreSQL ---------------------------------------------------------------------------

PG_TYPES = {
    "external_id": "text", "s": "text", "i": "bigint", "n": "double precision", "d": "numeric", "b": "boolean",
    "t": "timestamp with time zone", "dt": "date", "j": "jsonb", "raw": "jsonb",
}


@pytest.fixture
def dsn(pg_admin: str) -> Iterator[str]:
    import pgserver

    with pgserver.fresh_database(pg_admin) as url:
        yield url


def pg(dsn: str, text: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as db:
        cursor = db.execute(text)
        return cursor.fetchall() if cursor.description else []


def pg_target(dsn: str) -> dict[str, Any]:
    return {"type": "postgres", "dsn": dsn, "table": "items"}


def test_postgres_typed_columns_hold_converted_values_and_bad_values_fail_alone(
    tmp_path: Path, api: Api, dsn: str, writer: str
) -> None:
    """information_schema shows bigint, numeric, timestamptz...; the values are stored in
    them ("19.99" as numeric 19.99 exactly, the 29-digit decimal too); each rejected kind is
    a failed record and the run exits 3."""
    api.body = body(GOOD, GOOD2, NULLS, *bad_records())
    result = run(pipeline(tmp_path, api, pg_target(dsn)), **NO_WAIT)
    assert result.exit_code == 3 and result.counts.created == 3 and result.counts.failed == len(BAD)
    columns = pg(dsn, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'items'")
    assert dict(columns) == PG_TYPES
    rows = pg(dsn, "SELECT external_id, s, i, n, d, b, t, dt, j, raw, d::text FROM items ORDER BY external_id")
    assert rows == [
        ("1", "42", 42, 4.5, Decimal("19.99"), True, datetime(2024, 5, 1, 8, tzinfo=timezone.utc),
         date(2024, 5, 2), {"a": [1, 2]}, 7, "19.99"),
        ("2", "x", 7, 2.0, Decimal(BIG_DECIMAL), False, datetime(2024, 5, 1, 8, 0, 0, 250000, tzinfo=timezone.utc),
         date(2024, 5, 1), "abc", "07919", BIG_DECIMAL),
        ("3", None, None, None, None, None, None, None, None, None, None),
    ]
    assert pg(dsn, "SELECT count(*) FROM items WHERE d = 19.99 AND t > '2024-05-01 07:00Z'") == [(1,)]
    assert_bad_records_failed(tmp_path)


def test_postgres_same_values_in_another_form_are_no_change(tmp_path: Path, api: Api, dsn: str) -> None:
    """"42" then 42 for an integer column: the second run writes nothing."""
    path = pipeline(tmp_path, api, pg_target(dsn), {"i": TYPED["i"], "d": TYPED["d"]})
    api.body = body('{"id": 1, "i": "42", "d": "19.99"}')
    assert run(path, **NO_WAIT).counts.created == 1
    api.body = body('{"id": 1, "i": 42, "d": 19.99}')
    assert run(path, **NO_WAIT).counts.skipped == 1
    assert pg(dsn, "SELECT i, d::text FROM items") == [(42, "19.99")]


def test_postgres_a_jsonb_column_where_a_type_is_asked_for_fails_before_any_write(
    tmp_path: Path, api: Api, dsn: str, writer: str
) -> None:
    """The jsonb column an untyped run made, then `type: timestamp`: exit 1 naming the table,
    the column and both types; no row changes."""
    api.body = body('{"id": 1, "t": "2024-05-01T08:00:00Z"}')
    run(pipeline(tmp_path, api, pg_target(dsn), {"t": "t"}), **NO_WAIT)
    api.body = body('{"id": 1, "t": "2024-06-01T08:00:00Z"}', '{"id": 2, "t": "2024-06-01T08:00:00Z"}')
    with pytest.raises(EtlError) as caught:
        run(pipeline(tmp_path, api, pg_target(dsn), {"t": TYPED["t"]}), **NO_WAIT)
    assert caught.value.exit_code == 1
    assert "public.items" in str(caught.value)
    assert "column 't' has type jsonb, but field 't' asks for timestamptz (type: timestamp)" in str(caught.value)
    assert pg(dsn, "SELECT external_id, t FROM items") == [("1", "2024-05-01T08:00:00Z")]


def test_postgres_a_numeric_column_with_a_scale_is_taken(tmp_path: Path, api: Api, dsn: str) -> None:
    """A user-made numeric(12,2) column is a numeric: the decimal field writes into it."""
    pg(dsn, "CREATE TABLE items (external_id text PRIMARY KEY, d numeric(12,2))")
    api.body = body('{"id": 1, "d": "19.99"}')
    run(pipeline(tmp_path, api, pg_target(dsn), {"d": TYPED["d"]}), **NO_WAIT)
    assert pg(dsn, "SELECT d::text FROM items") == [("19.99",)]


def test_postgres_one_page_of_integers_and_numbers_of_every_size(tmp_path: Path, api: Api, dsn: str) -> None:
    """Small and 64-bit integers, nulls, floats and integers past 64 bits for a number column,
    in one page (one prepared statement): each lands in its bigint or double precision column."""
    fields = {"i": TYPED["i"], "n": TYPED["n"]}
    api.body = body(
        '{"id": 1, "i": 1, "n": 1}', f'{{"id": 2, "i": {2**40}, "n": 1.5}}', '{"id": 3, "i": null, "n": null}',
        f'{{"id": 4, "i": "{-(2**63)}", "n": 100000000000000000000}}',
    )
    assert run(pipeline(tmp_path, api, pg_target(dsn), fields), **NO_WAIT).counts.created == 4
    assert pg(dsn, "SELECT i, n FROM items ORDER BY external_id") == [
        (1, 1.0), (2**40, 1.5), (None, None), (-(2**63), 1e20),
    ]
