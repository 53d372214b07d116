"""A PostgreSQL server for tests: $ETL_TEST_PG_DSN, or one started with .ci/postgres.sh.

When no server can be had the tests that need one are skipped with the
reason, except in CI (`CI=true`), where a missing server is a failure.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "postgres.sh"


def unavailable(reason: str) -> NoReturn:
    """Skip, or in CI fail: CI must run the PostgreSQL tests, not silently skip them."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL server: {reason}")


@contextmanager
def server(workdir: Path) -> Iterator[str]:
    """Yield an admin DSN: $ETL_TEST_PG_DSN when set, else a server started in `workdir`."""
    dsn = os.environ.get("ETL_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    try:
        try:
            started = subprocess.run(
                ["bash", str(SCRIPT), "start", str(workdir)],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            unavailable(f"{SCRIPT.name} start: {exc}")
        lines = [line for line in started.stdout.splitlines() if line.startswith("ETL_TEST_PG_DSN=")]
        if started.returncode != 0 or not lines:
            tail = " | ".join(started.stderr.strip().splitlines()[-3:])
            unavailable(f"{SCRIPT.name} start exited {started.returncode}: {tail}")
        yield lines[-1].split("=", 1)[1]
    finally:  # also after a failed start: it may have left a data directory behind
        subprocess.run(["bash", str(SCRIPT), "stop", str(workdir)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=120)


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """Yield the DSN of a new, empty database, dropped afterwards (sessions and all)."""
    import psycopg
    from psycopg import conninfo, sql

    name = f"etl_t_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(admin_dsn, autocommit=True)
    except psycopg.Error as exc:
        unavailable(f"cannot connect to $ETL_TEST_PG_DSN's server: {exc}")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield conninfo.make_conninfo(admin_dsn, dbname=name)
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
