"""The SQLite target: a table keyed by `external_id`, one batched upsert per page.

Columns of untyped fields are declared without a type, so SQLite keeps each
value's own type: "07919" stays TEXT, 7919 stays INTEGER; lists and objects
are JSON text. A typed field's column is declared with its type (`COLUMN_TYPES`),
and a `json` field's values are all JSON text there ("abc" is '"abc"').
An existing column of another type is an error before any write: the user migrates.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from collections.abc import Mapping
from typing import Any

from runner.db.sqlite import connect, insert_values, transaction
from runner.errors import TargetError
from runner.model import SqliteTargetConfig
from runner.targets.base import DELETED_AT, Write, WriteResult, json_cells, json_text, split_deletes


# failures about the file or its disk, not the data: the message says what to check
DISK_ERRORS = ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_PERM")
DISK_HINT = "check that the path is a file in a writable directory and that the disk has free space"
BUSY_TIMEOUT = 30.0  # seconds to wait for another process's write transaction
# the declared column type of each field type (decimals, timestamps and dates are exact text)
COLUMN_TYPES = {
    "string": "TEXT", "integer": "INTEGER", "number": "REAL", "decimal": "TEXT",
    "boolean": "INTEGER", "timestamp": "TEXT", "date": "TEXT", "json": "TEXT",
}


def quote(name: str) -> str:
    """An SQL identifier, quoted: field names come from the pipeline file."""
    return '"' + name.replace('"', '""') + '"'


class SqliteTarget:
    """Upserts each page into one table of a SQLite file, in one transaction per page."""

    def __init__(
        self, config: SqliteTargetConfig, *, fields: list[str], types: Mapping[str, str] | None = None
    ) -> None:
        self.config = config
        self.fields = fields
        self.types = dict(types or {})
        # columns whose every value is written as JSON text: the `json` fields', by position
        self._json_columns = [i + 1 for i, name in enumerate(fields) if self.types.get(name) == "json"]
        try:
            # FULL, not NORMAL: the state store records a page as written once this commit
            # returns, so the commit must outlive a power cut (the state's may not)
            self._db = connect(config.path, timeout=BUSY_TIMEOUT, synchronous="FULL")
        except (sqlite3.Error, OSError) as exc:
            raise _error(config, exc) from exc
        try:
            self._prepare()
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.Error):
                raise _error(config, exc) from exc
            raise
        self._head, self._tail = self._upsert_sql()

    def _prepare(self) -> None:
        """Create the table and add missing columns in one write transaction, so that two
        processes opening the same table at once (the engine and its writer, or two
        pipelines) cannot both see a column missing and both add it."""
        table = quote(self.config.table)
        with transaction(self._db) as db:
            db.execute(f"CREATE TABLE IF NOT EXISTS {table} (external_id TEXT PRIMARY KEY)")
            have = {row[1]: row[2] for row in db.execute(f"PRAGMA table_info({table})")}
            self._check_types(have)
            for name in self.fields:
                if name not in have:
                    declared = COLUMN_TYPES.get(self.types.get(name, ""), "")
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {quote(name)} {declared}".rstrip())
            if self.config.deletes.mode == "soft" and DELETED_AT not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {quote(DELETED_AT)} TEXT")

    def _check_types(self, have: dict[str, str]) -> None:
        """A typed field's existing column must have its type; else a TargetError, nothing written."""
        for name, type_ in self.types.items():
            wanted = COLUMN_TYPES[type_]
            if name in have and have[name].upper() != wanted:
                raise TargetError(
                    f"sqlite target {self.config.path} table {self.config.table}: column {name!r} has type "
                    f"{have[name] or 'none (untyped)'}, but field {name!r} asks for {wanted} (type: {type_}); "
                    "migrate the column (or the table) yourself, or write to another table"
                )

    def _upsert_sql(self) -> tuple[str, str]:
        """The statement around its VALUES rows: `INSERT INTO t (...)` and `ON CONFLICT ...`."""
        columns = ["external_id", *self.fields]
        updates = ", ".join(f"{quote(f)}=excluded.{quote(f)}" for f in self.fields)
        if self.config.deletes.mode == "soft":  # a key that comes back is no longer deleted
            updates = ", ".join(filter(None, (updates, f"{quote(DELETED_AT)}=NULL")))
        conflict = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        head = f"INSERT INTO {quote(self.config.table)} ({', '.join(map(quote, columns))})"
        return head, f"ON CONFLICT (external_id) {conflict}"

    def write(self, writes: Sequence[Write]) -> WriteResult:
        """Upsert one page in one transaction; TargetError when it fails as a whole."""
        writes, deletes = split_deletes(writes)
        values = self._values(writes)
        width = len(self.fields) + 1
        for column in self._json_columns:
            for i in range(column, len(values), width):
                if values[i] is not None:
                    values[i] = json_text(values[i])
        json_cells(values, width)
        try:
            with transaction(self._db) as db:
                if values:
                    insert_values(db, self._head, width, values, self._tail)
                if deletes:
                    self._delete(db, deletes)
        except sqlite3.Error as exc:
            raise _error(self.config, exc) from exc
        return WriteResult()

    def _delete(self, db: sqlite3.Connection, deletes: list[Write]) -> None:
        """hard: the rows go; soft: `_deleted_at` gets the run's start. A key the table lacks is no error."""
        table = quote(self.config.table)
        if self.config.deletes.mode == "soft":
            db.executemany(
                f"UPDATE {table} SET {quote(DELETED_AT)}=? WHERE external_id=?",
                [(w.record.get(DELETED_AT), w.external_id) for w in deletes],
            )
        else:
            db.executemany(f"DELETE FROM {table} WHERE external_id=?", [(w.external_id,) for w in deletes])

    def _values(self, writes: Sequence[Write]) -> list[Any]:
        """Each write's key and field values, rows laid end to end; a missing field is null."""
        fields = self.fields
        values: list[Any] = []
        append, extend = values.append, values.extend
        for write in writes:
            append(write.external_id)
            extend(map(write.record.get, fields))
        return values

    def close(self) -> None:
        """Close the file; the last page was committed by its write."""
        self._db.close()


def _error(config: SqliteTargetConfig, exc: sqlite3.Error | OSError) -> TargetError:
    """The TargetError for `exc`; a disk or file failure ("disk I/O error") gets its SQLite name and a hint."""
    text = str(exc)
    name: str = getattr(exc, "sqlite_errorname", "")  # Python 3.11+
    if isinstance(exc, OSError) or name.startswith(DISK_ERRORS):
        text += f" ({name}); {DISK_HINT}" if name else f"; {DISK_HINT}"
    return TargetError(f"sqlite target {config.path} table {config.table}: {text}")
