"""`etl state show|reset|unlock`: refusals while a run lives, pipelines never seen, rows that
cannot be read, and what `show` prints of secrets (reliability review D6, D10, D12, D14).

The commands run in-process through click's CliRunner; `etl run` runs as a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import whole, write_pipeline_file

from runner.cli import main
from runner.state.base import FailedRecord, PageCommit, RunRecord
from runner.state.sqlite import SqliteStateStore

HOST = socket.gethostname()


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(main, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_line(stderr: str) -> str:
    """The one `etl: error:` line that stderr must be."""
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert stderr.startswith("etl: error: ") and "Traceback" not in stderr
    return stderr


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: the hash of its bytes and its mtime."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def state_with_a_run(path: Path, pipeline: str = "p") -> SqliteStateStore:
    store = SqliteStateStore(path)
    run = RunRecord("r1", started_at="t1", counts={"created": 1})
    store.start_run(pipeline, run)
    store.commit_page(pipeline, PageCommit([("a", "h", None)], [FailedRecord("b", {"x": 1}, "e")], [], None))
    run.status = "success"
    store.finish_run(pipeline, run, watermark="2024-01-01", clear_checkpoint=True)
    return store


# --- a live run's lock (D12) ---------------------------------------------------------------------


def test_unlock_refuses_a_live_local_holder_with_exit_4_and_force_overrides(tmp_path: Path) -> None:
    """While the lock's holder is alive on this host, `etl state unlock` exits 4 with one line
    naming its run, pid and host, and the lock stays; `--force` removes it."""
    state = str(tmp_path / "state.db")
    holder = SqliteStateStore(Path(state))
    with holder.lock("p", "run-live"):
        refused = invoke("state", "unlock", "p", "--state", state)
        assert refused.exit_code == 4 and refused.stdout == ""
        line = one_line(refused.stderr)
        assert f"run run-live, pid {os.getpid()} on {HOST}" in line and "--force" in line
        assert holder.show("p")["lock"]["run_id"] == "run-live"
        forced = invoke("state", "unlock", "p", "--state", state, "--force")
        assert (forced.exit_code, forced.stdout) == (0, "p: lock removed\n")
        assert holder.show("p")["lock"] is None
    holder.close()


def test_reset_refuses_while_a_run_holds_the_lock(tmp_path: Path) -> None:
    """`etl state reset` under a live run's lock exits 4 with one line naming the run, pid and
    host, and clears nothing; after the run it resets and leaves no lock."""
    state = tmp_path / "state.db"
    store = state_with_a_run(state)
    with store.lock("p", "run-live"):
        refused = invoke("state", "reset", "p", "--state", str(state))
        assert refused.exit_code == 4
        assert f"run run-live, pid {os.getpid()} on {HOST}" in one_line(refused.stderr)
        assert store.watermark("p") == "2024-01-01" and store.show("p")["failed_total"] == 1
    done = invoke("state", "reset", "p", "--state", str(state))
    assert (done.exit_code, done.stdout) == (0, "p: state reset (target ids kept)\n")
    assert store.watermark("p") is None and store.show("p")["lock"] is None
    store.close()


# --- a pipeline never seen (D14) -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["show", "reset", "unlock"])
def test_a_pipeline_never_seen_is_one_line_and_creates_no_state_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """With no state file, `etl state show|reset|unlock x` exits 1 with `no state for pipeline 'x'
    in .etl/state.db` and creates neither the file nor its folder (nor `--state`'s folders)."""
    monkeypatch.chdir(tmp_path)
    result = invoke("state", command, "x")
    assert result.exit_code == 1 and result.stdout == ""
    assert one_line(result.stderr) == "etl: error: no state for pipeline 'x' in .etl/state.db\n"
    result = invoke("state", command, "x", "--state", "sub/dir/x.db")
    assert result.exit_code == 1
    assert one_line(result.stderr) == "etl: error: no state for pipeline 'x' in sub/dir/x.db\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["show", "reset", "unlock"])
def test_a_pipeline_the_state_file_does_not_know_is_one_line_and_changes_nothing(
    tmp_path: Path, command: str
) -> None:
    """A state file that holds other pipelines only: `etl state show|reset|unlock x` exits 1 with
    `no state for pipeline 'x' in PATH`, and no file of the folder changes."""
    state = tmp_path / "state.db"
    state_with_a_run(state, "other").close()
    before = snapshot(tmp_path)
    result = invoke("state", command, "x", "--state", str(state))
    assert result.exit_code == 1
    assert one_line(result.stderr) == f"etl: error: no state for pipeline 'x' in {state}\n"
    assert snapshot(tmp_path) == before


# --- rows that cannot be read (D10) -------------------------------------------------------------------


def pipeline_file(tmp_path: Path, **overrides: Any) -> Path:
    """An incremental pipeline named `p` with its state in tmp/state.db; no request is ever answered."""
    return write_pipeline_file(
        tmp_path, name="p", source={"incremental": {"cursor_field": "updated_at", "param": "since"}}, **overrides,
    )


def etl_run(tmp_path: Path, path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ETL_STATE_DSN"}
    return subprocess.run(
        [sys.executable, "-m", "runner", "run", str(path)], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("UPDATE pipelines SET watermark='{oops'", "the watermark in table pipelines is not JSON"),
        ("UPDATE runs SET counts='x'", "the counts column of run r1 in table runs is not JSON"),
        ("UPDATE failed SET raw='not json'", "a failed record's raw text in table failed is not JSON"),
        ("UPDATE pipelines SET checkpoint='{'", "the checkpoint in table pipelines is not JSON"),
        ("DROP TABLE keys", "table keys is missing"),
    ],
    ids=["watermark", "counts", "raw", "checkpoint", "no-keys-table"],
)
def test_state_show_of_a_row_that_cannot_be_read_is_one_line(tmp_path: Path, sql: str, message: str) -> None:
    """`etl state show` of a state whose row is not JSON, or whose table is gone: exit 1 and one
    line naming the store, the table and what to do; never a traceback."""
    state = tmp_path / "state.db"
    state_with_a_run(state).close()
    db = sqlite3.connect(state)
    with db:
        db.execute(sql)
    db.close()
    for output_format in ("text", "json"):
        result = invoke("state", "show", "p", "--state", str(state), "--format", output_format)
        assert result.exit_code == 1 and result.stdout == ""
        line = one_line(result.stderr)
        assert f"state store {state}: " in line and message in line
        assert "etl state reset p" in line or "move it aside" in line


def test_etl_run_with_a_watermark_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    """`etl run` over a state whose watermark row is not JSON: exit 1, one line naming the
    pipeline, the table and `etl state reset`; no request is sent."""
    path = pipeline_file(tmp_path)
    state_with_a_run(tmp_path / "state.db").close()
    db = sqlite3.connect(tmp_path / "state.db")
    with db:
        db.execute("UPDATE pipelines SET watermark='not json'")
    db.close()
    result = etl_run(tmp_path, path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "pipeline 'p': the watermark in table pipelines is not JSON" in line and "etl state reset p" in line


def test_etl_run_when_the_state_folder_is_a_file_is_one_line(tmp_path: Path) -> None:
    """`.etl` being a regular file: `etl run` exits 1 with one line naming it (not a FileExistsError)."""
    path = pipeline_file(tmp_path, state={"path": "{tmp}/.etl/state.db"})
    (tmp_path / ".etl").write_text("")
    result = etl_run(tmp_path, path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"{tmp_path / '.etl'} is a file, not a folder" in line


# --- what `show` prints of secrets (D6) ---------------------------------------------------------------


def test_state_show_masks_the_secrets_an_older_state_file_holds(tmp_path: Path) -> None:
    """A state file written before secrets were kept out of it (a next URL with `api_key=...`, a
    failed record with the key): `etl state show NAME` masks secret-named query parameters,
    and `etl state show FILE` (which knows the file's secrets) prints none of them, as text or JSON."""
    secret = "sh0w-s3cr3t-older-file"
    path = write_pipeline_file(
        tmp_path, name="p",
        source={"auth": {"type": "api_key", "name": "api_key", "value": "${KEY}", "in": "query"}},
        target=whole({"type": "jsonl", "path": "{tmp}/out.jsonl"}),
    )
    state_with_a_run(tmp_path / "state.db").close()
    checkpoint = {"next": {"url": f"http://api.test/items?api_key={secret}&page=2", "params": None}, "pages": 1}
    db = sqlite3.connect(tmp_path / "state.db")
    with db:
        db.execute("UPDATE pipelines SET checkpoint=?", (json.dumps(checkpoint),))
        db.execute("UPDATE failed SET raw=?", (json.dumps({"echo": f"key {secret}"}),))
    db.close()
    by_name = invoke("state", "show", "p", "--state", str(tmp_path / "state.db"))
    assert by_name.exit_code == 0 and "api_key=***&page=2" in by_name.stdout
    for output_format in ("text", "json"):
        shown = invoke("state", "show", str(path), "--format", output_format, env={"KEY": secret})
        assert shown.exit_code == 0, shown.stderr
        assert secret not in shown.stdout and "page=2" in shown.stdout and "key ***" in shown.stdout
