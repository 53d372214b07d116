"""The state store: per pipeline, key hashes and target ids, watermark, checkpoint,
failed records, runs and the run lock. `open_store` picks the backend for a run;
`open_known` opens it for the `etl state` commands, which never create one."""

from __future__ import annotations

from runner.db import require_postgres_driver
from runner.errors import StateError
from runner.model import StateConfig
from runner.state.base import FailedRecord, KeyState, RunRecord, StateStore


def open_store(config: StateConfig, *, read_only: bool = False) -> StateStore:
    """Open the configured store; read_only never creates or changes a file (dry-run).

    A `dsn` without psycopg installed is a ConfigError naming the extra to install."""
    if config.dsn is not None:
        require_postgres_driver("the postgres state store")
        from runner.state.postgres import PostgresStateStore

        return PostgresStateStore(config.dsn.reveal(), read_only=read_only)
    from runner.state.sqlite import SqliteStateStore

    return SqliteStateStore(config.path, read_only=read_only)


def open_known(config: StateConfig, pipeline: str, *, read_only: bool = False) -> StateStore:
    """Open the configured store for a command about `pipeline` (show, reset, unlock):
    it creates no file, folder or table, and a store that holds nothing of the pipeline
    is a StateError (`no state for pipeline 'x' in .etl/state.db`)."""
    if config.dsn is not None:
        require_postgres_driver("the postgres state store")
        from runner.state.postgres import PostgresStateStore

        store: StateStore = PostgresStateStore(config.dsn.reveal(), read_only=read_only, create=False)
    else:
        from runner.state.sqlite import SqliteStateStore

        if not config.path.exists():  # a store would create it
            raise _no_state(pipeline, str(config.path))
        store = SqliteStateStore(config.path, read_only=read_only)
    try:
        if not store.knows(pipeline) and not store.resources(pipeline):
            raise _no_state(pipeline, store.location)
    except BaseException:
        store.close()
        raise
    return store


def _no_state(pipeline: str, location: str) -> StateError:
    return StateError(f"no state for pipeline {pipeline!r} in {location}")


__all__ = ["FailedRecord", "KeyState", "RunRecord", "StateStore", "open_known", "open_store"]
