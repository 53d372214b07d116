"""SQLite for the state store and the target: one way to open a file (`connect`), one
write transaction (`transaction`), and many rows in one statement (`insert_rows`).

`connect` puts the file in WAL mode, so readers never wait for the writer.
Switching to WAL takes an exclusive lock, and SQLite answers SQLITE_BUSY at
once, without the busy handler, when another connection holds the write lock
at that moment: two processes opening one new file fail "database is locked"
whatever the busy timeout. So the switch alone is retried, in short sleeps, for
no longer than the busy timeout would have waited.

`insert_rows` sends `INSERT ... VALUES (...), (...), ... [ON CONFLICT ...]`.
Why not `executemany`: Python's sqlite3 releases the GIL around every step,
that is once per row, and while another thread is busy (the page fetcher,
the mapper) every re-acquire waits for it: a convoy. Measured on 100,000
rows in pages of 100 with one busy thread beside: executemany 163 s, one
multi-row statement per page 12 s (0.49 s and 0.45 s with no thread beside).
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

# SQLite's limit on `?` per statement: 32766 since 3.32, 999 before
MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999

# the WAL switch waits for another connection's write transaction (a migration, a page
# commit: milliseconds), so it is retried after 1 ms, then twice as long each time, up to 50 ms
WAL_RETRY_FIRST = 0.001
WAL_RETRY_MAX = 0.05


def connect(
    path: str | os.PathLike[str], *, timeout: float, synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
) -> sqlite3.Connection:
    """Open (creating it and its folder) a database file in WAL mode, in autocommit mode:
    transactions are explicit (`transaction`). `timeout` bounds every wait for a lock,
    the WAL switch's retries included.

    synchronous=NORMAL syncs the log at checkpoints, not at every commit: a power cut may
    lose the last commits but never corrupts the file. FULL syncs each commit."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=timeout)
    try:
        _use_wal(db, deadline=time.monotonic() + timeout)
        db.execute(f"PRAGMA synchronous={synchronous}")
    except BaseException:
        db.close()
        raise
    return db


def _use_wal(db: sqlite3.Connection, *, deadline: float) -> None:
    """`PRAGMA journal_mode=WAL`, retried on SQLITE_BUSY until `deadline` (see the module's docstring)."""
    delay = WAL_RETRY_FIRST
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() + delay > deadline:
                raise
        # jittered, so that two processes that collided once do not retry in step
        time.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, WAL_RETRY_MAX)


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or one of its extended codes (another connection holds the lock)."""
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11+
    return name.startswith("SQLITE_BUSY") if isinstance(name, str) else "database is locked" in str(exc)


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: BEGIN IMMEDIATE, then COMMIT, or ROLLBACK on any exception.

    IMMEDIATE takes the write lock at BEGIN, waiting up to the busy timeout: a deferred
    transaction that reads first and then writes can meet another writer and fail at
    once with SQLITE_BUSY, since waiting there could deadlock."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        # after some errors (SQLITE_FULL, SQLITE_IOERR) SQLite has rolled back already, and
        # a second ROLLBACK would fail and hide the error that matters
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def insert_rows(db: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]], tail: str = "") -> None:
    """Run `head VALUES (?, ...), ... tail` over `rows` (all of one width) in as few statements as fit."""
    if rows:
        insert_values(db, head, len(rows[0]), list(itertools.chain.from_iterable(rows)), tail)


def insert_values(db: sqlite3.Connection, head: str, width: int, values: list[Any], tail: str = "") -> None:
    """`insert_rows` over rows laid end to end in one flat list: row i is values[i*width:(i+1)*width]."""
    per_statement = max(1, MAX_VARIABLES // width) * width
    for start in range(0, len(values), per_statement):
        chunk = values[start : start + per_statement]
        db.execute(_statement(head, width, len(chunk) // width, tail), chunk)


@functools.lru_cache(maxsize=64)
def _statement(head: str, width: int, count: int, tail: str) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES {', '.join([row] * count)} {tail}".rstrip()
