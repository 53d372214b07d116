"""Many rows in one SQLite statement: `INSERT ... VALUES (...), (...), ... [ON CONFLICT ...]`.

Why not `executemany`: Python's sqlite3 releases the GIL around every step,
that is once per row, and while another thread is busy (the page fetcher,
the mapper) every re-acquire waits for it: a convoy. Measured on 100,000
rows in pages of 100 with one busy thread beside: executemany 163 s, one
multi-row statement per page 12 s (0.49 s and 0.45 s with no thread beside).
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from typing import Any, Sequence

# SQLite's limit on `?` per statement: 32766 since 3.32, 999 before
MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


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
