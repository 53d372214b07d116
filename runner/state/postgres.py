"""The PostgreSQL state store: the SQLite store's tables and meaning, for several machines.

Tables live in the schema `etl_state`; `etl_state.migrations` records the
schema version, migrated on open under a transaction-level advisory lock so
that two processes opening a new database do not race. Each `commit_page` is
one transaction of a few set-based statements (arrays through `unnest`, sent
in one pipeline), never a round trip per record.

The run lock is a session-level advisory lock (`pg_try_advisory_lock`) on a
stable 64-bit hash of the pipeline name, held on the store's connection for
the whole run. A process that dies loses its session, so the server frees
its lock; there is nothing to take over. `etl_state.locks` only describes the
holder (run, pid, host) for messages and `show`; a row whose advisory lock is
not held means nothing. `unlock` ends the database session that holds a lock
(a hung process, or a half-open connection the server has not noticed yet);
`reset` takes the lock for its transaction, so it refuses while a run holds it.

Read-only mode (dry-run) sets the session read-only and creates nothing: when
the tables do not exist the store behaves as an empty one; so does a store
opened with `create=False` (the `etl state` commands) on a database without them. The DSN's password
never appears in an error: messages name `host:port/dbname` and have any
occurrence of the password scrubbed.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from runner.db.pg import advisory_key, connect, describe, scrub
from runner.errors import LockError, StateError
from runner.state.base import (
    FailureRow,
    KeyState,
    LockingStore,
    PageCommit,
    RunRecord,
    RunRow,
    StateQueries,
    build_show,
    now_iso,
    reset_run_id,
    stored_checkpoint,
    stored_failure_key,
    stored_failures,
)

SCHEMA = "etl_state"

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE etl_state.pipelines (
        pipeline text PRIMARY KEY, watermark jsonb, checkpoint text, updated_at text);
    CREATE TABLE etl_state.keys (
        pipeline text NOT NULL, external_id text NOT NULL, hash text, target_id text,
        updated_at text, PRIMARY KEY (pipeline, external_id));
    CREATE TABLE etl_state.failed (
        pipeline text NOT NULL, fkey text NOT NULL, external_id text, raw text,
        error text, failed_at text, PRIMARY KEY (pipeline, fkey));
    CREATE TABLE etl_state.runs (
        run_id text PRIMARY KEY, pipeline text NOT NULL, status text, started_at text,
        finished_at text, counts jsonb);
    CREATE INDEX runs_by_pipeline ON etl_state.runs (pipeline, started_at);
    CREATE TABLE etl_state.locks (
        pipeline text PRIMARY KEY, run_id text, pid integer, host text, acquired_at text,
        backend_pid integer)
    """,
    # 2: a child resource's work per parent record, recorded with the parent's page
    """
    CREATE TABLE etl_state.pending (
        seq bigserial PRIMARY KEY, pipeline text NOT NULL, parent_key text NOT NULL,
        parent text NOT NULL, UNIQUE (pipeline, parent_key))
    """,
    # 3: deletes.missing: the run that last read the key (written only by pipelines that use it)
    "ALTER TABLE etl_state.keys ADD COLUMN IF NOT EXISTS seen_run text",
    # 4: deletes.missing on a child resource: the parent a child key was last read under, and
    # the parents whose children a run read completely
    """
    ALTER TABLE etl_state.keys ADD COLUMN IF NOT EXISTS parent_key text;
    CREATE TABLE etl_state.child_sweeps (
        pipeline text NOT NULL, parent_key text NOT NULL, run_id text NOT NULL, PRIMARY KEY (pipeline, parent_key))
    """,
)


_MIGRATE_KEY = advisory_key("etl_state migrate")


# --- the store ----------------------------------------------------------------------


class PostgresStateStore(LockingStore):
    """State in the `etl_state` schema of one PostgreSQL database, shared by all pipelines."""

    def __init__(self, dsn: str, *, read_only: bool = False, create: bool = True) -> None:
        self._dsn = dsn
        self.read_only = read_only
        self._create = create
        self.location = describe(dsn)  # for messages: host:port/dbname, never the password
        self.where = f"state store {self.location}"
        self._held: dict[str, str] = {}  # pipeline -> run_id, locks this session holds
        self._db = connect(dsn, error=StateError, where=self.where)
        try:
            with self._errors():
                self._empty = self._open()
        except BaseException:
            self._db.close()
            raise
        self._queries: StateQueries = _NoTables() if self._empty else _Queries(self._db, self.where)

    def _open(self) -> bool:
        """Migrate (or, read-only, only look); True when there are no tables to read."""
        if self.read_only:
            self._db.execute("SET default_transaction_read_only = on")
        version = self._version()
        if self.read_only or (version is None and not self._create):
            if version is None:
                return True
            self._check_version()
            return False
        if version != len(MIGRATIONS):
            with self._db.transaction():
                self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_KEY,))
                self._db.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                self._db.execute(
                    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.migrations "
                    "(version integer PRIMARY KEY, applied_at text NOT NULL)"
                )
                version = self._check_version()
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in filter(str.strip, script.split(";")):
                        self._db.execute(statement)
                    self._db.execute(
                        f"INSERT INTO {SCHEMA}.migrations (version, applied_at) VALUES (%s, %s)", (number, now_iso())
                    )
        return False

    def _version(self) -> int | None:
        row = self._db.execute(f"SELECT to_regclass('{SCHEMA}.migrations') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return None
        found = self._db.execute(f"SELECT max(version) FROM {SCHEMA}.migrations").fetchone()
        return int(found[0]) if found and found[0] is not None else 0

    def _check_version(self) -> int:
        version = self._version() or 0
        if version > len(MIGRATIONS):
            raise StateError(
                f"{self.where} has schema version {version}, newer than this etl "
                f"({len(MIGRATIONS)}); upgrade etl"
            )
        return version

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise StateError(f"{self.where}: {scrub(str(exc).strip(), self._dsn)}") from exc

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        with self._errors(), self._db.transaction():
            yield self._db

    def _refuse_when_read_only(self, action: str) -> None:
        if self.read_only:
            raise StateError(f"{self.where}: opened read-only, cannot {action}")

    # --- lock ----------------------------------------------------------------

    def _acquire(self, pipeline: str, run_id: str) -> None:
        if pipeline in self._held:
            raise self._lock_error(pipeline)
        with self._errors():
            row = self._db.execute("SELECT pg_try_advisory_lock(%s)", (advisory_key(pipeline),)).fetchone()
            if not row or not row[0]:
                raise self._lock_error(pipeline)
            self._held[pipeline] = run_id
        try:
            with self._errors():
                self._db.execute(
                    f"INSERT INTO {SCHEMA}.locks (pipeline, run_id, pid, host, acquired_at, backend_pid) "
                    "VALUES (%s, %s, %s, %s, %s, pg_backend_pid()) "
                    "ON CONFLICT (pipeline) DO UPDATE SET run_id=excluded.run_id, pid=excluded.pid, "
                    "host=excluded.host, acquired_at=excluded.acquired_at, backend_pid=excluded.backend_pid",
                    (pipeline, run_id, os.getpid(), socket.gethostname(), now_iso()),
                )
        except BaseException:
            self._release(pipeline, run_id)
            raise

    def _release(self, pipeline: str, run_id: str) -> None:
        self._held.pop(pipeline, None)
        try:
            if not (self._db.closed or self._db.broken):
                self._db.execute(f"DELETE FROM {SCHEMA}.locks WHERE pipeline=%s AND run_id=%s", (pipeline, run_id))
                self._db.execute("SELECT pg_advisory_unlock(%s)", (advisory_key(pipeline),))
        except psycopg.Error as exc:
            if not (self._db.closed or self._db.broken):
                reason = scrub(str(exc).strip(), self._dsn)
                raise StateError(f"{self.where}: cannot release the lock: {reason}") from exc
        # a closed or broken connection is a session gone, and the server freed its locks with it

    def _lock_error(self, pipeline: str) -> LockError:
        row = self._db.execute(
            f"SELECT run_id, pid, host, acquired_at, backend_pid FROM {SCHEMA}.locks WHERE pipeline=%s",
            (pipeline,),
        ).fetchone()
        holder = "" if row is None else f" (run {row[0]}, pid {row[1]} on {row[2]}, since {row[3]})"
        return LockError(
            f"pipeline {pipeline!r} is already running{holder}; its lock is held by a live "
            f"session of {describe(self._dsn)}; wait for it to finish, or if that process is "
            f"gone for good, run `etl state unlock {pipeline}` (it ends that database session)"
        )

    def unlock(self, pipeline: str, *, force: bool = False) -> bool:
        """Remove the pipeline's lock: end the session that holds it and forget its holder.

        Unlike SQLite's, this lock is freed by the server when its process dies; one still
        held is a live session, which is what this is asked to end (`force` changes nothing)."""
        self._refuse_when_read_only(f"unlock {pipeline!r}")
        high, low = _lock_ids(advisory_key(pipeline))
        # from PostgreSQL 14 on, wait (up to 5 s) until the session has ended and its lock is free
        terminate = (
            "pg_terminate_backend(pid, 5000)" if self._db.info.server_version >= 140000 else "pg_terminate_backend(pid)"
        )
        with self._tx() as db:
            ended = db.execute(
                f"SELECT count(*) FILTER (WHERE {terminate}) FROM pg_locks "
                "WHERE locktype='advisory' AND database=(SELECT oid FROM pg_database WHERE datname=current_database()) "
                "AND classid::text::bigint=%s AND objid::text::bigint=%s AND objsubid=1 AND granted "
                "AND pid <> pg_backend_pid()",
                (high, low),
            ).fetchone()
            removed = db.execute(f"DELETE FROM {SCHEMA}.locks WHERE pipeline=%s", (pipeline,)).rowcount
        return bool((ended and ended[0]) or removed)

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
        if self._empty or not keys:
            return {}
        with self._errors():
            rows = self._db.execute(
                f"SELECT external_id, hash, target_id FROM {SCHEMA}.keys "
                "WHERE pipeline=%s AND external_id = ANY(%s::text[])",
                (pipeline, list(keys)),
            ).fetchall()
        return {key: KeyState(h, t) for key, h, t in rows}

    # --- writes --------------------------------------------------------------

    def commit_page(self, pipeline: str, commit: PageCommit) -> None:
        if self.read_only:
            return
        stamp = now_iso()
        hashes = _merge_hashes(commit.hashes)
        # no secret in the store: masked before the transaction
        failed = {fkey: (eid, raw, _text(error)) for fkey, eid, raw, error in stored_failures(commit.failed)}
        checkpoint = stored_checkpoint(commit.checkpoint)
        with self._tx() as db, db.pipeline():
            if hashes:
                db.execute(
                    f"INSERT INTO {SCHEMA}.keys AS k (pipeline, external_id, hash, target_id, updated_at) "
                    "SELECT %s, u.key, u.hash, u.tid, %s FROM unnest(%s::text[], %s::text[], %s::text[]) "
                    "AS u(key, hash, tid) ON CONFLICT (pipeline, external_id) DO UPDATE SET "
                    "hash=excluded.hash, target_id=COALESCE(excluded.target_id, k.target_id), "
                    "updated_at=excluded.updated_at",
                    (pipeline, stamp, list(hashes), [h for h, _ in hashes.values()], [t for _, t in hashes.values()]),
                )
            if commit.deleted:
                db.execute(
                    f"DELETE FROM {SCHEMA}.keys WHERE pipeline=%s AND external_id = ANY(%s::text[])",
                    (pipeline, list(commit.deleted)),
                )
            if commit.seen and commit.sweep is not None:
                db.execute(
                    f"UPDATE {SCHEMA}.keys SET seen_run=%s WHERE pipeline=%s AND external_id = ANY(%s::text[])",
                    (commit.sweep, pipeline, list(commit.seen)),
                )
            if commit.parent_of:
                parent_of = dict(commit.parent_of)  # one row per key
                db.execute(
                    f"UPDATE {SCHEMA}.keys AS k SET parent_key=u.parent FROM unnest(%s::text[], %s::text[]) "
                    "AS u(key, parent) WHERE k.pipeline=%s AND k.external_id=u.key",
                    (list(parent_of), list(parent_of.values()), pipeline),
                )
            if commit.swept and commit.sweep is not None:
                db.execute(
                    f"INSERT INTO {SCHEMA}.child_sweeps (pipeline, parent_key, run_id) "
                    "SELECT %s, u.parent, %s FROM unnest(%s::text[]) AS u(parent) "
                    "ON CONFLICT (pipeline, parent_key) DO UPDATE SET run_id=excluded.run_id",
                    (pipeline, commit.sweep, list(dict.fromkeys(commit.swept))),
                )
            if commit.succeeded:
                db.execute(
                    f"DELETE FROM {SCHEMA}.failed WHERE pipeline=%s AND fkey = ANY(%s::text[])",
                    (pipeline, [stored_failure_key(key) for key in commit.succeeded]),
                )
            if failed:
                rows = list(failed.values())
                db.execute(
                    f"INSERT INTO {SCHEMA}.failed (pipeline, fkey, external_id, raw, error, failed_at) "
                    "SELECT %s, u.fkey, u.eid, u.raw, u.error, %s "
                    "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS u(fkey, eid, raw, error) "
                    "ON CONFLICT (pipeline, fkey) DO UPDATE SET external_id=excluded.external_id, "
                    "raw=excluded.raw, error=excluded.error, failed_at=excluded.failed_at",
                    (pipeline, stamp, list(failed), *(list(column) for column in zip(*rows, strict=True))),
                )
            if commit.pending:
                work = {(name, key): parent for name, key, parent in commit.pending}  # one row per key
                db.execute(
                    f"INSERT INTO {SCHEMA}.pending (pipeline, parent_key, parent) "
                    "SELECT u.name, u.key, u.parent FROM unnest(%s::text[], %s::text[], %s::text[]) "
                    "AS u(name, key, parent) ON CONFLICT (pipeline, parent_key) DO UPDATE SET parent=excluded.parent",
                    ([n for n, _ in work], [k for _, k in work], list(work.values())),
                )
            if commit.done:
                db.execute(
                    f"DELETE FROM {SCHEMA}.pending WHERE pipeline=%s AND parent_key = ANY(%s::text[])",
                    (pipeline, list(commit.done)),
                )
            self._set_pipeline(db, pipeline, checkpoint=checkpoint)

    def count_keys(self, pipeline: str, sweep: str) -> tuple[int, int]:
        if self._empty:
            return 0, 0
        with self._errors():
            row = self._db.execute(
                f"SELECT count(*), count(*) FILTER (WHERE seen_run IS DISTINCT FROM %s) FROM {SCHEMA}.keys "
                "WHERE pipeline=%s", (sweep, pipeline),
            ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def count_orphans(self, pipeline: str, parent: str, sweep: str) -> tuple[int, int]:
        if self._empty:
            return 0, 0
        with self._errors():
            row = self._db.execute(
                f"SELECT count(*), count(*) FILTER (WHERE {_ORPHAN}) FROM {SCHEMA}.keys k WHERE k.pipeline=%(child)s",
                {"child": pipeline, "parent": parent, "sweep": sweep},
            ).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def orphan_keys(self, pipeline: str, parent: str, sweep: str, *, after: str, limit: int) -> list[str]:
        if self._empty:
            return []
        with self._errors():
            rows = self._db.execute(
                f"SELECT external_id FROM {SCHEMA}.keys k WHERE k.pipeline=%(child)s AND k.external_id > %(after)s "
                f"AND {_ORPHAN} ORDER BY k.external_id LIMIT %(limit)s",
                {"child": pipeline, "parent": parent, "sweep": sweep, "after": after, "limit": limit},
            ).fetchall()
        return [row[0] for row in rows]

    def unseen_keys(self, pipeline: str, sweep: str, *, after: str, limit: int) -> list[str]:
        if self._empty:
            return []
        with self._errors():
            rows = self._db.execute(
                f"SELECT external_id FROM {SCHEMA}.keys WHERE pipeline=%s AND external_id > %s "
                "AND seen_run IS DISTINCT FROM %s ORDER BY external_id LIMIT %s", (pipeline, after, sweep, limit),
            ).fetchall()
        return [row[0] for row in rows]

    def pending_work(self, pipeline: str, *, after: int, limit: int) -> list[tuple[int, str, str]]:
        if self._empty:
            return []
        with self._errors():
            rows = self._db.execute(
                f"SELECT seq, parent_key, parent FROM {SCHEMA}.pending WHERE pipeline=%s AND seq>%s "
                "ORDER BY seq LIMIT %s", (pipeline, after, limit),
            ).fetchall()
        return [(int(seq), key, parent) for seq, key, parent in rows]

    def resources(self, pipeline: str) -> list[str]:
        if self._empty:
            return []
        prefix = pipeline.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"
        with self._errors():
            rows = self._db.execute(
                " UNION ".join(f"SELECT pipeline FROM {SCHEMA}.{t} WHERE pipeline LIKE %(p)s"
                               for t in ("pipelines", "runs", "pending")) + " ORDER BY 1",
                {"p": prefix},
            ).fetchall()
        return [row[0] for row in rows]

    def _set_pipeline(self, db: psycopg.Connection[Any], pipeline: str, **values: Any) -> None:
        """Upsert the pipeline's row, setting `updated_at` and the given columns."""
        columns = ["updated_at", *values]
        params = [now_iso(), *(_jsonb(v) if c == "watermark" else v for c, v in values.items())]
        db.execute(
            f"INSERT INTO {SCHEMA}.pipelines (pipeline, {', '.join(columns)}) "
            f"VALUES (%s{', %s' * len(columns)}) ON CONFLICT (pipeline) DO UPDATE SET "
            + ", ".join(f"{c}=excluded.{c}" for c in columns),  # column names are ours, never input
            (pipeline, *params),
        )

    def start_run(self, pipeline: str, run: RunRecord) -> None:
        if self.read_only:
            return
        with self._tx() as db:
            db.execute(
                f"INSERT INTO {SCHEMA}.runs (run_id, pipeline, status, started_at, counts) VALUES (%s, %s, %s, %s, %s)",
                (run.run_id, pipeline, run.status, run.started_at, _jsonb(run.counts)),
            )

    def finish_run(self, pipeline: str, run: RunRecord, *, watermark: Any, clear_checkpoint: bool) -> None:
        if self.read_only:
            return
        values: dict[str, Any] = {}
        if watermark is not None:
            values["watermark"] = watermark
        if clear_checkpoint:
            values["checkpoint"] = None
        with self._tx() as db, db.pipeline():
            db.execute(
                f"UPDATE {SCHEMA}.runs SET status=%s, finished_at=%s, counts=%s WHERE run_id=%s",
                (run.status, run.finished_at, _jsonb(run.counts), run.run_id),
            )
            self._set_pipeline(db, pipeline, **values)

    def reset(self, pipeline: str) -> None:
        """Under the pipeline's lock (LockError while a run holds it): clear watermark,
        checkpoint, hashes and failures, and drop run rows whose counts are not an object;
        keep target ids (no duplicates) and the readable run history."""
        self._refuse_when_read_only(f"reset {pipeline!r}")
        names = [pipeline, *self.resources(pipeline)]  # the resources form: each resource's state
        with self.lock(pipeline, reset_run_id()), self._tx() as db, db.pipeline():
            for name in names:
                self._reset(db, name)

    def _reset(self, db: psycopg.Connection[Any], pipeline: str) -> None:
        db.execute(f"DELETE FROM {SCHEMA}.pending WHERE pipeline=%s", (pipeline,))
        db.execute(f"DELETE FROM {SCHEMA}.child_sweeps WHERE pipeline=%s", (pipeline,))
        db.execute(f"UPDATE {SCHEMA}.pipelines SET watermark=NULL, checkpoint=NULL WHERE pipeline=%s", (pipeline,))
        db.execute(f"DELETE FROM {SCHEMA}.keys WHERE pipeline=%s AND target_id IS NULL", (pipeline,))
        db.execute(f"UPDATE {SCHEMA}.keys SET hash=NULL WHERE pipeline=%s", (pipeline,))
        db.execute(f"DELETE FROM {SCHEMA}.failed WHERE pipeline=%s", (pipeline,))
        db.execute(
            f"DELETE FROM {SCHEMA}.runs WHERE pipeline=%s AND jsonb_typeof(counts) <> 'object'", (pipeline,)
        )

    # --- show ----------------------------------------------------------------

    def show(self, pipeline: str, *, runs: int = 10, failed: int = 20) -> dict[str, Any]:
        """Everything `etl state show` prints, as a JSON-ready dict."""
        with self._errors():
            return build_show(self._queries, pipeline, runs=runs, failed=failed, where=self.where)

    def close(self) -> None:
        """Release the locks still held (the server would too, but only once it sees the session end)."""
        try:
            for pipeline, run_id in list(self._held.items()):
                self._release(pipeline, run_id)
        finally:
            self._db.close()


class _Queries:
    """The reads `show`, `watermark` and `checkpoint` are made of (runner.state.base.StateQueries)."""

    def __init__(self, db: psycopg.Connection[Any], where: str) -> None:
        self._db, self._where = db, where

    def pipeline_row(self, pipeline: str) -> tuple[Any, str | None] | None:
        # the watermark is jsonb, decoded by psycopg: the server keeps only valid JSON there
        row = self._db.execute(
            f"SELECT watermark, checkpoint FROM {SCHEMA}.pipelines WHERE pipeline=%s", (pipeline,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def knows(self, pipeline: str) -> bool:
        row = self._db.execute(
            "SELECT " + " OR ".join(
                f"EXISTS (SELECT 1 FROM {SCHEMA}.{table} WHERE pipeline=%(p)s)" for table in _TABLES
            ),
            {"p": pipeline},
        ).fetchone()
        return bool(row and row[0])

    def count(self, table: Literal["keys", "failed", "pending"], pipeline: str) -> int:
        # `table` is one of three names (its type says which), never input
        row = self._db.execute(f"SELECT count(*) FROM {SCHEMA}.{table} WHERE pipeline=%s", (pipeline,)).fetchone()
        return 0 if row is None else int(row[0])

    def lock_holder(self, pipeline: str) -> dict[str, Any] | None:
        """The holder `etl_state.locks` names, when the pipeline's advisory lock is held."""
        high, low = _lock_ids(advisory_key(pipeline))
        row = self._db.execute(
            f"SELECT l.run_id, l.pid, l.host, l.acquired_at FROM pg_locks p "
            f"LEFT JOIN {SCHEMA}.locks l ON l.pipeline=%s "
            "WHERE p.locktype='advisory' AND p.database=(SELECT oid FROM pg_database WHERE datname=current_database()) "
            "AND p.classid::text::bigint=%s AND p.objid::text::bigint=%s AND p.objsubid=1 AND p.granted",
            (pipeline, high, low),
        ).fetchone()
        return None if row is None else dict(zip(("run_id", "pid", "host", "acquired_at"), row, strict=True))

    def runs(self, pipeline: str, limit: int) -> list[RunRow]:
        rows = self._db.execute(
            f"SELECT run_id, status, started_at, finished_at, counts FROM {SCHEMA}.runs "
            "WHERE pipeline=%s ORDER BY started_at DESC LIMIT %s", (pipeline, limit),
        )
        return [(*row[:4], row[4] or {}) for row in rows]  # counts: jsonb, decoded by psycopg

    def failures(self, pipeline: str, limit: int) -> list[FailureRow]:
        rows: list[FailureRow] = self._db.execute(
            f"SELECT external_id, error, failed_at, raw FROM {SCHEMA}.failed WHERE pipeline=%s "
            "ORDER BY failed_at DESC LIMIT %s", (pipeline, limit),
        ).fetchall()
        return rows


class _NoTables:
    """The reads of a read-only store on a database never migrated: an empty store."""

    def pipeline_row(self, pipeline: str) -> tuple[Any, str | None] | None:
        return None

    def knows(self, pipeline: str) -> bool:
        return False

    def count(self, table: Literal["keys", "failed", "pending"], pipeline: str) -> int:
        return 0

    def lock_holder(self, pipeline: str) -> dict[str, Any] | None:
        return None

    def runs(self, pipeline: str, limit: int) -> list[RunRow]:
        return []

    def failures(self, pipeline: str, limit: int) -> list[FailureRow]:
        return []


# every table that holds rows of a pipeline (`knows`)
_TABLES = ("pipelines", "runs", "keys", "failed", "locks", "pending")


# a child key deletes.missing removes: last read under a parent whose children this run read
# completely, and not read now; or under a parent the state no longer holds (deleted)
_ORPHAN = (
    f"((k.parent_key IN (SELECT s.parent_key FROM {SCHEMA}.child_sweeps s WHERE s.pipeline=%(child)s "
    "AND s.run_id=%(sweep)s) AND k.seen_run IS DISTINCT FROM %(sweep)s) OR (k.parent_key IS NOT NULL AND NOT EXISTS "
    f"(SELECT 1 FROM {SCHEMA}.keys p WHERE p.pipeline=%(parent)s AND p.external_id=k.parent_key)))"
)


def _merge_hashes(rows: Sequence[tuple[str, str | None, str | None]]) -> dict[str, tuple[str | None, str | None]]:
    """One row per key, as applying the rows in order would leave it (one upsert cannot touch a row twice)."""
    merged: dict[str, tuple[str | None, str | None]] = {}
    for key, digest, target_id in rows:
        if target_id is None and key in merged:
            target_id = merged[key][1]
        merged[key] = (digest, target_id)
    return merged


def _lock_ids(key: int) -> tuple[int, int]:
    """pg_locks shows a bigint advisory key as two oids: (classid, objid) = (high, low) 32 bits."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


def _jsonb(value: Any) -> Any:
    return None if value is None else Jsonb(value)


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL; an error message that has one keeps it visibly."""
    return value.replace("\x00", "\\x00")

