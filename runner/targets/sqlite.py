"""The SQLite target: a table keyed by `external_id`, one batched upsert per page.

Columns are declared without a type, so SQLite keeps each value's own type:
"07919" stays TEXT, 7919 stays INTEGER; lists and objects are JSON text.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Sequence

from runner.errors import TargetError
from runner.model import SqliteTarget
from runner.targets.base import Write, WriteResult, json_cell


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SqliteTargetWriter:
    def __init__(self, config: SqliteTarget, *, fields: list[str]) -> None:
        self.config = config
        self.fields = fields
        try:
            Path(config.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(config.path, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._prepare()
        except (sqlite3.Error, OSError) as exc:
            raise TargetError(f"sqlite target {config.path} table {config.table}: {exc}") from exc
        self._sql = self._upsert_sql()

    def _prepare(self) -> None:
        table = quote(self.config.table)
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} (external_id TEXT PRIMARY KEY)")
        have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
        for name in self.fields:
            if name not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {quote(name)}")

    def _upsert_sql(self) -> str:
        columns = ["external_id", *self.fields]
        updates = ", ".join(f"{quote(f)}=excluded.{quote(f)}" for f in self.fields)
        conflict = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        return (
            f"INSERT INTO {quote(self.config.table)} ({', '.join(map(quote, columns))}) "
            f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT (external_id) {conflict}"
        )

    def write(self, writes: Sequence[Write]) -> WriteResult:
        rows = [[w.external_id, *(json_cell(w.record.get(f)) for f in self.fields)] for w in writes]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(self._sql, rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise TargetError(f"sqlite target {self.config.path} table {self.config.table}: {exc}") from exc
        return WriteResult()

    def close(self) -> None:
        self._db.close()
