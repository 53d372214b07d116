"""Tests of runner.db.sqlite's `connect` (WAL, the retried WAL switch) and `transaction`."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.db.sqlite import connect, transaction


@pytest.fixture
def locked_file(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A file in rollback-journal mode whose write lock another connection holds: the moment
    at which SQLite refuses a WAL switch at once, busy timeout or not."""
    path = tmp_path / "db" / "x.db"
    path.parent.mkdir()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # a timer commits
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    yield path, holder
    if holder.in_transaction:
        holder.execute("ROLLBACK")
    holder.close()


def test_connect_makes_the_folder_and_opens_in_wal_with_synchronous_normal(tmp_path: Path) -> None:
    """A new file in a new folder is created in WAL mode, synchronous NORMAL unless FULL is asked."""
    db = connect(tmp_path / "new" / "x.db", timeout=1)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert db.execute("PRAGMA synchronous").fetchone() == (1,)
    assert db.isolation_level is None
    db.close()
    full = connect(tmp_path / "new" / "x.db", timeout=1, synchronous="FULL")
    assert full.execute("PRAGMA synchronous").fetchone() == (2,)
    full.close()


def test_the_wal_switch_is_retried_while_another_connection_writes(
    locked_file: tuple[Path, sqlite3.Connection],
) -> None:
    """A WAL switch that meets another connection's write lock is retried until that commits."""
    path, holder = locked_file
    released = threading.Timer(0.3, holder.execute, ("COMMIT",))
    plain = sqlite3.connect(path, isolation_level=None, timeout=5)
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        plain.execute("PRAGMA journal_mode=WAL")  # the cause: no busy wait on this pragma
    plain.close()
    started = time.monotonic()
    released.start()
    try:
        db = connect(path, timeout=5)
    finally:
        released.join()
    assert time.monotonic() - started >= 0.25
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


def test_the_wal_switch_gives_up_after_the_timeout(locked_file: tuple[Path, sqlite3.Connection]) -> None:
    """While the write lock stays held, connect fails "database is locked" once the timeout has passed."""
    path, _ = locked_file
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        connect(path, timeout=0.3)
    assert 0.1 <= time.monotonic() - started < 2


def test_transaction_commits_or_rolls_back(tmp_path: Path) -> None:
    """The block's writes are committed when it ends, and rolled back when it raises."""
    db = connect(tmp_path / "x.db", timeout=1)
    db.execute("CREATE TABLE t (x)")
    with transaction(db) as tx:
        tx.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ValueError, match="stop"), transaction(db):
        db.execute("INSERT INTO t VALUES (2)")
        raise ValueError("stop")
    assert not db.in_transaction
    assert db.execute("SELECT x FROM t").fetchall() == [(1,)]
    db.close()


def test_transaction_takes_the_write_lock_at_begin(tmp_path: Path) -> None:
    """Inside the block another connection cannot start writing (BEGIN IMMEDIATE)."""
    db = connect(tmp_path / "x.db", timeout=1)
    other = connect(tmp_path / "x.db", timeout=0.05)
    with transaction(db), pytest.raises(sqlite3.OperationalError, match="database is locked"):
        other.execute("BEGIN IMMEDIATE")
    db.close(), other.close()


def test_an_error_after_sqlite_rolled_back_itself_is_not_hidden(tmp_path: Path) -> None:
    """When the transaction has already ended, the block's own error comes out, not a failed ROLLBACK."""
    db = connect(tmp_path / "x.db", timeout=1)
    with pytest.raises(ValueError, match="the real error"), transaction(db):
        db.execute("ROLLBACK")  # as SQLite does by itself on SQLITE_FULL or SQLITE_IOERR
        raise ValueError("the real error")
    db.close()
