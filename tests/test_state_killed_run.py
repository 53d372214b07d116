"""A run killed mid-way (SIGKILL, after some pages are committed): what it leaves in the state
directory, and what the next commands do with it.

The API here echoes each request's query into its `next` link, the key included, as many
real APIs do (reliability review D6); it answers 401 to a request without the key, so a
resumed run that lost the key would fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import pytest
from conftest import whole, write_pipeline_file

SECRET = "sekr1tQueryKey99-killed"
PAGES, PER_PAGE, HELD_PAGE = 5, 10, 3


class EchoApi:
    """GET /items?page=N: ten records, and `next` = this URL with the same query, page N+1.
    Page HELD_PAGE waits until `release` is set, so a run can be killed there."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.requests: list[dict[str, str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                query = dict(parse_qsl(urlsplit(self.path).query))
                api.requests.append(query)
                if query.get("api_key") != SECRET:
                    return self._send(401, {"error": "no key"})
                page = int(query.get("page", "1"))
                if page == HELD_PAGE:
                    api.release.wait(60)
                data = [{"id": (page - 1) * PER_PAGE + i, "name": f"n{page}-{i}"} for i in range(PER_PAGE)]
                following = f"{api.base_url}/items?{urlencode({**query, 'page': page + 1})}" if page < PAGES else None
                self._send(200, {"data": data, "next": following})

            def _send(self, status: int, body: Any) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[EchoApi]:
    server = EchoApi()
    yield server
    server.close()


def pipeline(tmp_path: Path, api: EchoApi) -> Path:
    """The review's D6 pipeline: an api_key in the query, next_url pagination; state in tmp/.etl."""
    return write_pipeline_file(
        tmp_path, api.base_url,
        name="keyck",
        source=whole({
            "url": "{base_url}/items?page=1", "records": "data", "concurrency": 1,
            "auth": {"type": "api_key", "name": "api_key", "value": "${KEY}", "in": "query"},
            "retry": {"max_attempts": 1}, "pagination": {"type": "next_url", "path": "next"},
        }),
        mapping=whole({"external_id": "to_string(id)", "fields": {"name": "name"}}),
        target=whole({"type": "sqlite", "path": "{tmp}/out.db", "table": "t"}),
        state={"path": "{tmp}/.etl/state.db"},
    )


def etl(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=tmp_path, env=_env(), capture_output=True, text=True,
        timeout=120, check=False,
    )


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "ETL_STATE_DSN"}, "KEY": SECRET}


def committed_pages(state: Path) -> int:
    """The pages the checkpoint says are committed (0 before the first), read without writing."""
    if not state.exists():
        return 0
    db = sqlite3.connect(f"{state.as_uri()}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT checkpoint FROM pipelines WHERE pipeline='keyck'").fetchone()
    except sqlite3.OperationalError:  # not made yet
        return 0
    finally:
        db.close()
    return json.loads(row[0])["pages"] if row and row[0] else 0


def killed_run(tmp_path: Path, api: EchoApi) -> Path:
    """Start `etl run`, SIGKILL it once pages 1 and 2 are committed (page 3 is held); the pipeline file."""
    path = pipeline(tmp_path, api)
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(path)], cwd=tmp_path, env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    try:
        while committed_pages(tmp_path / ".etl" / "state.db") < HELD_PAGE - 1:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the run did not commit its first pages"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        if process.stderr:
            process.stderr.close()
    return path


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file of `folder`: the hash of its bytes and its mtime."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_a_killed_run_leaves_no_query_key_in_the_state_and_resumes_with_it(tmp_path: Path, api: EchoApi) -> None:
    """Reliability D6: after a run killed on page 3 of an API that echoes `api_key=SECRET` into
    its next links, no file of the state directory holds the key, `etl state show` prints
    neither the key nor its parameter, and the next run resumes at page 3 (the client adds the
    key again) and ends with every record once."""
    path = killed_run(tmp_path, api)
    folder = tmp_path / ".etl"
    assert Path(f"{folder / 'state.db'}-wal").exists()  # killed: the commits are still in the log
    spellings = {SECRET.encode(), quote(SECRET, safe="").encode()}
    holding = [f.name for f in folder.iterdir() if any(s in f.read_bytes() for s in spellings)]
    assert holding == []  # `grep -c SECRET .etl/*` is 0

    for output_format in ("text", "json"):
        shown = etl(tmp_path, "state", "show", "keyck", "--state", ".etl/state.db", "--format", output_format)
        assert shown.returncode == 0, shown.stderr
        assert SECRET not in shown.stdout and "api_key" not in shown.stdout and "page=3" in shown.stdout

    api.release.set()
    before = len(api.requests)
    resumed = etl(tmp_path, "run", str(path))
    assert resumed.returncode == 0, resumed.stderr
    assert "run.resumed" in resumed.stderr and SECRET not in resumed.stderr
    assert api.requests[before] == {"api_key": SECRET, "page": "3"}
    rows = sqlite3.connect(tmp_path / "out.db").execute("SELECT COUNT(*), COUNT(DISTINCT external_id) FROM t")
    assert rows.fetchone() == (PAGES * PER_PAGE, PAGES * PER_PAGE)


def test_dry_run_after_a_killed_run_changes_no_file_of_the_state_folder(tmp_path: Path, api: EchoApi) -> None:
    """Reliability D14: a killed run leaves state.db with its -wal and -shm; `etl run --dry-run`
    then reads the state (it resumes at page 3) and changes no byte and no mtime of any file
    there, the -shm index included, and creates none."""
    path = killed_run(tmp_path, api)
    folder = tmp_path / ".etl"
    before = snapshot(folder)
    assert {"state.db", "state.db-wal", "state.db-shm"} <= set(before)
    time.sleep(0.01)  # a rewrite would show in the mtime
    api.release.set()
    dry = etl(tmp_path, "run", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "run.resumed" in dry.stderr
    assert snapshot(folder) == before
