"""Deletes (issue 18) with PostgreSQL: the postgres target (hard and soft, `_deleted_at`
timestamptz) and the PostgreSQL state store (seen marks, rows of deleted keys removed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

import pgserver  # noqa: E402  (tests/ is on sys.path, pytest's rootdir-less import mode)
from test_deletes import Catalog, catalog_pipeline, item  # noqa: E402

from runner import EtlError, run  # noqa: E402


@pytest.fixture
def dsn(pg_admin: str) -> Iterator[str]:
    with pgserver.fresh_database(pg_admin) as url:
        yield url


@pytest.fixture(params=["process", "inline"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ETL_WRITER", request.param)
    return str(request.param)


def query(dsn: str, text: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as db:
        return db.execute(text, params).fetchall()


def pg_pipeline(tmp_path: Path, server: Catalog, dsn: str, **deletes: Any) -> Path:
    """The catalog into a postgres table, state in the same database."""
    return catalog_pipeline(
        tmp_path, server,
        target={"__replace__": True, "type": "postgres", "dsn": dsn, "table": "items", "deletes": deletes},
        state={"__replace__": True, "dsn": dsn}, mapping={"deleted": "gone"},
    )


def ids_in(dsn: str) -> list[str]:
    return [row[0] for row in query(dsn, "SELECT external_id FROM items ORDER BY external_id::int")]


def held(dsn: str) -> list[str]:
    return [row[0] for row in query(dsn, "SELECT external_id FROM etl_state.keys ORDER BY external_id::int")]


def test_postgres_hard_deletes_markers_and_missing_keys(tmp_path: Path, dsn: str, writer: str) -> None:
    """A marked record and a missing one are deleted from the table and the PostgreSQL state."""
    with Catalog(10) as server:
        path = pg_pipeline(tmp_path, server, dsn, missing=True)
        assert run(path).counts.created == 10
        server.items[2] = item(2, gone=True)
        del server.items[7]
        result = run(path)
        assert result.counts.deleted == 2
        assert ids_in(dsn) == ["1", "3", "4", "5", "6", "8", "9", "10"]
        assert held(dsn) == ids_in(dsn)
        assert run(path).counts.deleted == 0


def test_postgres_soft_delete_is_a_timestamptz_and_a_returning_key_clears_it(
    tmp_path: Path, dsn: str, writer: str
) -> None:
    """mode: soft sets _deleted_at (timestamptz, the run's start) and keeps the row; the key coming back clears it."""
    with Catalog(6) as server:
        path = pg_pipeline(tmp_path, server, dsn, missing=True, mode="soft")
        run(path)
        column = query(
            dsn, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid='items'::regclass AND attname='_deleted_at'",
        )
        assert column == [("timestamp with time zone",)]
        gone = server.items.pop(3)
        deleted = run(path)
        assert deleted.counts.deleted == 1
        stamps = dict(query(dsn, "SELECT external_id, _deleted_at FROM items"))
        assert [k for k, v in stamps.items() if v is not None] == ["3"]
        assert stamps["3"].utcoffset() is not None
        server.items[3] = gone
        assert run(path).counts.created == 1
        assert query(dsn, "SELECT count(*) FROM items WHERE _deleted_at IS NOT NULL") == [(0,)]


def test_postgres_guard_refuses_an_empty_answer(tmp_path: Path, dsn: str) -> None:
    """An empty answer: exit 1, the counts in the message, the table and the state untouched."""
    with Catalog(8) as server:
        path = pg_pipeline(tmp_path, server, dsn, missing=True)
        run(path)
        server.items.clear()
        with pytest.raises(EtlError, match="refused to delete 8 of the 8 keys") as failed:
            run(path)
        assert failed.value.result is not None and failed.value.result.exit_code == 1
        assert len(ids_in(dsn)) == 8 and len(held(dsn)) == 8
