"""The SQLite state store: WAL, one transaction per page, versioned schema migrated on open.

Read-only mode (dry-run) opens an existing file immutably, or an empty
in-memory store when there is none, so it never creates or changes a file.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from runner.errors import LockError, StateError
from runner.db.sqlite import insert_rows
from runner.state.base import KeyState, PageCommit, RunLock, RunRecord, log_takeover, pid_alive

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
)

_CHUNK = 500  # keys per IN (...) lookup, well under SQLite's variable limit


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def failure_key(external_id: str | None, raw: Any) -> str:
    """Failures are kept per key; a record without a key is kept per raw content."""
    if external_id is not None:
        return "id:" + external_id
    return "raw:" + json.dumps(raw, sort_keys=True, default=str)[:500]


class SqliteStateStore(RunLock):
    """State in one SQLite file (default `.etl/state.db`), shared by all pipelines."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        try:
            self._db = self._connect()
            self._migrate()
        except sqlite3.Error as exc:
            raise StateError(f"state store {self.path}: cannot open: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            return self._connect_read_only()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _connect_read_only(self) -> sqlite3.Connection:
        """Read without creating or changing a file: immutably when the file is whole, and
        through its write-ahead log when a killed run left one (its commits live there)."""
        if not self.path.exists():
            return sqlite3.connect(":memory:", isolation_level=None)
        has_wal = Path(f"{self.path}-wal").exists()
        mode = "mode=ro" if has_wal else "mode=ro&immutable=1"
        db = sqlite3.connect(f"{self.path.resolve().as_uri()}?{mode}", uri=True, isolation_level=None)
        if db.execute("PRAGMA user_version").fetchone()[0] == 0:  # created, never migrated
            db.close()
            return sqlite3.connect(":memory:", isolation_level=None)
        return db

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StateError(
                f"state store {self.path} has schema version {version}, newer than this etl "
                f"({len(MIGRATIONS)}); upgrade etl"
            )
        if version == len(MIGRATIONS):
            return
        if self.read_only and version > 0:
            raise StateError(
                f"state store {self.path} has schema version {version}, older than this etl's "
                f"{len(MIGRATIONS)}; run once without --dry-run to migrate it"
            )
        with self._tx():
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StateError(f"state store {self.path}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._errors():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

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
                "INSERT OR REPLACE INTO locks VALUES (?, ?, ?, ?, ?)",
                (pipeline, run_id, pid, host, now_iso()),
            )

    def unlock(self, pipeline: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM locks WHERE pipeline=?", (pipeline,)).rowcount > 0

    # --- reads ---------------------------------------------------------------

    def watermark(self, pipeline: str) -> Any:
        row = self._pipeline_row(pipeline)
        return None if row is None or row[0] is None else json.loads(row[0])

    def checkpoint(self, pipeline: str) -> str | None:
        row = self._pipeline_row(pipeline)
        return None if row is None else row[1]

    def _pipeline_row(self, pipeline: str) -> tuple[Any, ...] | None:
        with self._errors():
            return self._db.execute(
                "SELECT watermark, checkpoint FROM pipelines WHERE pipeline=?", (pipeline,)
            ).fetchone()

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
        with self._tx() as db:
            insert_rows(
                db, "INSERT INTO keys", [(pipeline, key, h, tid, stamp) for key, h, tid in commit.hashes],
                "ON CONFLICT (pipeline, external_id) DO UPDATE SET hash=excluded.hash, "
                "target_id=COALESCE(excluded.target_id, keys.target_id), updated_at=excluded.updated_at",
            )
            if commit.succeeded and _has_failures(db, pipeline):
                db.executemany(
                    "DELETE FROM failed WHERE pipeline=? AND fkey=?",
                    [(pipeline, failure_key(key, None)) for key in commit.succeeded],
                )
            db.executemany(
                "INSERT OR REPLACE INTO failed VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (pipeline, failure_key(f.external_id, f.raw), f.external_id,
                     json.dumps(f.raw, default=str), f.error, stamp)
                    for f in commit.failed
                ],
            )
            self._set_pipeline(db, pipeline, checkpoint=commit.checkpoint)

    def _set_pipeline(self, db: sqlite3.Connection, pipeline: str, **values: Any) -> None:
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
                "INSERT INTO runs VALUES (?, ?, ?, ?, NULL, ?)",
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
            values: dict[str, Any] = {}
            if watermark is not None:
                values["watermark"] = json.dumps(watermark)
            if clear_checkpoint:
                values["checkpoint"] = None
            self._set_pipeline(db, pipeline, **values)

    def reset(self, pipeline: str) -> None:
        """Clear watermark, checkpoint, hashes and failures; keep target ids (no duplicates)."""
        with self._tx() as db:
            db.execute("UPDATE pipelines SET watermark=NULL, checkpoint=NULL WHERE pipeline=?", (pipeline,))
            db.execute("UPDATE keys SET hash=NULL WHERE pipeline=?", (pipeline,))
            db.execute("DELETE FROM keys WHERE pipeline=? AND target_id IS NULL", (pipeline,))
            db.execute("DELETE FROM failed WHERE pipeline=?", (pipeline,))

    # --- show ----------------------------------------------------------------

    def show(self, pipeline: str, *, runs: int = 10, failed: int = 20) -> dict[str, Any]:
        with self._errors():
            return self._show(pipeline, runs, failed)

    def _show(self, pipeline: str, runs: int, failed: int) -> dict[str, Any]:
        db = self._db
        keys = db.execute("SELECT COUNT(*) FROM keys WHERE pipeline=?", (pipeline,)).fetchone()[0]
        run_rows = db.execute(
            "SELECT run_id, status, started_at, finished_at, counts FROM runs "
            "WHERE pipeline=? ORDER BY started_at DESC LIMIT ?", (pipeline, runs),
        ).fetchall()
        fail_rows = db.execute(
            "SELECT external_id, error, failed_at, raw FROM failed WHERE pipeline=? "
            "ORDER BY failed_at DESC LIMIT ?", (pipeline, failed),
        ).fetchall()
        total_failed = db.execute("SELECT COUNT(*) FROM failed WHERE pipeline=?", (pipeline,)).fetchone()[0]
        lock = db.execute("SELECT run_id, pid, host, acquired_at FROM locks WHERE pipeline=?", (pipeline,)).fetchone()
        return {
            "pipeline": pipeline,
            "watermark": self.watermark(pipeline),
            "checkpoint": self.checkpoint(pipeline),
            "keys": keys,
            "lock": None if lock is None else dict(zip(("run_id", "pid", "host", "acquired_at"), lock)),
            "runs": [
                {"run_id": r[0], "status": r[1], "started_at": r[2], "finished_at": r[3], **json.loads(r[4] or "{}")}
                for r in run_rows
            ],
            "failed_total": total_failed,
            "failed": [
                {"external_id": r[0], "error": r[1], "failed_at": r[2], "raw": json.loads(r[3])}
                for r in fail_rows
            ],
        }

    def close(self) -> None:
        self._db.close()


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
