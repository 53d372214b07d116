"""run(): fetch -> map -> upsert -> checkpoint, page by page, and the counts.

Per page: map its records, look up their state in one query, write the
changes to the target in one commit, then commit hashes, failures and the
checkpoint to the state store in one transaction. State moves only after the
data is committed, so a replayed page is harmless: upserts are idempotent and
unchanged records are skipped by hash.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Mapping

import httpx

from runner import log
from runner.http.client import HttpClient
from runner.load.apply import Counts
from runner.load.plan import Checkpoint, Committer, RunState
from runner.config import load_pipeline
from runner.errors import EtlError, Interrupted
from runner.load.watermark import Watermark
from runner.model import Pipeline, PostgresTarget, SqliteTarget
from runner.extract.prefetch import prefetch
from runner.extract.reader import SourceReader
from runner.state import RunRecord, StateStore, open_store
from runner.targets import Target, dry_run_target, open_target
from runner.load.process import Setup, WriterProcess

logger = logging.getLogger(__name__)

# Pages fetched ahead of the one being mapped, and pages mapped ahead of the one being
# written (in the writer process): fetching, mapping and writing overlap, and memory
# stays bounded by these counts (plus source.concurrency pages in flight).
PREFETCH_PAGES = 2
WRITE_BEHIND_PAGES = 4

Progress = Callable[["Counts", int, float], None]


class StopFlag(threading.Event):
    """Set by a signal handler; the engine stops after committing the page in hand."""

    reason = "SIGINT"

    def stop(self, reason: str) -> None:
        self.reason = reason
        self.set()


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run did; `exit_code` is what `etl run` exits with."""

    run_id: str
    pipeline: str
    status: str  # success | partial | failed | interrupted
    counts: Counts
    pages: int = 0
    requests: int = 0
    retries: int = 0
    elapsed_ms: int = 0
    stopped_by: str | None = None
    dry_run: bool = False
    resumed: bool = False
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return {"success": 0, "partial": 3, "failed": 1, "interrupted": 130}[self.status]

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "counts"}
        return {**data, **asdict(self.counts)}


def run(
    pipeline: Pipeline | str | Path,
    *,
    dry_run: bool = False,
    full_refresh: bool = False,
    restart: bool = False,
    env: Mapping[str, str] | None = None,
    env_file: str | Path | None = None,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
    stdout: IO[str] | None = None,
    stop: StopFlag | None = None,
    on_progress: Progress | None = None,
) -> RunResult:
    """Run one pipeline; return its RunResult, or raise EtlError (with `.result`) when it fails.

    `transport` and `sleep` are seams for tests (no real network, no real waiting).
    `stop` is set by a signal handler to end the run after the page in hand.
    """
    if not isinstance(pipeline, Pipeline):
        pipeline = load_pipeline(pipeline, env=env, env_file=env_file)
    log.add_secrets(pipeline.secrets)
    run_id = uuid.uuid4().hex[:12]
    with log.run_context(run_id=run_id, pipeline=pipeline.name):
        store = open_store(pipeline.state, read_only=dry_run)
        try:
            with store.lock(pipeline.name, run_id):
                return _locked_run(
                    pipeline, store, run_id,
                    dry_run=dry_run, full_refresh=full_refresh, restart=restart,
                    transport=transport, sleep=sleep, stdout=stdout or sys.stdout,
                    stop=stop or StopFlag(), on_progress=on_progress,
                )
        finally:
            store.close()


def _locked_run(
    pipeline: Pipeline, store: StateStore, run_id: str, *, dry_run: bool, full_refresh: bool,
    restart: bool, transport: httpx.BaseTransport | None, sleep: Callable[[float], None],
    stdout: IO[str], stop: StopFlag, on_progress: Progress | None,
) -> RunResult:
    started = time.monotonic()
    checkpoint = None if (restart or full_refresh) else _load_checkpoint(store, pipeline.name)
    source = pipeline.source
    sleep = _interruptible(sleep, stop)
    client = HttpClient(
        timeout=source.timeout, retry=source.retry, rate_limit=source.rate_limit, auth=source.auth,
        headers=source.headers, max_response_bytes=source.max_response_bytes,
        transport=transport, sleep=sleep,
    )
    record = RunRecord(run_id=run_id, started_at=_now())
    state: RunState | None = None
    reader: SourceReader | None = None
    error: EtlError | None = None
    # started first, so that its start-up overlaps with opening the target and the first fetch
    writer = None if dry_run else _start_writer(pipeline, run_id, checkpoint.dumps() if checkpoint else None)
    try:
        target = dry_run_target(stdout) if dry_run else _open_target(pipeline, transport, sleep)
        state = RunState(pipeline, store, target)
        params = _base_params(pipeline, store, full_refresh)
        state.watermark = _tracker(pipeline, checkpoint)
        if checkpoint is not None:
            state.pages = state.planned = checkpoint.pages
            state.checkpoint = checkpoint.dumps()
            log.event(logger, "run.resumed", level=logging.WARNING, from_page=checkpoint.pages + 1)
        store.start_run(pipeline.name, record)
        reader = SourceReader(
            source=source, send=client.send, params=params,
            start=checkpoint.next if checkpoint else None,
        )
        _pump(state, reader, writer, stop=stop, on_progress=on_progress, started=started)
    except EtlError as exc:
        error = exc
    finally:
        client.close()
        if writer is not None:
            writer.close()
    return _finish(
        pipeline, store, record, state, reader, client, error,
        dry_run=dry_run, resumed=checkpoint is not None, started=started,
    )


def _pump(
    state: RunState, reader: SourceReader, writer: WriterProcess | None, *, stop: StopFlag,
    on_progress: Progress | None, started: float,
) -> None:
    """Pages from the reader (fetched ahead) through the committer (applied inline or in
    the writer process, which commits behind the pages being fetched and mapped)."""

    def committed() -> None:
        if on_progress is not None:
            on_progress(state.counts, state.pages, time.monotonic() - started)

    try:
        committer = Committer(state, channel=writer, depth=WRITE_BEHIND_PAGES, on_commit=committed)
        try:
            for page in prefetch(reader.pages(), depth=PREFETCH_PAGES):
                committer.submit(page)
                if stop.is_set():
                    break
        finally:
            committer.close()
        if stop.is_set():
            raise Interrupted(stop.reason)
    finally:
        state.target.close()


def _start_writer(pipeline: Pipeline, run_id: str, committed: str | None) -> WriterProcess | None:
    """The writer process for a database target, or None to apply inline: the http
    target (an update needs the id its create returned), jsonl, or ETL_WRITER=inline."""
    if not isinstance(pipeline.target, (SqliteTarget, PostgresTarget)):
        return None
    if os.environ.get("ETL_WRITER", "process") == "inline":
        return None
    setup = Setup(
        pipeline.name, pipeline.target, pipeline.state, pipeline.mapping.names,
        committed, os.getpid(), run_id, pipeline.secrets, log.settings(),
    )
    try:
        return WriterProcess(setup)
    except OSError as exc:
        log.event(logger, "writer.inline", level=logging.WARNING, reason=f"cannot start the writer process: {exc}")
        return None


def _interruptible(sleep: Callable[[float], None], stop: StopFlag) -> Callable[[float], None]:
    """Retry and rate-limit waits end at once when a signal arrives, so a stop never waits
    out a long Retry-After; the fetch then fails with Interrupted and nothing is lost."""

    def wait(seconds: float) -> None:
        if sleep is time.sleep:
            stopped = stop.wait(seconds)
        else:
            sleep(seconds)
            stopped = stop.is_set()
        if stopped:
            raise Interrupted(stop.reason)

    return wait


def _open_target(pipeline: Pipeline, transport: httpx.BaseTransport | None, sleep: Callable[[float], None]) -> Target:
    return open_target(pipeline.target, fields=pipeline.mapping.names, pipeline=pipeline.name, transport=transport, sleep=sleep)


def _load_checkpoint(store: StateStore, name: str) -> Checkpoint | None:
    text = store.checkpoint(name)
    return None if text is None else Checkpoint.loads(text)


def _base_params(pipeline: Pipeline, store: StateStore, full_refresh: bool) -> dict[str, Any]:
    """The source's params, plus the saved watermark (or initial value) as the incremental param."""
    params = dict(pipeline.source.params)
    incremental = pipeline.source.incremental
    if incremental is not None:
        value = None if full_refresh else store.watermark(pipeline.name)
        if value is None:
            value = incremental.initial_value
        if value is not None:
            params[incremental.param] = value
    return params


def _tracker(pipeline: Pipeline, checkpoint: Checkpoint | None) -> Watermark | None:
    if pipeline.source.incremental is None:
        return None
    tracker = Watermark()
    if checkpoint is not None and checkpoint.watermark is not None:
        tracker.observe(checkpoint.watermark)
    return tracker


def _finish(
    pipeline: Pipeline, store: StateStore, record: RunRecord, state: RunState | None,
    reader: SourceReader | None, client: HttpClient, error: EtlError | None, *,
    dry_run: bool, resumed: bool, started: float,
) -> RunResult:
    counts = state.counts if state else Counts()
    status = _status(error, counts)
    result = RunResult(
        run_id=record.run_id, pipeline=pipeline.name, status=status, counts=counts,
        pages=state.pages if state else 0,
        requests=client.requests + _target_count(state, "requests"),
        retries=client.retries + _target_count(state, "retries"),
        elapsed_ms=int((time.monotonic() - started) * 1000),
        stopped_by=reader.stopped_by if reader else None, dry_run=dry_run, resumed=resumed,
        error=log.redact(str(error)) if error else None,
    )
    record.status, record.finished_at = status, _now()
    record.counts = {k: v for k, v in result.as_dict().items() if k not in ("run_id", "pipeline", "status")}
    done = status in ("success", "partial")
    store.finish_run(
        pipeline.name, record,
        watermark=_new_watermark(state) if done else None, clear_checkpoint=done,
    )
    fields = {k: v for k, v in result.as_dict().items() if k not in ("run_id", "pipeline")}
    if fields["error"] is None:
        del fields["error"]
    level = logging.INFO if done else logging.ERROR
    log.event(logger, "run.summary", level=level, **fields)
    if error is not None:
        if isinstance(error, Interrupted) is False and status == "interrupted":
            error = Interrupted()
        error.result = result  # type: ignore[attr-defined]
        raise error
    return result


def _target_count(state: RunState | None, name: str) -> int:
    """Requests (or retries) an http target made; other targets make none."""
    return int(getattr(state.target, name, 0)) if state is not None else 0


def _new_watermark(state: RunState | None) -> Any:
    """The greatest cursor value seen, held back to the earliest failed record's value."""
    if state is None or state.watermark is None:
        return None
    if state.first_failed is not None and state.first_failed.value is not None:
        return state.watermark.lesser(state.first_failed.value)
    return state.watermark.value


def _status(error: EtlError | None, counts: Counts) -> str:
    if isinstance(error, Interrupted):
        return "interrupted"
    if error is not None:
        return "failed"
    return "partial" if counts.failed else "success"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
