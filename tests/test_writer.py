"""Tests of runner.load.process: the writer process that applies pages for database targets.

Runs go through the engine against the demo API on 127.0.0.1 with real SQLite
files; `serve()` is also driven directly over a pipe, in this process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import pytest

from conftest import write_pipeline_file
from runner.load.apply import PagePlan, PageResult
from runner.result import Counts
from runner.engine import run
from runner.errors import EtlError, TargetError
from runner.model import SqliteTargetConfig, StateConfig
from runner.state.sqlite import SqliteStateStore
from runner.load.process import Setup, serve

NO_WAIT = {"sleep": lambda seconds: None}


def write_pipeline(tmp_path: Path, base_url: str, **overrides: Any) -> Path:
    """conftest's demo-API `page` pipeline, named `writer-test`; `overrides` as its builder takes them."""
    return write_pipeline_file(tmp_path, base_url, name="writer-test", **overrides)


def children() -> list[int]:
    """This process's child processes (the demo API runs in a thread: only writers are children)."""
    found: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            found += [int(pid) for pid in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
    return found


def running(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, not a zombie awaiting its reaper)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def rows(tmp_path: Path) -> int:
    db = sqlite3.connect(tmp_path / "out.db")
    try:
        return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    finally:
        db.close()


def saved(tmp_path: Path) -> tuple[int, str | None]:
    store = SqliteStateStore(tmp_path / "state.db", read_only=True)
    try:
        shown = store.show("writer-test")
        return shown["keys"], shown["checkpoint"]
    finally:
        store.close()


# --- through the engine ---------------------------------------------------------------------


def test_a_database_target_is_written_by_a_child_process_and_inline_on_request(
    tmp_path: Path, demo_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite target gets a writer process while the run lasts, gone after; ETL_WRITER=inline has none."""
    api = demo_api(1000)
    path = write_pipeline(tmp_path, api.base_url)
    seen: list[list[int]] = []
    result = run(path, on_progress=lambda *_: seen.append(children()), **NO_WAIT)
    assert result.counts.created == 1000 and rows(tmp_path) == 1000
    assert seen and all(len(pids) == 1 for pids in seen) and children() == []
    monkeypatch.setenv("ETL_WRITER", "inline")
    seen.clear()
    (tmp_path / "out.db").unlink()
    again = run(path, full_refresh=True, on_progress=lambda *_: seen.append(children()), **NO_WAIT)
    assert again.counts.skipped == 1000 and seen and all(pids == [] for pids in seen)


def test_the_writers_error_fails_the_run_with_its_class_and_message_and_moves_no_state(
    tmp_path: Path, demo_api: Any
) -> None:
    """A target that refuses every insert: the run fails with the TargetError raised in the child,
    naming file and table and SQLite's words, and the state store has no key and no checkpoint."""
    api = demo_api(500)
    path = write_pipeline(tmp_path, api.base_url)
    db = sqlite3.connect(tmp_path / "out.db")
    db.executescript(
        "CREATE TABLE items (external_id TEXT PRIMARY KEY, name, tags);"
        "CREATE TRIGGER refuse BEFORE INSERT ON items BEGIN SELECT RAISE(ABORT, 'inserts refused here'); END;"
    )
    db.close()
    with pytest.raises(TargetError) as caught:
        run(path, **NO_WAIT)
    message = str(caught.value)
    assert f"sqlite target {tmp_path / 'out.db'} table items" in message and "inserts refused here" in message
    assert caught.value.result.status == "failed" and caught.value.exit_code == 1  # type: ignore[attr-defined]
    assert saved(tmp_path) == (0, None) and children() == []


def test_a_writer_killed_mid_run_fails_the_run_and_the_next_run_lands_everything(
    tmp_path: Path, demo_api: Any
) -> None:
    """SIGKILL to the writer after its first commit: the run fails saying the writer exited;
    what it committed stays, and a re-run lands every record exactly once."""
    api = demo_api(3000, latency_ms=5)
    path = write_pipeline(tmp_path, api.base_url)
    killed: list[int] = []

    def kill_writer(counts: Any, pages: int, elapsed: float) -> None:
        if not killed:
            killed.extend(children())
            os.kill(killed[0], signal.SIGKILL)

    with pytest.raises(EtlError, match=r"the writer process exited unexpectedly \(exit code -9\)") as caught:
        run(path, on_progress=kill_writer, **NO_WAIT)
    committed = caught.value.result.pages  # type: ignore[attr-defined]
    # the writer may have committed a batch more than it told before it died: at least these
    known, _ = saved(tmp_path)
    assert 1 <= committed < 30 and known >= committed * 100 and rows(tmp_path) >= known
    again = run(path, **NO_WAIT)
    assert again.status == "success" and rows(tmp_path) == 3000
    assert again.counts.created == 3000 - known


def test_sigint_to_the_writer_is_ignored_the_engine_decides(tmp_path: Path, demo_api: Any) -> None:
    """Ctrl-C reaches the whole process group; the writer ignores it, so a run not stopped completes."""
    api = demo_api(2000, latency_ms=2)
    path = write_pipeline(tmp_path, api.base_url)
    signalled: list[int] = []

    def interrupt_writer(counts: Any, pages: int, elapsed: float) -> None:
        if not signalled:
            signalled.extend(children())
            os.kill(signalled[0], signal.SIGINT)

    result = run(path, on_progress=interrupt_writer, **NO_WAIT)
    assert signalled and result.status == "success" and rows(tmp_path) == 2000


@pytest.mark.parametrize("python", ["no-such-python", "/bin/false", "slow-to-fail"])
def test_a_writer_that_cannot_start_falls_back_to_inline_with_a_warning(
    tmp_path: Path, demo_api: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    python: str,
) -> None:
    """No Python to start, one that ends at once, or one that ends a while after the first
    plans were sent to it (an embedding host): the run applies inline what the writer was
    sent and the rest, says why, and lands everything once."""
    api = demo_api(1000)
    path = write_pipeline(tmp_path, api.base_url)
    executable = tmp_path / python
    if python == "slow-to-fail":
        executable.write_text("#!/bin/sh\nsleep 0.3\nexit 1\n")
        executable.chmod(0o755)
    monkeypatch.setattr("sys.executable", python if python.startswith("/") else str(executable))
    with caplog.at_level(logging.WARNING, logger="runner.engine"):
        result = run(path, **NO_WAIT)
    assert result.status == "success" and result.counts.created == 1000 and rows(tmp_path) == 1000
    assert saved(tmp_path) == (1000, None)
    (warning,) = [r for r in caplog.records if r.getMessage() == "writer.inline"]
    assert "writer process" in warning.fields["reason"]  # type: ignore[attr-defined]


def test_a_launcher_between_engine_and_writer_is_no_obstacle(
    tmp_path: Path, demo_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sys.executable is a wrapper script that runs Python without exec: the writer's parent is
    the wrapper, so it watches the engine's pid instead, and the run goes through it."""
    api = demo_api(1000)
    path = write_pipeline(tmp_path, api.base_url)
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr("sys.executable", str(wrapper))
    seen: list[list[int]] = []
    result = run(path, on_progress=lambda *_: seen.append(children()), **NO_WAIT)
    assert result.status == "success" and rows(tmp_path) == 1000 and seen and all(seen)


def test_ctrl_c_right_after_the_writer_starts_still_ends_interrupted(tmp_path: Path, demo_api: Any) -> None:
    """Ctrl-C goes to the terminal's whole process group, even while the writer is still
    starting; the writer is in a session of its own, so the run ends interrupted (130)."""
    api = demo_api(20000, latency_ms=50)
    path = write_pipeline(tmp_path, api.base_url)
    code = (
        "import sys, runner.cli, runner.load.applier\n"
        "class Told(runner.load.applier.subprocess.Popen):\n"
        "    def __init__(self, *a, **k):\n"
        "        super().__init__(*a, **k)\n"
        "        print('spawned', flush=True, file=sys.stderr)\n"
        "runner.load.applier.subprocess.Popen = Told\n"
        f"sys.argv = ['etl', 'run', {str(path)!r}]\n"
        "runner.cli.entry()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stderr is not None and proc.stderr.readline().strip() == "spawned"
    time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 130, err
    assert "status=interrupted" in err and "writer process exited" not in err
    assert "writer.inline" not in err, "the writer was hit by the Ctrl-C meant for the engine"


# --- serve(), driven over a pipe in this process ----------------------------------------------


def plan(number: int, keys: range) -> PagePlan:
    mapped = [(str(k), {"name": f"n{k}", "tags": None}) for k in keys]
    return PagePlan(number, len(mapped), mapped, [], f'{{"page": {number + 1}}}', Counts(processed=len(mapped)))


def setup(tmp_path: Path, engine_pid: int) -> Setup:
    target = SqliteTargetConfig(tmp_path / "out.db", "items")
    return Setup("writer-test", target, StateConfig(path=tmp_path / "state.db"), ["name", "tags"], None, engine_pid)


def serve_in_thread(*messages: Any) -> tuple[list[Any], threading.Thread]:
    """Queue `messages` on the plans pipe, then serve them; return the answers (filled when done)."""
    plans_r, plans_w = Pipe(duplex=False)
    results_r, results_w = Pipe(duplex=False)
    for message in messages:
        plans_w.send(message)
    answers: list[Any] = []

    def work() -> None:
        serve(plans_r, results_w)
        results_w.close()
        while True:
            try:
                answers.append(results_r.recv())
            except EOFError:
                return

    thread = threading.Thread(target=work)
    thread.start()
    return answers, thread


def test_plans_already_waiting_are_applied_as_one_batch(tmp_path: Path) -> None:
    """Three plans queued before the writer reads: one answer covering 3 pages, the last checkpoint."""
    answers, thread = serve_in_thread(
        setup(tmp_path, os.getppid()), plan(1, range(0, 10)), plan(2, range(10, 20)), plan(3, range(20, 30)), None
    )
    thread.join(10)
    ready, (kind, result) = answers
    assert ready == ("ready", None) and kind == "page" and isinstance(result, PageResult)
    assert (result.pages, result.last_page, result.counts.created, result.last_checkpoint) == (3, 3, 30, '{"page": 4}')
    assert rows(tmp_path) == 30 and saved(tmp_path) == (30, '{"page": 4}')


def test_the_writer_commits_nothing_once_its_engine_is_gone(tmp_path: Path) -> None:
    """A writer whose engine has ended (here: a pid that no longer runs, as when a launcher
    stood between them) says it is ready, then exits without applying anything."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    answers, thread = serve_in_thread(setup(tmp_path, engine_pid=gone.pid), plan(1, range(10)), None)
    thread.join(10)
    assert answers == [("ready", None)] and saved(tmp_path) == (0, None)


def test_a_writer_that_cannot_open_the_target_says_so_instead_of_ready(tmp_path: Path) -> None:
    """The target path is a directory: the first answer is the TargetError, and the writer ends."""
    (tmp_path / "out.db").mkdir()
    answers, thread = serve_in_thread(setup(tmp_path, os.getppid()), plan(1, range(10)), None)
    thread.join(10)
    ((kind, (name, message, plans)),) = answers
    assert (kind, name, plans) == ("error", "TargetError", 0) and "out.db" in message


def test_after_an_error_the_writer_answers_the_rest_dropped(tmp_path: Path) -> None:
    """A target that refuses inserts: the first plan gets the error, each later plan "dropped",
    none applied, and the state store has no key and no checkpoint."""
    db = sqlite3.connect(tmp_path / "out.db")
    db.executescript(
        "CREATE TABLE items (external_id TEXT PRIMARY KEY, name, tags);"
        "CREATE TRIGGER refuse BEFORE INSERT ON items BEGIN SELECT RAISE(ABORT, 'refused'); END;"
    )
    db.close()
    plans_r, plans_w = Pipe(duplex=False)
    results_r, results_w = Pipe(duplex=False)
    thread = threading.Thread(target=serve, args=(plans_r, results_w))
    thread.start()
    plans_w.send(setup(tmp_path, os.getppid()))
    assert results_r.recv() == ("ready", None)
    plans_w.send(plan(1, range(10)))
    kind, (name, message, plans) = results_r.recv()
    assert (kind, name, plans) == ("error", "TargetError", 1) and "refused" in message
    plans_w.send(plan(2, range(10, 20)))
    assert results_r.recv() == ("dropped", 1)
    plans_w.send(None)
    thread.join(10)
    assert not thread.is_alive() and saved(tmp_path) == (0, None)


def test_a_writer_bug_is_reported_with_secrets_masked(capsys: pytest.CaptureFixture[str]) -> None:
    """An unexpected exception in the writer: its traceback on stderr and its gist for the engine,
    a known secret masked in both."""
    from runner import log
    from runner.load.process import _describe

    log.add_secrets(["pg-pass-SECRET-42"])
    try:
        raise RuntimeError("connect to postgresql://etl:pg-pass-SECRET-42@db failed")
    except RuntimeError as exc:
        name, message = _describe(exc)
    err = capsys.readouterr().err
    assert name == "EtlError" and message.startswith("writer process: RuntimeError: connect to")
    assert "Traceback" in err and "RuntimeError" in err
    assert "pg-pass-SECRET-42" not in message + err and "***" in message and "***" in err


def test_plans_sent_are_applied_even_when_the_engine_stops_listening(tmp_path: Path) -> None:
    """The engine closed its end of the results pipe (it is leaving after an error of its own):
    the writer still applies, in order, the plans it was sent, and exits cleanly."""
    plans_r, plans_w = Pipe(duplex=False)
    results_r, results_w = Pipe(duplex=False)
    results_r.close()
    for message in (setup(tmp_path, os.getppid()), plan(1, range(10)), plan(2, range(10, 20)), None):
        plans_w.send(message)
    serve(plans_r, results_w)
    assert rows(tmp_path) == 20 and saved(tmp_path) == (20, '{"page": 3}')


def test_a_writer_dies_with_its_killed_engine_even_mid_commit(tmp_path: Path, demo_api: Any) -> None:
    """The engine is SIGKILLed while its writer waits on a locked target: the kernel kills the
    writer too, so it cannot commit after the engine is gone (the next run may own the pipeline)."""
    api = demo_api(5000, latency_ms=5)
    path = write_pipeline(tmp_path, api.base_url)
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log_file:
        engine = subprocess.Popen(
            [sys.executable, "-m", "runner", "run", str(path)], cwd=tmp_path,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_file,
        )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "state.db").exists() or saved(tmp_path)[0] < 300:
            assert time.monotonic() < deadline and engine.poll() is None, log_path.read_text()
            time.sleep(0.01)
        (writer,) = [int(pid) for task in Path(f"/proc/{engine.pid}/task").iterdir()
                     for pid in (task / "children").read_text().split()]
        blocker = sqlite3.connect(tmp_path / "out.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # the writer's next target commit waits on this
        time.sleep(0.2)
        before = saved(tmp_path)
        engine.kill()
        engine.wait(timeout=10)
        gone = time.monotonic() + 2
        while running(writer):
            assert time.monotonic() < gone, "the writer outlived its engine"
            time.sleep(0.01)
        blocker.execute("COMMIT")
        blocker.close()
        time.sleep(0.3)
        assert saved(tmp_path) == before  # nothing committed after the engine died
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()


def test_pages_fetched_out_of_order_are_committed_in_order_with_their_checkpoints(
    tmp_path: Path, demo_api: Any
) -> None:
    """Four pages in flight, a third of them slow, so they complete out of order: every commit
    the writer reports is a later page than the one before, and the saved checkpoint never
    goes back nor lags the page reported (the writer may be a batch further already)."""
    from runner.dev.demo_api import Faults

    api = demo_api(3000, faults=Faults(slow_rate=0.3, slow_ms=15))
    path = write_pipeline(tmp_path, api.base_url, source={"concurrency": 4})
    seen: list[tuple[int, int | None]] = []

    def committed(counts: Any, pages: int, elapsed: float) -> None:
        _, checkpoint = saved(tmp_path)
        seen.append((pages, json.loads(checkpoint)["pages"] if checkpoint else None))

    result = run(path, on_progress=committed, **NO_WAIT)
    assert result.status == "success" and rows(tmp_path) == 3000
    numbers = [pages for pages, _ in seen]
    assert numbers == sorted(set(numbers)) and numbers[-1] == 30
    marks = [mark for _, mark in seen if mark is not None]  # the last page saves none
    assert marks == sorted(marks) and all(mark >= pages for pages, mark in seen if mark is not None)
