"""The engine's guarantees on every pairing of target and state store, SQLite or PostgreSQL each.

Idempotent reruns, a dry-run that changes nothing, resume after an interrupt and
re-runs after SIGKILL, for the four combinations of target (sqlite, postgres)
and state store (a SQLite file, `state: {dsn: ...}`); plus the run lock held
across processes by the PostgreSQL store. A combination that uses PostgreSQL
gets its own fresh database on the server tests/pgserver.py provides; the
sqlite-only one needs no server.
"""

from __future__ import annotations

import io
import json
import logging
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from typing import Any

import psycopg
import pytest

from conftest import whole, write_pipeline_file
from runner.dev.demo_api import DemoApi
from runner.engine import WRITE_BEHIND_PAGES, StopFlag, run
from runner.result import RunResult
from runner.errors import Interrupted
from runner.model import Secret, StateConfig
from runner.state import open_store

import pgserver

NAME = "backends"
NO_WAIT = {"sleep": lambda seconds: None}
COMBINATIONS = [("sqlite", "sqlite"), ("sqlite", "postgres"), ("postgres", "sqlite"), ("postgres", "postgres")]
FIELDS = {"name": "name", "zip": "address.zip", "tags": "tags"}
CURSOR = {"type": "cursor", "path": "next_cursor", "param": "cursor"}
Content = dict[str, tuple[Any, ...]]


# --- one pairing of target and state store ------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A target and a state store: files in `dir`, and a database at `dsn` when either is postgres."""

    target: str
    state: str
    dir: Path
    dsn: str | None

    def pipeline(self, api: DemoApi, *, style: str = "page", limit: int = 100) -> Path:
        """Write a pipeline reading `api` into this backend; return its path."""
        source: dict[str, Any] = {"url": f"{{base_url}}/items/{style}"}
        if style == "cursor":
            source |= {"pagination": whole(CURSOR), "params": {"limit": limit}}
        else:
            source |= {"pagination": {"size": limit}}
        overrides: dict[str, Any] = {"name": NAME, "source": source, "mapping": {"fields": whole(FIELDS)}}
        if self.target == "postgres":
            overrides["target"] = whole({"type": "postgres", "dsn": self.dsn, "table": "items"})
        if self.state == "postgres":
            overrides["state"] = whole({"dsn": self.dsn})
        return write_pipeline_file(self.dir, api.base_url, **overrides)

    def rows(self) -> Content:
        """The target table by key, content as Python values; asserts no key is there twice."""
        text = "SELECT external_id, name, zip, tags FROM items"
        if self.target == "sqlite":
            db = sqlite3.connect(self.dir / "out.db")
            try:
                found = [(k, n, z, json.loads(t)) for k, n, z, t in db.execute(text)]
            finally:
                db.close()
        else:
            found = [tuple(row) for row in pg_query(self.pg, text)]
        assert len(found) == len({row[0] for row in found})
        return {row[0]: tuple(row[1:]) for row in found}

    @property
    def pg(self) -> str:
        assert self.dsn is not None
        return self.dsn

    def snapshot(self) -> tuple[dict[str, bytes], dict[str, list[tuple[Any, ...]]]]:
        """Every file's bytes, and every schema and row of the database: what a dry-run must not change."""
        files = {p.name: p.read_bytes() for p in sorted(self.dir.iterdir()) if p.is_file()}
        if self.dsn is None:
            return files, {}
        user = "nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
        dump = {"schemas": pg_query(self.dsn, f"SELECT nspname FROM pg_namespace WHERE {user} ORDER BY 1")}
        tables = pg_query(self.dsn, "SELECT schemaname, tablename FROM pg_tables "
                                    f"WHERE {user.replace('nspname', 'schemaname')} ORDER BY 1, 2")
        for schema, table in tables:
            rows = pg_query(self.dsn, f'SELECT * FROM "{schema}"."{table}"')
            dump[f"{schema}.{table}"] = sorted(rows, key=repr)
        return files, dump

    def state_shown(self) -> dict[str, Any]:
        """`etl state show` of the pipeline, read through a read-only store."""
        dsn = Secret(self.dsn) if self.state == "postgres" and self.dsn else None
        store = open_store(StateConfig(path=self.dir / "state.db", dsn=dsn), read_only=True)
        try:
            return store.show(NAME)
        finally:
            store.close()

    def assert_no_lock(self) -> None:
        """No lock row for the pipeline, and no advisory lock held in the database."""
        assert self.state_shown()["lock"] is None
        if self.state == "postgres":
            assert pg_query(self.pg, "SELECT count(*) FROM etl_state.locks") == [(0,)]
            held = pg_query(self.pg, "SELECT count(*) FROM pg_locks WHERE locktype='advisory' "
                                     "AND database=(SELECT oid FROM pg_database WHERE datname=current_database())")
            assert held == [(0,)]


def pg_query(dsn: str, text: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as db:
        return db.execute(text).fetchall()


@pytest.fixture(params=COMBINATIONS, ids=lambda c: f"{c[0]}-target-{c[1]}-state")
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each combination; one that uses PostgreSQL gets a fresh database of its own."""
    target, state = request.param
    if "postgres" not in request.param:
        yield Backend(target, state, tmp_path, None)
        return
    with pgserver.fresh_database(request.getfixturevalue("pg_admin")) as dsn:
        yield Backend(target, state, tmp_path, dsn)


def expected(api: DemoApi) -> Content:
    return {str(r["id"]): (r["name"], r["address"]["zip"], r["tags"]) for r in api.records}


def counts(result: RunResult) -> tuple[int, int, int, int, int]:
    c = result.counts
    return c.processed, c.created, c.updated, c.skipped, c.failed


# --- in process: idempotency, dry-run, resume --------------------------------------------------


def test_rerun_writes_nothing_and_three_changes_are_three_updates(backend: Backend, demo_api: Any) -> None:
    """The first run creates every record, a rerun writes nothing and leaves the rows,
    3 upstream changes are 3 updates."""
    api = demo_api(1000)
    path = backend.pipeline(api)
    first = run(path, **NO_WAIT)
    assert (first.status, first.pages, counts(first)) == ("success", 10, (1000, 1000, 0, 0, 0))
    assert backend.rows() == expected(api)
    before = backend.rows()
    second = run(path, **NO_WAIT)
    assert counts(second) == (1000, 0, 0, 1000, 0)
    assert backend.rows() == before
    for record_id in (5, 500, 999):
        api.update_record(record_id, name=f"changed {record_id}")
    third = run(path, **NO_WAIT)
    assert counts(third) == (1000, 0, 3, 997, 0)
    assert backend.rows() == expected(api)
    backend.assert_no_lock()


def test_dry_run_changes_nothing_and_prints_each_write(backend: Backend, demo_api: Any) -> None:
    """A dry-run, before any run and after one, changes no file, table or row, leaves no lock, and prints jsonl."""
    api = demo_api(1000)
    path = backend.pipeline(api)
    empty = backend.snapshot()
    out = io.StringIO()
    fresh = run(path, dry_run=True, stdout=out, **NO_WAIT)
    assert fresh.dry_run and counts(fresh) == (1000, 1000, 0, 0, 0)
    assert backend.snapshot() == empty
    assert sorted(empty[0]) == ["pipeline.yaml"] and set(empty[1]) <= {"schemas"}
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 1000 and {line["op"] for line in lines} == {"create"}
    run(path, **NO_WAIT)
    api.update_record(7, name="dry")
    before = backend.snapshot()
    out = io.StringIO()
    result = run(path, dry_run=True, stdout=out, **NO_WAIT)
    assert counts(result) == (1000, 0, 1, 999, 0)
    assert backend.snapshot() == before
    (line,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (line["op"], line["external_id"], line["record"]["name"]) == ("update", "7", "dry")
    backend.assert_no_lock()


def test_interrupted_run_resumes_and_lands_every_record_once(
    backend: Backend, demo_api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A run stopped after page 3 (and the pages already handed to the writer) raises Interrupted;
    the next resumes at the page after its checkpoint, never asks for page 1 again, and lands the
    source once."""
    api = demo_api(3000)
    path = backend.pipeline(api)
    flag = StopFlag()

    def stop_after_three(counts: Any, pages: int, elapsed: float) -> None:
        if pages >= 3:  # commits come one page or one batch at a time
            flag.stop("SIGTERM")

    with pytest.raises(Interrupted) as caught:
        run(path, stop=flag, on_progress=stop_after_three, **NO_WAIT)
    done = caught.value.result.pages  # page 3, and the pages already handed to the writer
    assert caught.value.result.status == "interrupted" and 3 <= done <= 2 + 2 * WRITE_BEHIND_PAGES
    assert len(backend.rows()) == done * 100
    assert backend.state_shown()["checkpoint"] is not None
    backend.assert_no_lock()
    api.request_log.clear()
    with caplog.at_level(logging.WARNING, logger="runner.engine"):
        resumed = run(path, **NO_WAIT)
    left = 3000 - done * 100
    assert resumed.resumed and counts(resumed) == (left, left, 0, 0, 0)
    assert [r.fields for r in caplog.records if r.getMessage() == "run.resumed"] == [{"from_page": done + 1}]
    asked = [int(parse_qs(urlsplit(target).query)["page"][0]) for _, target in api.request_log]
    assert asked[0] == done + 1 and min(asked) == done + 1, "the resumed run starts after its checkpoint"
    assert backend.rows() == expected(api)
    assert backend.state_shown()["checkpoint"] is None


# --- OS processes: SIGKILL and the lock ---------------------------------------------------


def spawn(path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """`etl run FILE` as a subprocess, its stderr (the log) to `log_path`."""
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "runner", "run", str(path)], cwd=path.parent,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file,
        )


def wait_for(proc: subprocess.Popen[bytes], log_path: Path, needle: str, timeout: float = 20, count: int = 1) -> None:
    """Wait until `needle` is in the log `count` times, or the process has ended."""
    deadline = time.monotonic() + timeout
    while log_path.read_text().count(needle) < count and proc.poll() is None:
        assert time.monotonic() < deadline, f"{needle!r} not seen in {timeout} s:\n{log_path.read_text()}"
        time.sleep(0.005)


def test_sigkilled_runs_rerun_to_exactly_the_source(backend: Backend, demo_api: Any) -> None:
    """Killed with SIGKILL at 2 seeded points then re-run, the target holds every source record once, none extra."""
    api = demo_api(1500, latency_ms=20, seed=3)
    path = backend.pipeline(api, style="cursor", limit=25)
    rng = random.Random(7)
    codes, logs = [], []
    for n in range(2):
        log_path = backend.dir / f"killed-{n}.log"
        proc = spawn(path, log_path)
        try:
            wait_for(proc, log_path, "event=http.request", count=10)  # pages are committing by then
            time.sleep(rng.uniform(0.1, 0.3))
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            codes.append(proc.wait(timeout=10))
        logs.append(log_path.read_text())
    assert codes == [-signal.SIGKILL] * 2, logs
    final = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(path)], cwd=path.parent,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert final.returncode == 0, final.stderr
    assert "event=run.resumed" in logs[1] + final.stderr and "status=success" in final.stderr
    assert backend.rows() == expected(api)
    shown = backend.state_shown()
    assert (shown["keys"], shown["checkpoint"]) == (1500, None)
    backend.assert_no_lock()


@pytest.mark.parametrize("backend", [("postgres", "postgres")], indirect=True, ids=["postgres-target-postgres-state"])
def test_two_processes_at_once_one_runs_the_other_exits_4(backend: Backend, demo_api: Any) -> None:
    """Two `etl run` processes started at once on the PostgreSQL store: one exits 4 naming the lock, the other 0."""
    api = demo_api(1000, latency_ms=40)
    path = backend.pipeline(api, style="cursor", limit=25)
    procs = [spawn(path, backend.dir / f"run-{n}.log") for n in range(2)]
    try:
        deadline = time.monotonic() + 30
        while all(p.poll() is None for p in procs):
            assert time.monotonic() < deadline, "neither run ended"
            time.sleep(0.01)
        loser = 0 if procs[0].poll() is not None else 1
        winner = procs[1 - loser]
        assert winner.poll() is None, "both ended: the runs did not overlap"
        lines = (backend.dir / f"run-{loser}.log").read_text().strip().splitlines()
        assert procs[loser].returncode == 4, lines
        assert len(lines) == 1 and lines[0].startswith("etl: error:"), lines
        assert f"pipeline '{NAME}' is already running" in lines[0] and f"etl state unlock {NAME}" in lines[0]
        assert winner.wait(timeout=30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
    assert backend.rows() == expected(api)
    assert [r["status"] for r in backend.state_shown()["runs"]] == ["success"]
    backend.assert_no_lock()
