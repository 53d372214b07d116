"""Tests of runner.db.sqlite: many rows per statement, split at SQLite's variable limit."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from runner.db import sqlite as sqlitebatch
from runner.db.sqlite import insert_rows


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v)")
    yield connection
    connection.close()


def test_rows_over_the_variable_limit_are_split_and_all_land(monkeypatch: pytest.MonkeyPatch) -> None:
    """More rows than one statement may bind are sent as several statements, none lost."""
    statements: list[str] = []
    monkeypatch.setattr(sqlitebatch, "MAX_VARIABLES", 10)
    traced = sqlite3.connect(":memory:")
    traced.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v)")
    traced.set_trace_callback(statements.append)
    insert_rows(traced, "INSERT INTO t", [(str(i), i) for i in range(23)])
    assert traced.execute("SELECT COUNT(*), SUM(v) FROM t").fetchone() == (23, sum(range(23)))
    assert len([s for s in statements if s.startswith("INSERT")]) == 5  # 5 rows of 2 per statement
    traced.close()


def test_upsert_tail_applies_to_every_row(db: sqlite3.Connection) -> None:
    """The ON CONFLICT tail updates existing keys and inserts new ones in the same statement."""
    insert_rows(db, "INSERT INTO t", [("a", 1), ("b", 2)])
    insert_rows(db, "INSERT INTO t", [("a", 10), ("c", 3)], "ON CONFLICT (k) DO UPDATE SET v=excluded.v")
    assert db.execute("SELECT k, v FROM t ORDER BY k").fetchall() == [("a", 10), ("b", 2), ("c", 3)]


def test_no_rows_sends_nothing(db: sqlite3.Connection) -> None:
    """An empty page runs no statement at all."""
    insert_rows(db, "INSERT INTO t", [])
    assert db.execute("SELECT COUNT(*) FROM t").fetchone() == (0,)
