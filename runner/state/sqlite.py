"""The SQLite state store: WAL, one transaction per page, versioned schema migrated on open.

Two processes may open one new file at once (cron pipelines on their first day
share `.etl/state.db`): `runner.db.sqlite.connect` retries the WAL switch, and
the schema version is read again inside the migration's write transaction, so
only the first migrates and the second finds the tables made.

Read-only mode (dry-run) opens an existing file immutably, or an empty
in-memory store when there is none, so it never creates or changes a file. A
file that a killed run left with a write-ahead log is read through it with
`readonly_shm`, so that not even its `-shm` index is written.

Every INSERT names its columns: a column that something else added to a state
table (a misdirected target, a hand edit) cannot shift the values.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from runner.db.sqlite import connect, insert_rows, transaction
from runner.errors import LockError, StateError
from runner.state.base import (
    FailureRow,
    KeyState,
    LockingStore,
    PageCommit,
    RunRecord,
    RunRow,
    build_show,
    live_local_holder,
    log_takeover,
    now_iso,
    pid_alive,
    read_json,
    reset_drops_runs,
    reset_run_id,
    stored_checkpoint,
    stored_failure_key,
    stored_failures,
)

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE pipelines (
        pipeline TEXT PRIMARY KEY, watermark TEXT, checkpoint TEXT, updated_at TEXT);
    CREATE TABLE keys (
        pipeline TEXT NOT NULL, external_id TEXT NOT NULL, hash TEXT, target_id TEXT,
        updated_at TEXT, PRIMARY KEY (pipeline, external_id)) WITHOUT ROWID;
    CREATE TABLE failed (
        pipeline TEXT NOT NULL, fkey TEXT NOT NULL, external_id TEXT, raw TEXT,
        error TEXT, failed_at TEXT, PRIMARY KEY (pipeline, fkey)) WITHOUT ROWID;
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, status TEXT, started_at TEXT,
        finished_at TEXT, counts TEXT);
    CREATE INDEX runs_by_pipeline ON runs (pipeline, started_at);
    CREATE TABLE locks (
        pipeline TEXT PRIMARY KEY, run_id TEXT, pid INTEGER, host TEXT, acquired_at TEXT);
    """,
    # 2: a child resource's work per parent record, recorded with the parent's page
    """
    CREATE TABLE pending (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT NOT NULL, parent_key TEXT NOT NULL,
        parent TEXT NOT NULL, UNIQUE (pipeline, parent_key));
    """,
    # 3: deletes.missing: the run that last read the key (written only by pipelines that use it)
    "ALTER TABLE keys ADD COLUMN seen_run TEXT",
    # 4: deletes.missing on a child resource: the parent a child key was last read under, and
    # the parents whose children a run read completely
    """
    ALTER TABLE keys ADD COLUMN parent_key TEXT;
    CREATE TABLE child_sweeps (
        pipeline TEXT NOT NULL, parent_key TEXT NOT NULL, run_id TEXT NOT NULL,
        PRIMARY KEY (pipeline, parent_key)) WITHOUT ROWID;
    """,
)

_CHUNK = 500  # keys per IN (...) lookup, well under SQLite's variable limit
BUSY_TIMEOUT = 30.0  # seconds to wait for another process's write transaction


class SqliteStateStore(LockingStore):
    """State in one SQLite file (default `.etl/state.db`), shared by all pipelines."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.location = str(self.path)  # for messages: the path as given
        self.where = f"state store {self.location}"
        try:
            # synchronous NORMAL (connect's default), not FULL: a commit lost to a power cut
            # only makes the next run replay its page, which upserts make harmless
            self._db = self._connect_read_only() if read_only else connect(self.path, timeout=BUSY_TIMEOUT)
        except sqlite3.Error as exc:
            raise StateError(f"{self.where}: cannot open: {exc}") from exc
        except OSError as exc:  # the folder cannot be made
            raise StateError(f"{self.where}: cannot open: {_folder_problem(self.path, exc)}") from exc
        self._queries = _Queries(self._db, self.where)
        try:
            self._migrate()
        except sqlite3.Error as exc:
            self._db.close()
            raise StateError(f"state store {self.path}: cannot open: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    def _connect_read_only(self) -> sqlite3.Connection:
        """Read without creating or changing a file: immutably when the file is whole, and
        through its write-ahead log when a killed run left one (its commits live there)."""
        if not self.path.exists():
            return sqlite3.connect(":memory:", isolation_level=None)
        # with a log: read its index (-shm) without writing it, which a plain mode=ro would do
        mode = "mode=ro&readonly_shm=1" if self._has_log() else "mode=ro&immutable=1"
        db = sqlite3.connect(f"{self.path.resolve().as_uri()}?{mode}", uri=True, isolation_level=None)
        if _user_version(db) == 0:  # created, never migrated
            db.close()
            return sqlite3.connect(":memory:", isolation_level=None)
        return db

    def _has_log(self) -> bool:
        """Whether the file has a write-ahead log to read; StateError when its index is gone
        (SQLite would have to create one, and a read-only store creates no file)."""
        wal = Path(f"{self.path}-wal")
        if not wal.exists():
            return False
        if wal.stat().st_size > 0 and not Path(f"{self.path}-shm").exists():
            raise sqlite3.OperationalError(
                f"its write-ahead log {wal.name} has no index ({self.path.name}-shm); "
                "a run that is not a dry run recovers it"
            )
        return True

    def _migrate(self) -> None:
        version = self._checked_version()
        if version == len(MIGRATIONS):
            return
        if self.read_only and version > 0:
            raise StateError(
                f"state store {self.path} has schema version {version}, older than this etl's "
                f"{len(MIGRATIONS)}; run once without --dry-run to migrate it"
            )
        with transaction(self._db) as db:
            # read again under the write lock: another process may have migrated since
            version = self._checked_version()
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    def _checked_version(self) -> int:
        """The file's schema version; StateError when a newer etl wrote it."""
        version = _user_version(self._db)
        if version > len(MIGRATIONS):
            raise StateError(
                f"state store {self.path} has schema version {version}, newer than this etl "
                f"({len(MIGRATIONS)}); upgrade etl"
            )
        return version

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            missing = str(exc).removeprefix("no such table: ")
            if missing != str(exc):
                raise StateError(
                    f"{self.where}: table {missing} is missing: the file is damaged or is not an etl "
                    "state file; move it aside (the next run reads everything again) or use another one"
                ) from exc
            raise StateError(f"{self.where}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._errors(), transaction(self._db) as db:
            yield db

    # --- lock ----------------------------------------------------------------

    def _release(self, pipeline: str, run_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM locks WHERE pipeline=? AND run_id=?", (pipeline, run_id))

    def _acquire(self, pipeline: str, run_id: str) -> None:
        host, pid = socket.gethostname(), os.getpid()
        with self._tx() as db:
            row = db.execute(
                "SELECT run_id, pid, host, acquired_at FROM locks WHERE pipeline=?", (pipeline,)
            ).fetchone()
            if row is not None:
                check_holder(pipeline, row[0], row[1], row[2], row[3], host)
            db.execute(
                "INSERT OR REPLACE INTO locks (pipeline, run_id, pid, host, acquired_at) VALUES (?, ?, ?, ?, ?)",
                (pipeline, run_id, pid, host, now_iso()),
            )

    def unlock(self, pipeline: str, *, force: bool = False) -> bool:
        """Remove the pipeline's lock; True when there was one. A holder alive on this host is
        refused (LockError) unless `force`; one on another host cannot be checked."""
        with self._tx() as db:
            row = db.execute(
                "SELECT run_id, pid, host, acquired_at FROM locks WHERE pipeline=?", (pipeline,)
            ).fetchone()
            if row is None:
                return False
            run_id, pid, host, since = row
            if not force and live_local_holder(pid, host):
                raise LockError(
                    f"pipeline {pipeline!r} is locked by a live process (run {run_id}, pid {pid} on {host}, "
                    f"since {since}); wait for it to finish or stop it (`etl state unlock {pipeline} --force` "
                    "removes the lock anyway, and lets a second run start beside it)"
                )
            db.execute("DELETE FROM locks WHERE pipeline=?", (pipeline,))
        return True

    # --- reads ---------------------------------------------------------------

    def watermark(self, pipeline: str) -> Any:
        with self._errors():
            row = self._queries.pipeline_row(pipeline)
        return None if row is None else row[0]

    def checkpoint(self, pipeline: str) -> str | None:
        with self._errors():
            row = self._queries.pipeline_row(pipeline)
        return None if row is None else row[1]

    def knows(self, pipeline: str) -> bool:
        with self._errors():
            return self._queries.knows(pipeline)

    def key_states(self, pipeline: str, keys: Sequence[str]) -> dict[str, KeyState]:
        found: dict[str, KeyState] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = list(keys[start : start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            with self._errors():
                rows = self._db.execute(
                    f"SELECT external_id, hash, target_id FROM keys "
                    f"WHERE pipeline=? AND external_id IN ({marks})",
                    [pipeline, *chunk],
                ).fetchall()
            found.update((key, KeyState(h, t)) for key, h, t in rows)
        return found

    # --- writes --------------------------------------------------------------

    def commit_page(self, pipeline: str, commit: PageCommit) -> None:
        if self.read_only:
            return
        stamp = now_iso()
        failed = stored_failures(commit.failed)  # no secret in the store: masked before the transaction
        checkpoint = stored_checkpoint(commit.checkpoint)
        with self._tx() as db:
            insert_rows(
                db, "INSERT INTO keys (pipeline, external_id, hash, target_id, updated_at)",
                [(pipeline, key, h, tid, stamp) for key, h, tid in commit.hashes],
                "ON CONFLICT (pipeline, external_id) DO UPDATE SET hash=excluded.hash, "
                "target_id=COALESCE(excluded.target_id, keys.target_id), updated_at=excluded.updated_at",
            )
            if commit.deleted:
                db.executemany(
                    "DELETE FROM keys WHERE pipeline=? AND external_id=?", [(pipeline, key) for key in commit.deleted]
                )
            if commit.seen and commit.sweep is not None:
                db.executemany(
                    "UPDATE keys SET seen_run=? WHERE pipeline=? AND external_id=?",
                    [(commit.sweep, pipeline, key) for key in commit.seen],
                )
            if commit.parent_of:
                db.executemany(
                    "UPDATE keys SET parent_key=? WHERE pipeline=? AND external_id=?",
                    [(parent, pipeline, key) for key, parent in commit.parent_of],
                )
            if commit.swept and commit.sweep is not None:
                db.executemany(
                    "INSERT OR REPLACE INTO child_sweeps (pipeline, parent_key, run_id) VALUES (?, ?, ?)",
                    [(pipeline, parent, commit.sweep) for parent in commit.swept],
                )
            if commit.succeeded and _has_failures(db, pipeline):
                db.executemany(
                    "DELETE FROM failed WHERE pipeline=? AND fkey=?",
                    [(pipeline, stored_failure_key(key)) for key in commit.succeeded],
                )
            db.executemany(
                "INSERT OR REPLACE INTO failed (pipeline, fkey, external_id, raw, error, failed_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(pipeline, *row, stamp) for row in failed],
            )
            if commit.pending:
                db.executemany(
                    "INSERT INTO pending (pipeline, parent_key, parent) VALUES (?, ?, ?) "
                    "ON CONFLICT (pipeline, parent_key) DO UPDATE SET parent=excluded.parent", commit.pending,
                )
            if commit.done:
                db.executemany(
                    "DELETE FROM pending WHERE pipeline=? AND parent_key=?", [(pipeline, key) for key in commit.done]
                )
            self._set_pipeline(db, pipeline, checkpoint=checkpoint)

    def pending_work(self, pipeline: str, *, after: int, limit: int) -> list[tuple[int, str, str]]:
        with self._errors():
            rows: list[tuple[int, str, str]] = self._db.execute(
                "SELECT seq, parent_key, parent FROM pending WHERE pipeline=? AND seq>? ORDER BY seq LIMIT ?",
                (pipeline, after, limit),
            ).fetchall()
        return rows

    def resources(self, pipeline: str) -> list[str]:
        with self._errors():
            rows = self._db.execute(
                "SELECT pipeline FROM pipelines WHERE substr(pipeline, 1, ?)=? UNION "
                "SELECT pipeline FROM runs WHERE substr(pipeline, 1, ?)=? UNION "
                "SELECT pipeline FROM pending WHERE substr(pipeline, 1, ?)=? ORDER BY 1",
                (len(pipeline) + 1, pipeline + "/") * 3,
            ).fetchall()
        return [row[0] for row in rows]

    def count_keys(self, pipeline: str, sweep: str) -> tuple[int, int]:
        with self._errors():
            total, unseen = self._db.execute(
                "SELECT COUNT(*), COUNT(*) - COUNT(CASE WHEN seen_run=? THEN 1 END) FROM keys WHERE pipeline=?",
                (sweep, pipeline),
            ).fetchone()
        return int(total), int(unseen)

    def count_orphans(self, pipeline: str, parent: str, sweep: str) -> tuple[int, int]:
        with self._errors():
            total, missing = self._db.execute(
                f"SELECT COUNT(*), COUNT(CASE WHEN {_ORPHAN} THEN 1 END) FROM keys k WHERE k.pipeline=:child",
                {"child": pipeline, "parent": parent, "sweep": sweep},
            ).fetchone()
        return int(total), int(missing)

    def orphan_keys(self, pipeline: str, parent: str, sweep: str, *, after: str, limit: int) -> list[str]:
        with self._errors():
            rows = self._db.execute(
                f"SELECT external_id FROM keys k WHERE k.pipeline=:child AND k.external_id>:after AND {_ORPHAN} "
                "ORDER BY k.external_id LIMIT :limit",
                {"child": pipeline, "parent": parent, "sweep": sweep, "after": after, "limit": limit},
            ).fetchall()
        return [row[0] for row in rows]

    def unseen_keys(self, pipeline: str, sweep: str, *, after: str, limit: int) -> list[str]:
        with self._errors():
            rows = self._db.execute(
                "SELECT external_id FROM keys WHERE pipeline=? AND external_id>? AND seen_run IS NOT ? "
                "ORDER BY external_id LIMIT ?", (pipeline, after, sweep, limit),
            ).fetchall()
        return [row[0] for row in rows]

    def _set_pipeline(self, db: sqlite3.Connection, pipeline: str, **values: str | None) -> None:
        """Upsert the pipeline's row with `values` (watermark, checkpoint) in one statement."""
        columns = ["pipeline", "updated_at", *values]
        updates = ", ".join(f"{c}=excluded.{c}" for c in columns[1:])
        db.execute(
            f"INSERT INTO pipelines ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT (pipeline) DO UPDATE SET {updates}",
            (pipeline, now_iso(), *values.values()),
        )

    def start_run(self, pipeline: str, run: RunRecord) -> None:
        if self.read_only:
            return
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (run_id, pipeline, status, started_at, counts) VALUES (?, ?, ?, ?, ?)",
                (run.run_id, pipeline, run.status, run.started_at, json.dumps(run.counts)),
            )

    def finish_run(self, pipeline: str, run: RunRecord, *, watermark: Any, clear_checkpoint: bool) -> None:
        if self.read_only:
            return
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status=?, finished_at=?, counts=? WHERE run_id=?",
                (run.status, run.finished_at, json.dumps(run.counts), run.run_id),
            )
            values: dict[str, str | None] = {}
            if watermark is not None:
                values["watermark"] = json.dumps(watermark)
            if clear_checkpoint:
                values["checkpoint"] = None
            self._set_pipeline(db, pipeline, **values)

    def reset(self, pipeline: str) -> None:
        """Under the pipeline's lock (LockError while a run holds it): clear watermark,
        checkpoint, hashes and failures, and drop run rows that cannot be read; keep target
        ids (no duplicates) and the readable run history."""
        names = [pipeline, *self.resources(pipeline)]  # the resources form: each resource's state
        with self.lock(pipeline, reset_run_id()), self._tx() as db:
            for name in names:
                self._reset(db, name)

    def _reset(self, db: sqlite3.Connection, pipeline: str) -> None:
        db.execute("DELETE FROM pending WHERE pipeline=?", (pipeline,))
        db.execute("DELETE FROM child_sweeps WHERE pipeline=?", (pipeline,))
        db.execute("UPDATE pipelines SET watermark=NULL, checkpoint=NULL WHERE pipeline=?", (pipeline,))
        db.execute("UPDATE keys SET hash=NULL WHERE pipeline=?", (pipeline,))
        db.execute("DELETE FROM keys WHERE pipeline=? AND target_id IS NULL", (pipeline,))
        db.execute("DELETE FROM failed WHERE pipeline=?", (pipeline,))
        runs = db.execute("SELECT run_id, counts FROM runs WHERE pipeline=?", (pipeline,)).fetchall()
        unreadable = [(run_id,) for run_id, counts in runs if not _json_object(counts)]
        db.executemany("DELETE FROM runs WHERE run_id=?", unreadable)

    # --- show ----------------------------------------------------------------

    def show(self, pipeline: str, *, runs: int = 10, failed: int = 20) -> dict[str, Any]:
        """Everything `etl state show` prints, as a JSON-ready dict."""
        with self._errors():
            return build_show(self._queries, pipeline, runs=runs, failed=failed, where=self.where)

    def close(self) -> None:
        """Close the file (a lock still held stays, for the next run to take over or refuse)."""
        self._db.close()


class _Queries:
    """The reads `show`, `watermark` and `checkpoint` are made of (runner.state.base.StateQueries)."""

    def __init__(self, db: sqlite3.Connection, where: str) -> None:
        self._db, self._where = db, where

    def pipeline_row(self, pipeline: str) -> tuple[Any, str | None] | None:
        row = self._db.execute(
            "SELECT watermark, checkpoint FROM pipelines WHERE pipeline=?", (pipeline,)
        ).fetchone()
        if row is None:
            return None
        watermark, checkpoint = row
        if watermark is not None:
            watermark = read_json(watermark, self._where, pipeline, "the watermark in table pipelines")
        return watermark, checkpoint

    def knows(self, pipeline: str) -> bool:
        found = self._db.execute(
            " UNION ALL ".join(f"SELECT 1 FROM (SELECT 1 FROM {t} WHERE pipeline=? LIMIT 1)" for t in _TABLES),
            [pipeline] * len(_TABLES),
        ).fetchone()
        return found is not None

    def count(self, table: Literal["keys", "failed", "pending"], pipeline: str) -> int:
        # `table` is one of three names (its type says which), never input
        found: int = self._db.execute(f"SELECT COUNT(*) FROM {table} WHERE pipeline=?", (pipeline,)).fetchone()[0]
        return found

    def lock_holder(self, pipeline: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT run_id, pid, host, acquired_at FROM locks WHERE pipeline=?", (pipeline,)
        ).fetchone()
        return None if row is None else dict(zip(("run_id", "pid", "host", "acquired_at"), row, strict=True))

    def runs(self, pipeline: str, limit: int) -> list[RunRow]:
        rows = self._db.execute(
            "SELECT run_id, status, started_at, finished_at, counts FROM runs "
            "WHERE pipeline=? ORDER BY started_at DESC LIMIT ?", (pipeline, limit),
        )
        return [(*row[:4], self._counts(pipeline, row[0], row[4])) for row in rows]

    def _counts(self, pipeline: str, run_id: str, text: str | None) -> Any:
        if text is None:
            return {}
        what = f"the counts column of run {run_id} in table runs"
        return read_json(text, self._where, pipeline, what, reset_drops_runs)

    def failures(self, pipeline: str, limit: int) -> list[FailureRow]:
        rows: list[FailureRow] = self._db.execute(
            "SELECT external_id, error, failed_at, raw FROM failed WHERE pipeline=? "
            "ORDER BY failed_at DESC LIMIT ?", (pipeline, limit),
        ).fetchall()
        return rows


# every table that holds rows of a pipeline (`knows`)
_TABLES = ("pipelines", "runs", "keys", "failed", "locks", "pending")


# a child key deletes.missing removes: last read under a parent whose children this run read
# completely, and not read now; or under a parent the state no longer holds (deleted)
_ORPHAN = (
    "((k.parent_key IN (SELECT s.parent_key FROM child_sweeps s WHERE s.pipeline=:child AND s.run_id=:sweep) "
    "AND k.seen_run IS NOT :sweep) OR (k.parent_key IS NOT NULL AND NOT EXISTS "
    "(SELECT 1 FROM keys p WHERE p.pipeline=:parent AND p.external_id=k.parent_key)))"
)


def _json_object(text: str | None) -> bool:
    """Whether a run's counts column can be read (NULL reads as no counts)."""
    if text is None:
        return True
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _folder_problem(path: Path, exc: OSError) -> str:
    """Why the state file's folder cannot be made: a file where a folder should be, or the OS's reason."""
    for folder in reversed(path.parents):
        if folder.exists() and not folder.is_dir():
            return f"{folder} is a file, not a folder; move it aside or give another state path"
    return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)


def _user_version(db: sqlite3.Connection) -> int:
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def _has_failures(db: sqlite3.Connection, pipeline: str) -> bool:
    """Most pipelines have no failed records: then a page's successes need no delete."""
    return db.execute("SELECT 1 FROM failed WHERE pipeline=? LIMIT 1", (pipeline,)).fetchone() is not None


def check_holder(pipeline: str, run_id: str, pid: int, host: str, since: str, my_host: str) -> None:
    """Raise LockError while the holder lives; return (take over) when it is gone."""
    if host == my_host and not pid_alive(pid):
        log_takeover(pipeline, run_id, pid, host)
        return
    raise LockError(
        f"pipeline {pipeline!r} is already running (run {run_id}, pid {pid} on {host}, "
        f"since {since}); wait for it to finish, or if that process is gone for good, "
        f"run `etl state unlock {pipeline}`"
    )
