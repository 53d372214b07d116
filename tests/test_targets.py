"""Tests of the SQLite and JSONL targets (the PostgreSQL and http targets have their own files)."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest

from runner.errors import TargetError
from runner.model import JsonlTargetConfig, SqliteTargetConfig
from runner.targets import Write, dry_run_target, open_target


def rows(path: Path, table: str = "t") -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT * FROM {table} ORDER BY external_id").fetchall()
    finally:
        db.close()


def test_sqlite_values_keep_their_json_types(tmp_path: Path) -> None:
    """Strings stay TEXT ("07919"), ints INTEGER, floats REAL, booleans 0/1, lists JSON text."""
    target = open_target(SqliteTargetConfig(tmp_path / "t.db", "t"), fields=["zip", "n", "x", "ok", "tags", "none"])
    target.write([Write("create", "1", {"zip": "07919", "n": 7919, "x": 1.5, "ok": True, "tags": ["a"], "none": None})])
    target.close()
    db = sqlite3.connect(tmp_path / "t.db")
    types = db.execute(
        "SELECT typeof(zip), typeof(n), typeof(x), typeof(ok), typeof(tags), typeof(none) FROM t"
    ).fetchone()
    db.close()
    assert types == ("text", "integer", "real", "integer", "text", "null")
    assert rows(tmp_path / "t.db") == [("1", "07919", 7919, 1.5, 1, '["a"]', None)]


def test_sqlite_upsert_is_idempotent(tmp_path: Path) -> None:
    """Writing the same page twice leaves one row per key with the last values."""
    target = open_target(SqliteTargetConfig(tmp_path / "t.db", "t"), fields=["v"])
    page = [Write("create", "a", {"v": 1}), Write("create", "b", {"v": 2})]
    target.write(page)
    target.write(page)
    target.write([Write("update", "a", {"v": 10})])
    target.close()
    assert rows(tmp_path / "t.db") == [("a", 10), ("b", 2)]


def test_sqlite_new_field_adds_a_column(tmp_path: Path) -> None:
    """A field added to the mapping adds a column and keeps the existing rows."""
    first = open_target(SqliteTargetConfig(tmp_path / "t.db", "t"), fields=["v"])
    first.write([Write("create", "a", {"v": 1})])
    first.close()
    second = open_target(SqliteTargetConfig(tmp_path / "t.db", "t"), fields=["v", "w"])
    second.write([Write("create", "b", {"v": 2, "w": "x"})])
    second.close()
    assert rows(tmp_path / "t.db") == [("a", 1, None), ("b", 2, "x")]


def test_sqlite_read_only_file_is_a_target_error(tmp_path: Path) -> None:
    """A target file that cannot be written gives a TargetError naming the file and table."""
    path = tmp_path / "t.db"
    open_target(SqliteTargetConfig(path, "t"), fields=["v"]).close()
    uri_target = open_target(SqliteTargetConfig(path, "t"), fields=["v"])
    uri_target._db.execute("PRAGMA query_only = ON")
    with pytest.raises(TargetError, match=r"t\.db table t"):
        uri_target.write([Write("create", "a", {"v": 1})])
    uri_target.close()


def test_jsonl_appends_one_line_per_write(tmp_path: Path) -> None:
    """The jsonl target appends op/external_id/record lines and never rewrites earlier ones."""
    path = tmp_path / "out" / "w.jsonl"
    for value in (1, 2):
        target = open_target(JsonlTargetConfig(str(path)), fields=["v"])
        target.write([Write("create" if value == 1 else "update", "a", {"v": value})])
        target.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {"op": "create", "external_id": "a", "record": {"v": 1}},
        {"op": "update", "external_id": "a", "record": {"v": 2}},
    ]


def test_jsonl_dash_is_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """`path: -` writes the lines to stdout and does not close it."""
    target = open_target(JsonlTargetConfig("-"), fields=[])
    target.write([Write("create", "a", {"v": "07919"})])
    target.close()
    assert json.loads(capsys.readouterr().out) == {"op": "create", "external_id": "a", "record": {"v": "07919"}}


def test_dry_run_target_prints_what_jsonl_would_write() -> None:
    """The dry-run target prints exactly the jsonl target's lines to the stream it is given."""
    stream = io.StringIO()
    target = dry_run_target(stream)
    target.write([Write("update", "7", {"a": [1]})])
    target.close()
    assert stream.getvalue() == '{"op":"update","external_id":"7","record":{"a":[1]}}\n'


def test_two_writers_opening_one_new_table_at_once_both_succeed(tmp_path: Path) -> None:
    """The engine and its writer process open the target together on a first run: creating the
    table and adding 300 columns is one transaction, so neither fails on a column the other added."""
    import threading

    from runner.model import SqliteTargetConfig
    from runner.targets.sqlite import SqliteTarget

    fields = [f"f{i}" for i in range(300)]

    def open_it(config: SqliteTargetConfig, errors: list[BaseException]) -> None:
        try:
            SqliteTarget(config, fields=fields).close()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    for attempt in range(5):
        config = SqliteTargetConfig(tmp_path / f"race-{attempt}.db", "items")
        errors: list[BaseException] = []
        threads = [threading.Thread(target=open_it, args=(config, errors)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
