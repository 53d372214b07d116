"""Tests of the SQLite state store: migrations, page commits, lock, reset, read-only mode."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runner import log
from runner.errors import LockError, StateError
from runner.state import sqlite as state_sqlite
from runner.state.base import FailedRecord, PageCommit, RunRecord
from runner.state.sqlite import MIGRATIONS, SqliteStateStore


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStateStore(tmp_path / "state.db")
    yield s
    s.close()


def commit(store: SqliteStateStore, hashes=(), failed=(), succeeded=(), checkpoint=None, name="p") -> None:
    store.commit_page(name, PageCommit(list(hashes), list(failed), list(succeeded), checkpoint))


def test_new_file_is_migrated_to_the_latest_version(tmp_path: Path) -> None:
    """Opening a new file creates it in WAL mode at the newest schema version."""
    SqliteStateStore(tmp_path / "s.db").close()
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A state file from a newer etl is refused with a message that says to upgrade."""
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StateError, match="upgrade etl"):
        SqliteStateStore(tmp_path / "s.db")


def test_key_states_in_one_lookup_for_many_keys(store: SqliteStateStore) -> None:
    """key_states answers for 1,200 keys (more than one chunk) and omits unknown ones."""
    commit(store, hashes=[(str(i), f"h{i}", None) for i in range(1200)])
    found = store.key_states("p", [str(i) for i in range(1250)])
    assert len(found) == 1200
    assert found["1199"].hash == "h1199"
    assert store.key_states("other", ["1"]) == {}


def test_target_id_is_kept_when_a_later_commit_has_none(store: SqliteStateStore) -> None:
    """An update commit without a target id keeps the id the create stored."""
    commit(store, hashes=[("a", "h1", "crm_1")])
    commit(store, hashes=[("a", "h2", None)])
    state = store.key_states("p", ["a"])["a"]
    assert (state.hash, state.target_id) == ("h2", "crm_1")


def test_failures_are_kept_and_cleared_on_success(store: SqliteStateStore) -> None:
    """A failed record is kept with its error and raw record, and cleared once it succeeds."""
    commit(store, failed=[FailedRecord("a", {"id": "a"}, "422: bad email"), FailedRecord(None, {"x": 1}, "null key")])
    shown = store.show("p")
    assert shown["failed_total"] == 2
    assert {f["error"] for f in shown["failed"]} == {"422: bad email", "null key"}
    commit(store, hashes=[("a", "h", None)], succeeded=["a"])
    assert [f["raw"] for f in store.show("p")["failed"]] == [{"x": 1}]


def test_watermark_keeps_its_json_type_and_checkpoint_clears(store: SqliteStateStore) -> None:
    """The watermark round-trips as the JSON value written; a successful finish clears the checkpoint."""
    run = RunRecord(run_id="r1", started_at="t0")
    store.start_run("p", run)
    commit(store, checkpoint='{"next": 1}')
    assert store.checkpoint("p") == '{"next": 1}'
    run.status, run.counts = "success", {"created": 3}
    store.finish_run("p", run, watermark=1700000000, clear_checkpoint=True)
    assert store.watermark("p") == 1700000000 and store.checkpoint("p") is None
    store.finish_run("p", run, watermark=None, clear_checkpoint=False)
    assert store.watermark("p") == 1700000000
    assert store.show("p")["runs"][0]["created"] == 3


def test_reset_keeps_target_ids_only(store: SqliteStateStore) -> None:
    """reset clears watermark, checkpoint, hashes and failures, but keeps http target ids."""
    commit(store, hashes=[("a", "h", "crm_1"), ("b", "h", None)], failed=[FailedRecord("c", {}, "e")], checkpoint="{}")
    store.finish_run("p", RunRecord("r"), watermark="2024-01-01", clear_checkpoint=False)
    store.reset("p")
    assert store.watermark("p") is None and store.checkpoint("p") is None
    assert store.key_states("p", ["a", "b"]) == {"a": store.key_states("p", ["a"])["a"]}
    assert store.key_states("p", ["a"])["a"].hash is None
    assert store.key_states("p", ["a"])["a"].target_id == "crm_1"
    assert store.show("p")["failed_total"] == 0


def test_show_returns_each_part_of_a_pipeline_state(store: SqliteStateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """show returns, in this order, the watermark, checkpoint, key count, lock holder, runs with
    their counts, and failed records with their total."""
    monkeypatch.setattr(state_sqlite, "now_iso", lambda: "T")
    run = RunRecord("r1", started_at="t1")
    store.start_run("p", run)
    checkpoint = '{"next": {"url": "http://api/items?page=2", "params": null}, "pages": 1, "watermark": null}'
    commit(store, hashes=[("a", "h", None), ("b", "h", "crm_2")], failed=[FailedRecord("c", {"id": "c"}, "bad")],
           checkpoint=checkpoint)
    run.status, run.finished_at, run.counts = "partial", "t2", {"created": 2, "failed": 1}
    store.finish_run("p", run, watermark={"at": 5}, clear_checkpoint=False)
    with store.lock("p", "r2"):
        shown = store.show("p")
    assert shown == {
        "pipeline": "p", "watermark": {"at": 5}, "checkpoint": checkpoint, "keys": 2, "pending": 0,
        "lock": {"run_id": "r2", "pid": os.getpid(), "host": socket.gethostname(), "acquired_at": "T"},
        "runs": [
            {"run_id": "r1", "status": "partial", "started_at": "t1", "finished_at": "t2", "created": 2, "failed": 1},
        ],
        "failed_total": 1,
        "failed": [{"external_id": "c", "error": "bad", "failed_at": "T", "raw": {"id": "c"}}],
    }
    assert list(shown) == [
        "pipeline", "watermark", "checkpoint", "keys", "pending", "lock", "runs", "failed_total", "failed"]
    assert store.show("other") == {
        "pipeline": "other", "watermark": None, "checkpoint": None, "keys": 0, "pending": 0, "lock": None,
        "runs": [], "failed_total": 0, "failed": [],
    }


def test_read_only_store_creates_no_file(tmp_path: Path) -> None:
    """A read-only store on a missing path is empty and creates nothing."""
    store = SqliteStateStore(tmp_path / "none" / "state.db", read_only=True)
    assert store.watermark("p") is None and store.key_states("p", ["a"]) == {}
    commit(store, hashes=[("a", "h", None)])
    with store.lock("p", "r"):
        pass
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_read_only_store_reads_and_changes_no_byte(tmp_path: Path) -> None:
    """A read-only store reads an existing file and leaves its bytes (and its folder) unchanged."""
    path = tmp_path / "state.db"
    writer = SqliteStateStore(path)
    commit(writer, hashes=[("a", "h", None)])
    writer.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    reader = SqliteStateStore(path, read_only=True)
    assert reader.key_states("p", ["a"])["a"].hash == "h"
    commit(reader, hashes=[("b", "h", None)])
    reader.close()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_second_lock_on_a_live_holder_fails(tmp_path: Path) -> None:
    """While one run holds a pipeline's lock, a second gets LockError naming the holder."""
    a, b = SqliteStateStore(tmp_path / "s.db"), SqliteStateStore(tmp_path / "s.db")
    with a.lock("p", "run-a"):
        with pytest.raises(LockError, match=r"already running .*run-a"), b.lock("p", "run-b"):
            pass
        with b.lock("other", "run-c"):
            pass
    with b.lock("p", "run-b"):
        pass
    a.close(), b.close()


def test_lock_of_a_dead_process_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A lock whose process has died is taken over, with a warning in the log."""
    path = tmp_path / "s.db"
    code = (
        "import os; from runner.state.sqlite import SqliteStateStore as S; "
        f"s=S(__import__('pathlib').Path({str(path)!r}));"
        "cm=s.lock('p','dead-run'); cm.__enter__(); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    store = SqliteStateStore(path)
    assert store.show("p")["lock"]["run_id"] == "dead-run"
    with caplog.at_level("WARNING"), store.lock("p", "new-run"):
        assert store.show("p")["lock"]["run_id"] == "new-run"
    assert "lock.taken_over" in caplog.text
    store.close()


def test_unlock_clears_a_lock(store: SqliteStateStore) -> None:
    """`unlock` removes a lock left behind, e.g. by a process on another host."""
    store._db.execute("INSERT INTO locks VALUES ('p', 'r', 1, 'elsewhere', 't')")
    assert store.unlock("p") is True and store.show("p")["lock"] is None
    assert store.unlock("p") is False


def test_unlock_refuses_a_holder_alive_on_this_host_unless_forced(tmp_path: Path) -> None:
    """Reliability D12: while the lock's holder is a live process on this host, `unlock` raises
    LockError (exit 4) naming its run, pid and host; `force=True` removes the lock anyway."""
    holder, other = SqliteStateStore(tmp_path / "s.db"), SqliteStateStore(tmp_path / "s.db")
    with holder.lock("p", "run-live"):
        pattern = rf"run run-live, pid {os.getpid()} on {socket.gethostname()}.*--force"
        with pytest.raises(LockError, match=pattern) as caught:
            other.unlock("p")
        assert caught.value.exit_code == 4 and "\n" not in str(caught.value)
        assert other.show("p")["lock"]["run_id"] == "run-live"
        assert other.unlock("p", force=True) is True and other.show("p")["lock"] is None
    holder.close(), other.close()


def test_unlock_removes_the_lock_of_a_dead_local_process(tmp_path: Path) -> None:
    """A lock whose holder on this host is gone is removed without --force."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store = SqliteStateStore(tmp_path / "s.db")
    store._db.execute("INSERT INTO locks VALUES ('p', 'r', ?, ?, 't')", (gone.pid, socket.gethostname()))
    assert store.unlock("p") is True and store.show("p")["lock"] is None
    store.close()


def test_reset_takes_the_lock_and_refuses_while_a_run_holds_it(tmp_path: Path) -> None:
    """Reliability D12: `reset` under a live run's lock raises LockError naming the run and
    clears nothing; once the run is over it resets, and leaves no lock behind."""
    run, other = SqliteStateStore(tmp_path / "s.db"), SqliteStateStore(tmp_path / "s.db")
    with run.lock("p", "run-live"):
        run.finish_run("p", RunRecord("run-live"), watermark=5, clear_checkpoint=False)
        with pytest.raises(LockError, match=rf"already running \(run run-live, pid {os.getpid()} on "):
            other.reset("p")
        assert other.watermark("p") == 5
    other.reset("p")
    assert other.watermark("p") is None and other.show("p")["lock"] is None
    run.close(), other.close()


def test_knows_a_pipeline_by_any_of_its_rows(store: SqliteStateStore) -> None:
    """`knows` is true for a pipeline with any row (a lock alone is one), false for one never seen."""
    assert not store.knows("p")
    with store.lock("p", "r"):
        assert store.knows("p") and not store.knows("other")
    store.start_run("q", RunRecord("r2"))
    assert store.knows("q") and not store.knows("p")


def test_a_column_added_to_every_state_table_breaks_no_write(store: SqliteStateStore) -> None:
    """Reliability D11: a column something else added to the state's tables (a sqlite target
    pointed at the state file adds its fields) does not break the store: every INSERT names
    its columns."""
    for table in ("pipelines", "keys", "failed", "runs", "locks"):
        store._db.execute(f"ALTER TABLE {table} ADD COLUMN name TEXT")
    with store.lock("p", "r"):
        store.start_run("p", RunRecord("r", started_at="t"))
        commit(store, hashes=[("a", "h", "t1")], failed=[FailedRecord("b", {"x": 1}, "e")], checkpoint="null")
        store.finish_run("p", RunRecord("r", status="success"), watermark=1, clear_checkpoint=True)
    assert store.key_states("p", ["a"])["a"].target_id == "t1" and store.show("p")["failed_total"] == 1


# --- no secret in the store (reliability D6) --------------------------------------------------


def checkpoint_text(url: str, params: dict[str, Any] | None = None) -> str:
    return json.dumps({"next": {"url": url, "params": params}, "pages": 2, "watermark": None})


def test_a_stored_checkpoint_loses_its_secret_query_values(tmp_path: Path) -> None:
    """A checkpoint's next request is stored without the query parameters whose value holds a
    known secret (in the URL or its params) and without the api_key's own parameter whatever
    its value; the rest of the URL stays as written, and no byte of the file holds the secret."""
    secret = "s3cr3t-checkpoint-unit"
    log.add_secrets([secret])
    log.add_secret_params(["k_unit"])
    store = SqliteStateStore(tmp_path / "s.db")
    url = f"http://api.test/items?k_unit=other&page=2&sig=x{secret}y&q=a%20b#top"
    commit(store, checkpoint=checkpoint_text(url, {"token": secret, "per_page": 10}))
    assert json.loads(store.checkpoint("p"))["next"] == {
        "url": "http://api.test/items?page=2&q=a%20b#top", "params": {"per_page": 10},
    }
    commit(store, checkpoint=checkpoint_text("http://api.test/items?page=3"))  # nothing to remove: kept as written
    assert store.checkpoint("p") == checkpoint_text("http://api.test/items?page=3")
    store.close()
    assert not any(secret.encode() in f.read_bytes() for f in tmp_path.iterdir())


def test_a_checkpoint_with_a_secret_outside_its_query_is_not_kept(
    store: SqliteStateStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A secret in a next URL's path cannot be removed and put back: the checkpoint is not kept
    (the next run starts from the beginning), and the log says so."""
    secret = "s3cr3t-in-a-path"
    log.add_secrets([secret])
    with caplog.at_level("WARNING"):
        commit(store, checkpoint=checkpoint_text(f"http://api.test/{secret}/items?page=2"))
    assert store.checkpoint("p") is None and "state.checkpoint_dropped" in caplog.text


def test_a_failed_record_is_stored_with_its_secrets_masked(tmp_path: Path) -> None:
    """Reliability D14: a failed record's raw text (keys and values, at any depth), its key and its
    error are stored with every secret value replaced by `***`; the raw text is still JSON, and
    the record's later success clears it."""
    secret = "s3cr3t-failed-unit"
    log.add_secrets([secret])
    store = SqliteStateStore(tmp_path / "s.db")
    raw = {"id": "a", "token": secret, "nested": [{"note": f"key={secret};"}], secret: 1}
    commit(store, failed=[FailedRecord("a", raw, f"HTTP 400: {secret} is not valid")])
    (shown,) = store.show("p")["failed"]
    assert shown["raw"] == {"id": "a", "token": "***", "nested": [{"note": "key=***;"}], "***": 1}
    assert shown["error"] == "HTTP 400: *** is not valid"
    commit(store, failed=[FailedRecord(None, {"secret": secret}, "no key")])
    commit(store, hashes=[("a", "h", None)], succeeded=["a"])
    assert [f["raw"] for f in store.show("p")["failed"]] == [{"secret": "***"}]
    store.close()
    assert not any(secret.encode() in f.read_bytes() for f in tmp_path.iterdir())


# --- rows that cannot be read (reliability D10) -------------------------------------------------


CORRUPT = {
    "watermark": ("UPDATE pipelines SET watermark='{oops'", r"the watermark in table pipelines is not JSON"),
    "checkpoint": (
        "UPDATE pipelines SET checkpoint='not json'",
        r"the checkpoint in table pipelines is not JSON.*--restart",
    ),
    "counts": ("UPDATE runs SET counts='x'", r"the counts column of run r1 in table runs is not JSON"),
    "counts-shape": (
        "UPDATE runs SET counts='[1, 2]'",
        r"the counts column of run r1 in table runs is a list, not an object",
    ),
    "raw": ("UPDATE failed SET raw='{'", r"a failed record's raw text in table failed is not JSON"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_row_that_cannot_be_read_is_one_state_error_and_reset_repairs_it(store: SqliteStateStore, case: str) -> None:
    """A state row that is not JSON (or counts that are not an object) makes `show` raise one
    StateError naming the store, the pipeline, the table and `etl state reset`; after the
    reset, `show` works again."""
    run = RunRecord("r1", started_at="t1", counts={"created": 1})
    store.start_run("p", run)
    commit(store, failed=[FailedRecord("b", {"x": 1}, "e")], checkpoint=checkpoint_text("http://api.test/?page=2"))
    store.finish_run("p", run, watermark=5, clear_checkpoint=False)
    sql, message = CORRUPT[case]
    store._db.execute(sql)
    pattern = rf"^state store .*state\.db: pipeline 'p': {message}.*`etl state reset p`"
    with pytest.raises(StateError, match=pattern) as caught:
        store.show("p")
    assert "\n" not in str(caught.value)
    if case == "watermark":
        with pytest.raises(StateError, match=message):
            store.watermark("p")
    store.reset("p")
    assert store.show("p")["failed_total"] == 0


def test_a_missing_table_is_one_state_error_saying_what_to_do(store: SqliteStateStore) -> None:
    """A state file whose `keys` table is gone: one StateError naming the table and the way out."""
    store._db.execute("DROP TABLE keys")
    with pytest.raises(StateError, match=r"state\.db: table keys is missing: .*move it aside"):
        store.show("p")


def test_a_folder_that_is_a_file_is_one_state_error(tmp_path: Path) -> None:
    """`.etl` being a regular file: one StateError naming it, not a FileExistsError."""
    (tmp_path / ".etl").write_text("")
    with pytest.raises(StateError, match=r"cannot open: .*\.etl is a file, not a folder"):
        SqliteStateStore(tmp_path / ".etl" / "state.db")


def test_read_only_store_on_a_log_without_its_index_is_one_state_error(tmp_path: Path) -> None:
    """A write-ahead log whose -shm index is gone cannot be read without creating one: a
    read-only store says so (and creates nothing) instead of writing the index."""
    path = tmp_path / "s.db"
    code = (
        "import os, pathlib; from runner.state.sqlite import SqliteStateStore as S; "
        "from runner.state.base import PageCommit;"
        f"s=S(pathlib.Path({str(path)!r})); "
        "s.commit_page('p', PageCommit([('a','h',None)], [], [], None)); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    Path(f"{path}-shm").unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(StateError, match=r"has no index .*a run that is not a dry run recovers it"):
        SqliteStateStore(path, read_only=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_read_only_store_sees_commits_left_in_the_wal_by_a_killed_run(tmp_path: Path) -> None:
    """After a writer dies without checkpointing, a read-only store still sees its commits."""
    path = tmp_path / "s.db"
    code = (
        "import os, pathlib; from runner.state.sqlite import SqliteStateStore as S; "
        "from runner.state.base import PageCommit;"
        f"s=S(pathlib.Path({str(path)!r})); "
        "s.commit_page('p', PageCommit([('a','h',None)], [], [], '{\"x\": 1}')); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert Path(f"{path}-wal").exists()
    store = SqliteStateStore(path, read_only=True)
    assert store.key_states("p", ["a"])["a"].hash == "h"
    assert store.checkpoint("p") == '{"x": 1}'
    store.close()


def test_read_only_store_on_an_unmigrated_file_is_empty(tmp_path: Path) -> None:
    """A state file that exists but was never migrated reads as an empty store, not a crash."""
    path = tmp_path / "s.db"
    sqlite3.connect(path).close()
    store = SqliteStateStore(path, read_only=True)
    assert store.watermark("p") is None and store.show("p")["keys"] == 0
    store.close()


RACE = """
import json, multiprocessing, sys
from pathlib import Path
from runner.state.sqlite import SqliteStateStore


def open_each_at_the_barrier(paths, barrier, results):
    for path in paths:
        barrier.wait(timeout=60)
        try:
            SqliteStateStore(Path(path)).close()
            results.put((path, None))
        except Exception as exc:  # reported to the test
            results.put((path, f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    paths = json.loads(sys.argv[1])
    context = multiprocessing.get_context("spawn")  # no fork of a process that may have threads
    barrier, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=open_each_at_the_barrier, args=(paths, barrier, results)) for _ in range(2)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * len(paths))]
    for process in processes:
        process.join(timeout=30)
    print(json.dumps(outcomes))
"""


@pytest.mark.parametrize("start", ["no file", "a WAL file never migrated"])
def test_two_processes_opening_one_new_state_file_at_once_both_succeed(tmp_path: Path, start: str) -> None:
    """Two processes (cron pipelines on their first day) open one new state file at the same
    moment, 20 times: every open succeeds, the schema is made once, and the file is in WAL mode.
    (The two run under a script of their own, so multiprocessing's resource tracker ends with it
    and no process outlives the test.)"""
    paths = [str(tmp_path / f"trial-{n}" / "state.db") for n in range(20)]
    if start == "a WAL file never migrated":
        for path in paths:
            Path(path).parent.mkdir()
            db = sqlite3.connect(path)
            db.execute("PRAGMA journal_mode=WAL")
            db.close()
    script = tmp_path / "race.py"
    script.write_text(RACE)
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(paths)], capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr
    outcomes = json.loads(done.stdout)
    failures = [f"{Path(path).parent.name}: {error}" for path, error in outcomes if error is not None]
    assert failures == []
    for path in paths:
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()
