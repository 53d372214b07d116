"""The state store: per pipeline, key hashes and target ids, watermark, checkpoint,
failed records, runs and the run lock. `open_store` picks the backend."""

from __future__ import annotations

from runner.db import require_postgres_driver
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


__all__ = ["FailedRecord", "KeyState", "RunRecord", "StateStore", "open_store"]
