"""The `etl` command line: `run` (several files, --dry-run, --log-format json), `state`, `schema`, `--version`.

`etl run` runs as a subprocess (its logging and signal set-up stay out of the
test process); the other commands run in-process through click's CliRunner.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from click.testing import CliRunner

from conftest import whole, write_pipeline_file
from runner import __version__
from runner.cli import main
from runner.dev.demo_api import DemoApi
from runner.engine import StopFlag, run
from runner.errors import Interrupted
from runner.dev.fake_crm import FakeCrm
from runner.state.sqlite import SqliteStateStore

NO_WAIT = {"sleep": lambda seconds: None}
FAILS_INACTIVE = "status != 'inactive' && to_string(id) || null"


@pytest.fixture
def api(demo_api: Any) -> DemoApi:
    return demo_api(300)


def pipeline(
    tmp_path: Path, base_url: str, *, name: str = "cli-test", file: str = "pipeline.yaml", **overrides: Any
) -> Path:
    """A 100-per-page incremental pipeline over the demo API's `page` endpoint into `NAME.db`;
    `overrides` as conftest's `write_pipeline_file` takes them."""
    defaults = {
        "name": name,
        "source": {
            "concurrency": 1,
            "incremental": {"cursor_field": "updated_at", "param": "updated_since"},
            "retry": {"max_attempts": 2, "backoff_initial": 0.01},
        },
        "mapping": {"fields": whole({"name": "name", "zip": "address.zip", "updated_at": "updated_at"})},
        "target": {"path": f"{{tmp}}/{name}.db"},
    }
    return write_pipeline_file(tmp_path, base_url, file=file, defaults=defaults, **overrides)


def etl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`etl ARGS` as a subprocess (stderr is a pipe, not a terminal); waits for it."""
    env = {k: v for k, v in os.environ.items() if k != "ETL_STATE_DSN"}
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
    )


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def rows(db_path: Path) -> int:
    db = sqlite3.connect(db_path)
    try:
        return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    finally:
        db.close()


def inactive(api: DemoApi) -> int:
    return sum(r["status"] == "inactive" for r in api.records)


# --- etl run: exit codes with several files -------------------------------------------------


def test_two_good_files_run_in_order_and_exit_0(tmp_path: Path, api: DemoApi) -> None:
    """Both files run, one after the other, and the command exits 0."""
    a = pipeline(tmp_path, api.base_url, name="first", file="a.yaml")
    b = pipeline(tmp_path, api.base_url, name="second", file="b.yaml")
    done = etl(tmp_path, "run", str(a), str(b))
    assert done.returncode == 0, done.stderr
    summaries = [line for line in done.stderr.splitlines() if "event=run.summary" in line]
    assert [("pipeline=first" in s, "pipeline=second" in s) for s in summaries] == [(True, False), (False, True)]
    assert rows(tmp_path / "first.db") == rows(tmp_path / "second.db") == 300


def test_a_config_error_in_the_second_file_runs_nothing(tmp_path: Path, api: DemoApi) -> None:
    """A schema error in the second file exits 2 with its FILE:LINE:COL line, before any request or file."""
    a = pipeline(tmp_path, api.base_url, name="first", file="a.yaml")
    b = pipeline(tmp_path, api.base_url, name="second", file="b.yaml", source={"pagesize": 5})
    done = etl(tmp_path, "run", str(a), str(b))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{b}:10:3: source.pagesize: unknown key 'pagesize'")
    assert list(api.request_log) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "b.yaml"]


def test_failed_records_exit_3_and_the_next_file_still_runs(tmp_path: Path, api: DemoApi) -> None:
    """A file whose records partly fail makes the exit code 3; the file after it runs all the same."""
    a = pipeline(tmp_path, api.base_url, name="first", file="a.yaml", mapping={"external_id": FAILS_INACTIVE})
    b = pipeline(tmp_path, api.base_url, name="second", file="b.yaml")
    done = etl(tmp_path, "run", str(a), str(b))
    assert done.returncode == 3, done.stderr
    assert f"failed={inactive(api)}" in done.stderr and "status=partial" in done.stderr
    assert rows(tmp_path / "first.db") == 300 - inactive(api)
    assert rows(tmp_path / "second.db") == 300


def test_a_failed_run_exits_1_and_stops_nothing_after_it(tmp_path: Path, api: DemoApi) -> None:
    """A run that fails (a closed port) exits 1 with one `etl: error:` line; the next file still runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    a = pipeline(tmp_path, closed, name="first", file="a.yaml")
    b = pipeline(tmp_path, api.base_url, name="second", file="b.yaml")
    done = etl(tmp_path, "run", str(a), str(b))
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("etl: error:")]
    assert len(errors) == 1 and str(a) in errors[0] and "Connection refused" in errors[0]
    assert rows(tmp_path / "second.db") == 300


# --- --dry-run, --log-format json, progress ------------------------------------------------------


def test_dry_run_prints_jsonl_on_stdout_logs_on_stderr_and_writes_no_file(tmp_path: Path, api: DemoApi) -> None:
    """--dry-run puts one jsonl write per record on stdout, the logs on stderr, and creates no file."""
    path = pipeline(tmp_path, api.base_url)
    done = etl(tmp_path, "run", str(path), "--dry-run")
    assert done.returncode == 0, done.stderr
    writes = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(writes) == 300 and all(set(w) == {"op", "external_id", "record"} for w in writes)
    assert {w["op"] for w in writes} == {"create"} and writes[0]["record"]["zip"].startswith("0")
    assert "event=run.summary" in done.stderr and "dry_run=true" in done.stderr
    assert "event=" not in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yaml"]


def test_log_format_json_makes_every_stderr_line_a_json_event(tmp_path: Path, api: DemoApi) -> None:
    """With --log-format json every stderr line is a JSON object with ts, level, event, run_id and pipeline."""
    path = pipeline(tmp_path, api.base_url)
    done = etl(tmp_path, "run", str(path), "--log-format", "json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(events) == 4  # three pages and the summary
    assert all({"ts", "level", "event", "run_id", "pipeline"} <= set(e) for e in events)
    assert {e["run_id"] for e in events} == {events[0]["run_id"]} and {e["pipeline"] for e in events} == {"cli-test"}
    assert events[-1]["event"] == "run.summary" and events[-1]["created"] == 300


def test_no_progress_line_when_stderr_is_not_a_terminal(tmp_path: Path, api: DemoApi) -> None:
    """With stderr a pipe, no carriage-return progress line is drawn: only whole event lines."""
    done = etl(tmp_path, "run", str(pipeline(tmp_path, api.base_url)))
    assert done.returncode == 0
    assert "\r" not in done.stderr and "\x1b" not in done.stderr and "records/s" not in done.stderr
    assert all(line.startswith("ts=") for line in done.stderr.splitlines())


# --- etl state ------------------------------------------------------------------------------------


def partial_then_interrupted(tmp_path: Path, api: DemoApi) -> tuple[Path, int]:
    """A partial run (inactive records fail), then a full refresh stopped after its first page;
    returns the path and the pages committed."""
    path = pipeline(tmp_path, api.base_url, mapping={"external_id": FAILS_INACTIVE})
    assert run(path, **NO_WAIT).status == "partial"
    flag = StopFlag()

    def stop_after_first(counts: Any, pages: int, elapsed: float) -> None:
        flag.stop("SIGTERM")

    # inline: the stop lands after page 1 exactly (a writer process would commit the pages in flight)
    with mock.patch.dict(os.environ, {"ETL_WRITER": "inline"}), pytest.raises(Interrupted) as caught:
        run(path, full_refresh=True, stop=flag, on_progress=stop_after_first, **NO_WAIT)
    pages = caught.value.result.pages
    assert pages == 1
    return path, pages


def test_state_show_text_lists_watermark_checkpoint_runs_and_failures(tmp_path: Path, api: DemoApi) -> None:
    """`etl state show NAME` prints the watermark, the checkpoint, each run with its counts, and failed records."""
    _, pages = partial_then_interrupted(tmp_path, api)
    result = invoke("state", "show", "cli-test", "--state", str(tmp_path / "state.db"))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "pipeline:   cli-test" in text and "watermark:  \"20" in text
    assert "checkpoint: {" in text and f'"page": {pages + 1}' in text
    runs = [line for line in text.splitlines() if "processed=" in line]
    assert len(runs) == 2
    assert "interrupted" in runs[0] and f"processed={pages * 100} " in runs[0]
    assert "partial" in runs[1] and f"processed=300 created={300 - inactive(api)}" in runs[1]
    assert f"failed={inactive(api)}" in runs[1]
    assert f"failed records: {inactive(api)}" in text and "(no key)" in text and "null" in text


def test_state_show_json_is_one_document_with_the_same_facts(tmp_path: Path, api: DemoApi) -> None:
    """`etl state show NAME --format json` prints one JSON document: watermark, checkpoint, runs, failures."""
    path, pages = partial_then_interrupted(tmp_path, api)
    result = invoke("state", "show", str(path), "--format", "json")  # a pipeline file finds its own state
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["pipeline"] == "cli-test" and shown["watermark"].startswith("20")
    assert json.loads(shown["checkpoint"])["pages"] == pages and shown["lock"] is None
    assert [r["status"] for r in shown["runs"]] == ["interrupted", "partial"]
    assert (shown["runs"][1]["processed"], shown["runs"][1]["failed"]) == (300, inactive(api))
    assert shown["failed_total"] == inactive(api)
    assert all(f["raw"]["status"] == "inactive" and f["external_id"] is None for f in shown["failed"])


def test_state_reset_clears_the_run_state_but_keeps_http_target_ids(tmp_path: Path, api: DemoApi) -> None:
    """After `etl state reset`, the next run reads everything again and updates the CRM's objects, never duplicating."""
    with FakeCrm() as crm:
        target = whole({
            "type": "http", "base_url": crm.base_url,
            "create": {"method": "POST", "path": "/contacts", "id_path": "id"},
            "update": {"method": "PATCH", "path": "/contacts/{target_id}"},
        })
        fields = whole({"key": "to_string(id)", "name": "name"})
        path = pipeline(tmp_path, api.base_url, target=target, mapping={"fields": fields})
        assert run(path, **NO_WAIT).counts.created == 300
        state = str(tmp_path / "state.db")
        result = invoke("state", "reset", "cli-test", "--state", state)
        assert result.exit_code == 0 and result.stdout == "cli-test: state reset (target ids kept)\n"
        shown = json.loads(invoke("state", "show", "cli-test", "--state", state, "--format", "json").stdout)
        assert (shown["watermark"], shown["checkpoint"], shown["keys"], shown["failed_total"]) == (None, None, 300, 0)
        posts = sum(r.method == "POST" for r in crm.request_log)
        again = run(path, **NO_WAIT)
        assert (again.counts.processed, again.counts.created, again.counts.updated) == (300, 0, 300)
        assert sum(r.method == "POST" for r in crm.request_log) == posts
        assert len(crm.objects) == 300 and len({o["key"] for o in crm.objects.values()}) == 300


def test_state_reset_clears_failed_records_and_hashes(tmp_path: Path, api: DemoApi) -> None:
    """After `etl state reset` of a SQLite pipeline: no watermark, no failures, no keys; the next run creates again."""
    path = pipeline(tmp_path, api.base_url, mapping={"external_id": FAILS_INACTIVE})
    run(path, **NO_WAIT)
    state = str(tmp_path / "state.db")
    assert invoke("state", "reset", "cli-test", "--state", state).exit_code == 0
    shown = json.loads(invoke("state", "show", "cli-test", "--state", state, "--format", "json").stdout)
    assert (shown["watermark"], shown["keys"], shown["failed_total"]) == (None, 0, 0)
    assert len(shown["runs"]) == 1  # the run history stays


def insert_lock(state: Path, name: str, pid: int) -> None:
    store = SqliteStateStore(state)  # creates the schema
    store.close()
    db = sqlite3.connect(state)
    try:
        db.execute(
            "INSERT INTO locks VALUES (?, 'r-held', ?, ?, '2024-01-01T00:00:00Z')", (name, pid, socket.gethostname())
        )
        db.commit()
    finally:
        db.close()


def test_state_unlock_removes_a_lock_that_blocks_runs(tmp_path: Path, api: DemoApi) -> None:
    """A lock held by a live process makes `etl run` exit 4; `etl state unlock` refuses while that
    process lives (exit 4, naming it: reliability D12), `--force` removes it and the run goes."""
    path = pipeline(tmp_path, api.base_url)
    insert_lock(tmp_path / "state.db", "cli-test", os.getpid())
    blocked = etl(tmp_path, "run", str(path))
    assert blocked.returncode == 4
    assert blocked.stderr.strip().splitlines() == [blocked.stderr.strip()]
    assert f"pid {os.getpid()}" in blocked.stderr and "etl state unlock cli-test" in blocked.stderr
    assert list(api.request_log) == []
    state = str(tmp_path / "state.db")
    refused = invoke("state", "unlock", "cli-test", "--state", state)
    assert refused.exit_code == 4 and f"pid {os.getpid()}" in refused.output
    assert invoke("state", "unlock", "cli-test", "--state", state, "--force").stdout == "cli-test: lock removed\n"
    assert etl(tmp_path, "run", str(path)).returncode == 0


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path, api: DemoApi) -> None:
    """A lock whose process is gone (same host) is taken over with a log line; the run succeeds."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = pipeline(tmp_path, api.base_url)
    insert_lock(tmp_path / "state.db", "cli-test", gone.pid)
    done = etl(tmp_path, "run", str(path))
    assert done.returncode == 0, done.stderr
    assert "lock.taken_over" in done.stderr


# --- schema, version ---------------------------------------------------------------------------------


def test_schema_prints_the_json_schema() -> None:
    """`etl schema` prints a JSON Schema document with its $id and the top-level keys."""
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["$id"] and schema["$schema"].startswith("https://json-schema.org/")
    assert {"version", "name", "source", "mapping", "target", "state"} <= set(schema["properties"])


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    """`etl --version` prints `etl, version X` and exits 0."""
    done = etl(tmp_path, "--version")
    assert (done.returncode, done.stdout) == (0, f"etl, version {__version__}\n")


def test_the_console_entry_flushes_everything_and_keeps_click_exit_codes(tmp_path: Path) -> None:
    """`python -m runner` leaves without interpreter teardown: a long stdout still arrives whole
    through a pipe, a usage error still exits 2 and a failed validate 1."""
    def etl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runner", *args], capture_output=True, text=True, cwd=tmp_path, timeout=60
        )

    shown = etl("schema")
    assert shown.returncode == 0 and json.loads(shown.stdout)["title"]
    assert etl("run").returncode == 2 and "Missing argument" in etl("run").stderr
    (tmp_path / "bad.yaml").write_text("version: 1\nname: x\n")
    bad = etl("validate", "bad.yaml")
    assert bad.returncode == 1 and "bad.yaml" in bad.stdout + bad.stderr
