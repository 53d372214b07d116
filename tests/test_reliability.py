"""Crash-safe runs: seeded chaos, SIGKILL/SIGTERM/SIGINT and re-runs, the lock, and the bad-input catalogue.

Runs go through `etl run` as a subprocess (`python -m runner run FILE`) against
servers in this process on 127.0.0.1, except the chaos runs, which call
`runner.engine.run` with a sleep that does not wait.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import whole, write_pipeline_file
from runner.dev.demo_api import DemoApi, Faults
from runner.engine import run
from runner.dev.fake_crm import FakeCrm
from runner.timestamps import parse_timestamp
from runner.state.sqlite import SqliteStateStore

TOKEN = "tok-SECRET-4242-abcd"
ENV = {"API_TOKEN": TOKEN}
NO_WAIT: Callable[[float], None] = lambda seconds: None  # noqa: E731 - the engine's sleep seam
FIELDS = ("name", "email", "zip", "tags", "amount", "active", "updated_at")
FAST_RETRY = {"max_attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.05}
MAPPED = {
    "name": "name", "email": "email", "zip": "address.zip", "tags": "tags",
    "amount": "amount", "active": "active", "updated_at": "updated_at",
}
CURSOR = {"type": "cursor", "path": "next_cursor", "param": "cursor"}


# --- pipelines, processes and the target -------------------------------------------


def write_pipeline(tmp_path: Path, url: str, *, style: str = "cursor", limit: int = 50, **overrides: Any) -> Path:
    """An incremental pipeline reading `url` (`style` pagination, `limit` a page) with bearer auth
    from $API_TOKEN into `out.db`; `overrides` as conftest's `write_pipeline_file` takes them."""
    if style == "cursor":
        paging = {"pagination": whole(CURSOR), "params": {"limit": limit}}
    else:
        paging = {"pagination": {"size": limit}, "params": {}}
    defaults = {
        "name": "reliable",
        "source": {
            "url": url, **paging,
            "auth": {"type": "bearer", "token": "${API_TOKEN}"},
            "retry": FAST_RETRY,
            "incremental": {"cursor_field": "updated_at", "param": "updated_since"},
        },
        "mapping": {"fields": whole(MAPPED)},
    }
    return write_pipeline_file(tmp_path, defaults=defaults, **overrides)


def child_env(**changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ETL_STATE_DSN"}
    env.update(ENV)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def etl(
    path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`etl run FILE ARGS` as a subprocess in the file's directory; waits for it."""
    return subprocess.run(
        [sys.executable, "-m", "runner", "run", str(path), *args], cwd=path.parent,
        env=env or child_env(), capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `etl run FILE` with stderr to a file; every process is killed and reaped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(path: Path, log_path: Path, *args: str) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "run", str(path), *args], cwd=path.parent,
                env=child_env(), stdout=subprocess.DEVNULL, stderr=log_file,
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def wait_for(proc: subprocess.Popen[bytes], log_path: Path, needle: str, count: int = 1, timeout: float = 20) -> bool:
    """Wait until `needle` appears `count` times in the log; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_path.read_text().count(needle) >= count:
            return True
        if proc.poll() is not None:
            return log_path.read_text().count(needle) >= count
        time.sleep(0.005)
    raise AssertionError(f"{needle!r} x{count} not seen in {timeout} s:\n{log_path.read_text()}")


def expected(api: DemoApi) -> dict[str, tuple[Any, ...]]:
    return {
        str(r["id"]): (r["name"], r["email"], r["address"]["zip"], r["tags"], r["amount"], r["active"], r["updated_at"])
        for r in api.records
    }


def landed(db_path: Path) -> dict[str, tuple[Any, ...]]:
    """The target table by key; asserts no key is there twice."""
    db = sqlite3.connect(db_path)
    try:
        rows = db.execute(f"SELECT external_id, {', '.join(FIELDS)} FROM items").fetchall()
    finally:
        db.close()
    assert len(rows) == len({r[0] for r in rows})
    return {r[0]: (r[1], r[2], r[3], json.loads(r[4]), r[5], bool(r[6]), r[7]) for r in rows}


def state_of(tmp_path: Path, name: str = "reliable") -> dict[str, Any]:
    store = SqliteStateStore(tmp_path / "state.db", read_only=True)
    try:
        return store.show(name, failed=10_000)
    finally:
        store.close()


def greatest_updated_at(api: DemoApi) -> str:
    return max((r["updated_at"] for r in api.records), key=parse_timestamp)


# --- chaos ---------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["page", "cursor"])
def test_chaos_run_lands_exactly_the_source_records_once(tmp_path: Path, demo_api: Any, style: str) -> None:
    """Against ~20% 5xx, 429s with Retry-After, dropped connections and slow answers, 5,000 records land once each."""
    faults = Faults(error_rate=0.2, rate_limit_rate=0.05, drop_rate=0.05, slow_rate=0.05, slow_ms=30)
    api = demo_api(5000, seed=11, faults=faults)
    retry = {"max_attempts": 12, "backoff_initial": 0.01, "backoff_max": 0.05}
    path = write_pipeline(tmp_path, f"{api.base_url}/items/{style}", style=style, limit=100, source={"retry": retry})
    waits: list[float] = []
    result = run(path, env=ENV, sleep=waits.append)
    c = result.counts
    assert (result.status, c.processed, c.created, c.failed) == ("success", 5000, 5000, 0)
    assert result.retries >= 10 and result.pages == 50
    assert any(w in (0.0, 1.0) for w in waits)  # 429s' Retry-After (0 or 1 s) honoured; backoffs are random
    assert landed(tmp_path / "out.db") == expected(api)
    shown = state_of(tmp_path)
    assert (shown["keys"], shown["checkpoint"], shown["lock"]) == (5000, None, None)
    assert shown["watermark"] == greatest_updated_at(api)


# --- SIGKILL, then re-runs -------------------------------------------------------------


def kill_at_seeded_points(
    spawn: Callable[..., subprocess.Popen[bytes]], path: Path, seed: int, delays: tuple[float, float], kills: int,
) -> tuple[list[int], list[str]]:
    """Start `etl run`, wait for its first request, SIGKILL it after a seeded delay; `kills` times."""
    rng = random.Random(seed)
    codes, logs = [], []
    for n in range(kills):
        log_path = path.parent / f"killed-{n}.log"
        proc = spawn(path, log_path)
        wait_for(proc, log_path, "event=http.request")
        time.sleep(rng.uniform(*delays))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        codes.append(proc.wait(timeout=10))
        logs.append(log_path.read_text())
    return codes, logs


def test_sigkilled_runs_rerun_to_exactly_the_source(tmp_path: Path, demo_api: Any, spawn: Any) -> None:
    """SIGKILL at seeded points, then a re-run: the SQLite target holds every source record once, none extra.
    The resumed run keeps the watermark its interrupted run started from (none here); the run
    after it reads from there, writes nothing, and saves the greatest updated_at."""
    api = demo_api(3000, latency_ms=20, seed=3)
    path = write_pipeline(tmp_path, f"{api.base_url}/items/cursor", limit=50)
    codes, logs = kill_at_seeded_points(spawn, path, seed=7, delays=(0.1, 0.35), kills=4)
    assert codes.count(-signal.SIGKILL) >= 3, codes
    final = etl(path)
    assert final.returncode == 0, final.stderr
    assert "event=run.resumed" in "".join(logs[1:]) + final.stderr
    assert "status=success" in final.stderr
    assert landed(tmp_path / "out.db") == expected(api)
    shown = state_of(tmp_path)
    assert (shown["keys"], shown["checkpoint"], shown["lock"], shown["watermark"]) == (3000, None, None, None)
    after = etl(path)
    assert after.returncode == 0 and "resumed=false" in after.stderr and "created=0 updated=0" in after.stderr
    assert state_of(tmp_path)["watermark"] == greatest_updated_at(api)


@pytest.mark.parametrize("style", ["page", "offset"])
def test_a_source_that_changes_between_the_kill_and_the_rerun_ends_exact(
    tmp_path: Path, demo_api: Any, spawn: Any, style: str
) -> None:
    """Reliability D3: an incremental listing sorted by updated_at (positions shift when a
    record changes). After a full run every record changes; a run is SIGKILLed part-way; the
    first 50 records (already committed) change again and move to the end, so later ones
    slide onto pages the resumed run skips. The resumed run keeps the watermark its killed
    run started from, and the run after it reads them: the target ends exact."""
    api = demo_api(2000, latency_ms=10, seed=4)
    path = write_pipeline(
        tmp_path, f"{api.base_url}/items/{style}", style="page", limit=50,
        source={"params": {"sort": "updated_at"}, "concurrency": 1} if style == "page" else
        {"params": {"sort": "updated_at"}, "concurrency": 1, "pagination": whole({"type": "offset", "limit": 50})},
    )
    assert etl(path).returncode == 0
    for record in api.records:
        api.update_record(record["id"])
    log_path = tmp_path / "killed.log"
    proc = spawn(path, log_path)
    wait_for(proc, log_path, "event=http.request", count=15)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert state_of(tmp_path)["checkpoint"] is not None
    for record in sorted(api.records, key=lambda r: parse_timestamp(r["updated_at"]))[:50]:
        api.update_record(record["id"])
    resumed = etl(path)
    assert resumed.returncode == 0 and "resumed=true" in resumed.stderr, resumed.stderr
    after = etl(path)
    assert after.returncode == 0 and "resumed=false" in after.stderr, after.stderr
    assert landed(tmp_path / "out.db") == expected(api)
    assert etl(path).stderr.count("created=0 updated=0") == 1


def crm_pipeline(tmp_path: Path, api: DemoApi, crm: FakeCrm) -> Path:
    target = whole({
        "type": "http", "base_url": crm.base_url,
        "create": {"method": "POST", "path": "/contacts", "id_path": "id"},
        "update": {"method": "PATCH", "path": "/contacts/{target_id}"},
        "retry": FAST_RETRY,
    })
    fields = whole({"key": "to_string(id)", "name": "name", "email": "email"})
    return write_pipeline(
        tmp_path, f"{api.base_url}/items/cursor", limit=20, source={"incremental": None}, mapping={"fields": fields},
        target=target,
    )


def crm_by_key(crm: FakeCrm) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for obj in crm.objects.values():
        found.setdefault(obj["key"], []).append(obj)
    return found


def test_sigkilled_runs_into_the_http_target_leave_one_object_per_key(
    tmp_path: Path, demo_api: Any, spawn: Any
) -> None:
    """Killed creates and updates, re-run, leave the fake CRM exactly one object per key with the source's values."""
    api = demo_api(400, latency_ms=10, seed=5)
    with FakeCrm() as crm:
        path = crm_pipeline(tmp_path, api, crm)
        codes, logs = kill_at_seeded_points(spawn, path, seed=8, delays=(0.1, 0.3), kills=3)
        assert codes.count(-signal.SIGKILL) >= 2, codes
        assert etl(path).returncode == 0
        for record_id in range(1, 401, 4):
            api.update_record(record_id, name=f"renamed {record_id}")
        _, more_logs = kill_at_seeded_points(spawn, path, seed=9, delays=(0.1, 0.3), kills=2)
        final = etl(path)
        assert final.returncode == 0, final.stderr
        assert "event=run.resumed" in "".join(logs + more_logs) + final.stderr
        by_key = crm_by_key(crm)
        want = {str(r["id"]): (r["name"], r["email"]) for r in api.records}
        assert {k: len(v) for k, v in by_key.items()} == {k: 1 for k in want}
        assert {k: (v[0]["name"], v[0]["email"]) for k, v in by_key.items()} == want
        assert any(r.method == "PATCH" for r in crm.request_log)
        again = etl(path)
    assert again.returncode == 0 and "created=0 updated=0 skipped=400" in again.stderr


# --- SIGTERM, SIGINT ---------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_after_the_page_and_the_next_run_resumes(
    tmp_path: Path, demo_api: Any, spawn: Any, sig: signal.Signals, code: int
) -> None:
    """SIGTERM exits 143 (SIGINT 130) with an interrupted summary; the next run resumes and lands every record."""
    api = demo_api(2000, latency_ms=20)
    path = write_pipeline(tmp_path, f"{api.base_url}/items/cursor", limit=50)
    log_path = tmp_path / "signalled.log"
    proc = spawn(path, log_path)
    assert wait_for(proc, log_path, "event=http.request", count=3)
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == code
    lines = log_path.read_text().splitlines()
    summary = [line for line in lines if "event=run.summary" in line]
    assert len(summary) == 1 and "status=interrupted" in summary[0]
    assert lines[-1].startswith("etl: error:") and sig.name in lines[-1]
    assert "Traceback" not in log_path.read_text()
    interrupted = state_of(tmp_path)
    assert interrupted["checkpoint"] is not None and interrupted["lock"] is None
    final = etl(path)
    assert final.returncode == 0, final.stderr
    assert "event=run.resumed" in final.stderr
    assert landed(tmp_path / "out.db") == expected(api)


# --- the lock -------------------------------------------------------------------------------


def test_a_second_run_of_the_same_pipeline_exits_4_at_once(tmp_path: Path, demo_api: Any, spawn: Any) -> None:
    """While one run holds the lock, a second exits at once with code 4 and names the holder; the first finishes."""
    api = demo_api(1000, latency_ms=40)
    path = write_pipeline(tmp_path, f"{api.base_url}/items/cursor", limit=20)
    log_path = tmp_path / "first.log"
    first = spawn(path, log_path)
    assert wait_for(first, log_path, "event=http.request")
    started = time.monotonic()
    second = etl(path, timeout=20)
    assert time.monotonic() - started < 5
    assert first.poll() is None, "the first run ended before the second was tried"
    assert second.returncode == 4
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etl: error:")
    assert "already running" in lines[0] and f"pid {first.pid}" in lines[0] and "etl state unlock" in lines[0]
    assert first.wait(timeout=30) == 0
    assert landed(tmp_path / "out.db") == expected(api)


# --- the bad-input catalogue ------------------------------------------------------------------


@dataclass
class RanOnce:
    """A pipeline that ran once with success; tests break one thing and check nothing moved."""

    api: DemoApi
    tmp_path: Path
    path: Path
    text: str
    watermark: Any
    write: Callable[..., Path]

    def changed(self, **changes: Any) -> str:
        """The text of this pipeline with `changes` (overrides as conftest's builder takes them) made."""
        return self.write(**changes).read_text()

    def fails(self, text: str, code: int, *, env: dict[str, str] | None = None, timeout: float = 60) -> str:
        """Run the changed file; assert the exit code, one clear message line, no secret, state unchanged."""
        self.path.write_text(text)
        before = len(self.api.request_log)
        done = etl(self.path, env=env, timeout=timeout)
        output = done.stdout + done.stderr
        assert done.returncode == code, done.stderr
        assert TOKEN not in output and "Traceback" not in output
        lines = done.stderr.strip().splitlines()
        if code == 2:
            assert len(lines) == 1 and lines[0].startswith(f"{self.path}:")
            assert len(self.api.request_log) == before  # a configuration error sends nothing
        else:
            assert [line for line in lines if line.startswith("etl: error:")] == [lines[-1]]
        shown = state_of(self.tmp_path)
        assert (shown["watermark"], shown["checkpoint"], shown["lock"]) == (self.watermark, None, None)
        return lines[-1]


@pytest.fixture
def ran_once(tmp_path: Path, demo_api: Any) -> Callable[..., RanOnce]:
    """A factory: a 200-record incremental pipeline (with `overrides`) after one successful run."""

    def make(**overrides: Any) -> RanOnce:
        api = demo_api(200)

        def write(**changes: Any) -> Path:
            return write_pipeline(tmp_path, f"{api.base_url}/items/cursor", limit=50, **overrides, **changes)

        path = write()
        result = run(path, env=ENV, sleep=NO_WAIT)
        assert result.status == "success"
        watermark = state_of(tmp_path)["watermark"]
        assert watermark == greatest_updated_at(api)
        return RanOnce(api, tmp_path, path, path.read_text(), watermark, write)

    return make


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_malformed_yaml_exits_2_with_file_line_col(ran_once: Any) -> None:
    """An unclosed flow list is invalid YAML: exit 2, one FILE:LINE:COL line, nothing run."""
    setup = ran_once()
    broken = re.sub(r"(?m)^  fields: .*$", "  fields: [oops", setup.text, count=1)
    message = setup.fails(broken, 2)
    assert "invalid YAML" in message


def test_schema_violation_exits_2_and_names_the_key(ran_once: Any) -> None:
    """An unknown key is a schema error: exit 2, one line naming the key path and the likely intended key."""
    setup = ran_once()
    message = setup.fails(setup.changed(source={"recrods": "data"}), 2)
    assert "source.recrods" in message and "did you mean 'records'" in message


def test_bad_jmespath_exits_2_and_names_the_key(ran_once: Any) -> None:
    """A JMESPath that does not compile is a validation error naming its key and line."""
    setup = ran_once()
    message = setup.fails(setup.changed(mapping={"fields": {"name": "name[?"}}), 2)
    assert "mapping.fields.name" in message and "JMESPath" in message


def test_missing_environment_variable_exits_2_before_any_request(ran_once: Any) -> None:
    """An unset ${API_TOKEN} is named in one line, and no request is sent."""
    setup = ran_once()
    message = setup.fails(setup.text, 2, env=child_env(API_TOKEN=None))
    assert "API_TOKEN" in message and "not set" in message


def test_connection_refused_exits_1(ran_once: Any) -> None:
    """A closed 127.0.0.1 port fails the run after its retries: exit 1, one line, state unchanged."""
    setup = ran_once()
    url = f"http://127.0.0.1:{closed_port()}/items/cursor"
    message = setup.fails(setup.changed(source={"url": url}), 1)
    assert "Connection refused" in message and "gave up after 3 attempts" in message


def test_unresolvable_host_exits_1_without_hanging(ran_once: Any) -> None:
    """A name under .invalid never resolves: exit 1 quickly with one line, state unchanged."""
    setup = ran_once()
    text = setup.changed(source={"url": "http://no-such-host.invalid/items/cursor"})
    started = time.monotonic()
    message = setup.fails(text, 1, timeout=30)
    assert time.monotonic() - started < 20
    assert "ConnectError" in message and "/items/cursor" in message


def test_https_to_a_plain_http_port_exits_1_and_says_tls(ran_once: Any) -> None:
    """https:// to the plain-HTTP demo API is a TLS failure, not retried, and the message says TLS/SSL."""
    setup = ran_once()
    url = setup.api.base_url.replace("http://", "https://", 1) + "/items/cursor"
    message = setup.fails(setup.changed(source={"url": url}), 1)
    assert "SSL" in message and "TLS" in message and "not retried" in message


def test_non_json_body_exits_1_and_names_the_path(ran_once: Any) -> None:
    """An HTML page where JSON was expected fails with the URL path and a short excerpt."""
    setup = ran_once()
    setup.api.faults = Faults(html_on_pages=frozenset({1}))
    message = setup.fails(setup.text, 1)
    assert "GET /items/cursor" in message and "not JSON (text/html)" in message
    assert len(message) < 400


def test_records_that_are_not_a_list_exit_1_naming_expression_and_type(ran_once: Any) -> None:
    """`records` pointing at an object fails with the expression and the type found."""
    setup = ran_once()
    message = setup.fails(setup.changed(source={"records": "data[0]"}), 1)
    assert "'data[0]'" in message and "an object" in message and "/items/cursor" in message


def test_401_is_not_retried_and_says_check_credentials(tmp_path: Path) -> None:
    """A 401 is sent exactly once, exits 1, says to check the credentials, and shows no token."""
    with FakeCrm(token=TOKEN) as crm:
        for n in range(1, 6):
            crm.objects[f"c_{n}"] = {"id": f"c_{n}", "name": f"n{n}", "updated_at": f"2024-01-0{n}T00:00:00Z"}
        path = write_pipeline(
            tmp_path, f"{crm.base_url}/contacts",
            source={"pagination": whole({"type": "none"}), "retry": whole({"max_attempts": 5})},
            mapping={"external_id": "id", "fields": whole({"name": "name"})},
        )
        assert run(path, env=ENV, sleep=NO_WAIT).status == "success"
        watermark = state_of(tmp_path)["watermark"]
        before = len(crm.request_log)
        done = etl(path, env=child_env(API_TOKEN="wrong-token-5678"))
        assert len(crm.request_log) == before + 1
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("etl: error:") and "HTTP 401" in lines[-1] and "check the credentials" in lines[-1]
    assert "wrong-token-5678" not in done.stderr and TOKEN not in done.stderr and "Traceback" not in done.stderr
    shown = state_of(tmp_path)
    assert (shown["watermark"], shown["checkpoint"], shown["lock"]) == (watermark, None, None)


def test_body_over_the_size_cap_exits_1(ran_once: Any) -> None:
    """A response larger than `max_response_bytes` fails the run with the cap in the message."""
    setup = ran_once()
    text = setup.changed(source={"max_response_bytes": 100})
    message = setup.fails(text, 1)
    assert "over 100 bytes" in message and "/items/cursor" in message


def test_target_path_that_is_a_directory_exits_1(ran_once: Any, tmp_path: Path) -> None:
    """A target path that names a directory cannot be opened: exit 1, one line naming the target."""
    setup = ran_once()
    (tmp_path / "adir").mkdir()
    message = setup.fails(setup.changed(target={"path": str(tmp_path / "adir")}), 1)
    assert f"sqlite target {tmp_path / 'adir'}" in message


def test_target_under_a_regular_file_exits_1(ran_once: Any, tmp_path: Path) -> None:
    """A target path inside a regular file (a/b.db where a is a file) fails even as root: exit 1, one line."""
    setup = ran_once()
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "out.db"
    message = setup.fails(setup.changed(target={"path": str(target)}), 1)
    assert f"sqlite target {target}" in message


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {done.stderr.strip()}")


def umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=True, capture_output=True)


def test_read_only_target_exits_1(ran_once: Any, tmp_path: Path) -> None:
    """A target on a read-only bind mount (which stops root too) fails with exit 1 and one line."""
    where = tmp_path / "ro"
    where.mkdir()
    setup = ran_once(target={"path": str(where / "out.db")})
    setup.api.add_records(20)  # something to write
    mount("--bind", str(where), str(where))
    try:
        mount("-o", "remount,ro,bind", str(where))
        message = setup.fails(setup.text, 1)
    finally:
        umount(where)
    assert f"sqlite target {where / 'out.db'}" in message and "writable" in message


def test_full_target_exits_1(ran_once: Any, tmp_path: Path) -> None:
    """A target on a full tmpfs fails with exit 1 and one line; the watermark does not move."""
    where = tmp_path / "small"
    where.mkdir()
    mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where))
    try:
        setup = ran_once(target={"path": str(where / "out.db")}, mapping={"fields": whole({"name": "name"})})
        with open(where / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 1024)
            except OSError:
                pass
        setup.api.add_records(500)
        message = setup.fails(setup.text, 1)
    finally:
        umount(where)
    assert f"sqlite target {where / 'out.db'}" in message and "free space" in message
    assert "SQLITE_FULL" in message or "SQLITE_IOERR" in message
