"""run(): fetch -> map -> upsert -> checkpoint, page by page, and the counts.

Per page: map its records (`load.plan`), hand the plan to an applier
(`load.applier`: inline, or the writer process), which diffs it against the
state store, writes the changes to the target in one commit, then commits
hashes, failures and the checkpoint in one transaction. State moves only
after the data is committed, so a replayed page is harmless: upserts are
idempotent and unchanged records are skipped by hash.

A run that fails anywhere stops every other part at once: waits for a
Retry-After or the rate limit end, and the pages in flight are abandoned;
what was handed to the applier is still committed in order.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import IO, Any

import httpx

from runner import log
from runner.config import load_pipeline, templates
from runner.db import require_postgres_driver
from runner.errors import EtlError, FetchError, Interrupted, StateError
from runner.extract.pagination import PageRequest, paginator_for
from runner.extract.prefetch import prefetch
from runner.extract.reader import SourceReader
from runner.http.client import HttpClient
from runner.load.applier import Applier, InlineApplier, ProcessApplier, WriterUnavailable
from runner.load.apply import PageResult
from runner.load.plan import Checkpoint, Planner
from runner.load.process import Setup
from runner.load.watermark import Cursor, IncrementalCursor, SyncToken, cursor_for
from runner.model import Pipeline, PostgresTargetConfig, Source, SqliteTargetConfig
from runner.result import Counts, RunResult, RunStatus
from runner.state import RunRecord, StateStore, open_store
from runner.state.base import now_iso
from runner.targets import Target, dry_run_target, open_target
from runner.transform.values import INT64

__all__ = ["Counts", "RunResult", "StopFlag", "run"]

logger = logging.getLogger(__name__)

# Pages fetched ahead of the one being mapped, and pages mapped ahead of the one being
# written (in the writer process): fetching, mapping and writing overlap, and memory
# stays bounded by these counts (plus source.concurrency pages in flight).
PREFETCH_PAGES = 2
WRITE_BEHIND_PAGES = 4

Progress = Callable[[Counts, int, float], None]


class StopFlag(threading.Event):
    """Set by a signal handler; the engine stops after committing the page in hand."""

    reason = "SIGINT"

    def stop(self, reason: str) -> None:
        self.reason = reason
        self.set()


class _Halted(EtlError):
    """Raised in a wait that the run ended: another part of the run failed first."""


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
    source_transport: httpx.BaseTransport | None = None,
    store: StateStore | None = None,
) -> RunResult:
    """Run one pipeline; return its RunResult, or raise EtlError (with `.result`) when it fails.

    `transport` and `sleep` are seams for tests (no real network, no real waiting).
    `stop` is set by a signal handler to end the run after the page in hand.
    `source_transport` carries the source's requests only, not the http target's (recording
    and replaying them: `runner.authoring`); `store`, when given, is used instead of the
    configured state store, and closed at the end like it.
    """
    if not isinstance(pipeline, Pipeline):
        pipeline = load_pipeline(pipeline, env=env, env_file=env_file)
    if isinstance(pipeline.target, PostgresTargetConfig):  # else the writer process finds out, after a fetch
        require_postgres_driver("the postgres target")
    log.add_secrets(pipeline.secrets)
    run_id = uuid.uuid4().hex[:12]
    started = time.monotonic()
    with log.run_context(run_id=run_id, pipeline=pipeline.name):
        try:
            store = open_store(pipeline.state, read_only=dry_run) if store is None else store
        except EtlError as exc:
            raise _unstarted(exc, run_id, pipeline.name, dry_run, started) from None
        try:
            with store.lock(pipeline.name, run_id):
                options = _Options(
                    dry_run, full_refresh, restart, transport, sleep, stdout or sys.stdout, source_transport
                )
                return _Run(pipeline, store, run_id, options, stop or StopFlag(), on_progress, started).execute()
        except EtlError as exc:
            if exc.result is None:  # the lock, or the store before the run began
                raise _unstarted(exc, run_id, pipeline.name, dry_run, started) from None
            raise
        finally:
            store.close()


class _Options:
    """How `run()` was asked to run; fixed for the run."""

    __slots__ = ("dry_run", "full_refresh", "restart", "sleep", "source_transport", "stdout", "transport")

    def __init__(
        self, dry_run: bool, full_refresh: bool, restart: bool, transport: httpx.BaseTransport | None,
        sleep: Callable[[float], None], stdout: IO[str], source_transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.dry_run, self.full_refresh, self.restart = dry_run, full_refresh, restart
        self.transport, self.sleep, self.stdout = transport, sleep, stdout
        self.source_transport = source_transport or transport


class _Run:
    """One run of one pipeline, holding its lock: its parts, its bookkeeping, its end."""

    def __init__(
        self, pipeline: Pipeline, store: StateStore, run_id: str, options: _Options, stop: StopFlag,
        on_progress: Progress | None, started: float,
    ) -> None:
        self.pipeline, self.store, self.options, self.stop = pipeline, store, options, stop
        self.on_progress, self.started = on_progress, started
        self.record = RunRecord(run_id=run_id, started_at=now_iso())
        self.halt = threading.Event()  # set when any part fails: every wait ends
        self.counts = Counts()
        self.pages = 0  # pages committed (numbered on from a checkpoint)
        self.checkpoint = self._checkpoint()
        self.cursor = self._cursor()
        self.source = pipeline.source  # with its templates filled, once `_open` ran
        self.client: HttpClient | None = None
        self.reader: SourceReader | None = None
        self.applier: Applier | None = None
        self.target: Target | None = None  # opened in this process (the http target counts its requests)

    # --- the run ----------------------------------------------------------------

    def execute(self) -> RunResult:
        error: EtlError | None = None
        try:
            self._open()
            self._pump()
        except EtlError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - the last resort: a bug still ends the run with a result
            # one line for the user, the traceback at debug level
            log.event(logger, "run.bug", level=logging.DEBUG, traceback=traceback.format_exc())
            error = EtlError(f"unexpected error: {type(exc).__name__}: {exc} (run with -v for the traceback)")
        finally:
            self.halt.set()
            error = self._close(error)
        return self._finish(error)

    def _open(self) -> None:
        """The client, the applier (which opens the target, or starts the writer), the run row, the reader."""
        pipeline, source = self.pipeline, self._filled_source()
        self.client = HttpClient(
            timeout=source.timeout, retry=source.retry, rate_limit=source.rate_limit, auth=source.auth,
            headers=source.headers, max_response_bytes=source.max_response_bytes,
            transport=self.options.source_transport, sleep=self._wait,
            # credentials go to the source's own origin (not a resumed next URL's), and no
            # request or wait runs past limits.max_seconds
            origin=source.url, deadline=self.started + source.limits.max_seconds,
        )
        self.applier = self._applier()
        if self.checkpoint is not None:
            self.pages = self.checkpoint.pages
            log.event(logger, "run.resumed", level=logging.WARNING, from_page=self.checkpoint.pages + 1)
        self.store.start_run(pipeline.name, self.record)
        params = self.cursor.params(source.params) if self.cursor else dict(source.params)
        self.reader = SourceReader(
            source=source, send=self.client.send, params=params, start=self._start(),
            restart=self._token_expired if isinstance(self.cursor, SyncToken) else None,
            exact_numbers="decimal" in pipeline.mapping.column_types.values(),
        )

    def _filled_source(self) -> Source:
        """The source with its request templates filled: once per run, since the watermark
        does not move within one; a template that cannot be written fails before any request."""
        watermark = self.cursor.sent_value() if isinstance(self.cursor, IncrementalCursor) else None
        self.source = templates.fill(self.pipeline.source, {"watermark": watermark}, file=self.pipeline.file)
        return self.source

    def _start(self) -> PageRequest | None:
        """The first request when it is not the source's: a checkpoint's, or a saved delta URL."""
        if self.checkpoint is not None:
            return self.checkpoint.next
        url = self.cursor.first_url if isinstance(self.cursor, SyncToken) else None
        return None if url is None else PageRequest(url)  # the URL exactly as the API gave it

    def _token_expired(self, error: FetchError) -> dict[str, Any] | None:
        """The first request failed: when `reset_on` (and `reset_when`) say the sync token
        expired, drop it and read everything from the start, in this run."""
        cursor = self.cursor
        if not isinstance(cursor, SyncToken) or not cursor.expired(error):
            return None
        cursor.reset()
        log.event(logger, "incremental.token_reset", level=logging.WARNING, status=error.status, error=str(error))
        return cursor.params(self.source.params)

    def _pump(self) -> None:
        """Pages from the reader (fetched ahead) through the planner to the applier."""
        assert self.reader is not None and self.applier is not None
        int_range = INT64 if isinstance(self.pipeline.target, SqliteTargetConfig) else None
        planner = Planner(self.pipeline.mapping, cursor=self.cursor, pages_before=self.pages, int_range=int_range)
        pages = prefetch(self.reader.pages(), depth=PREFETCH_PAGES, stop=self.stop)
        with closing(pages):
            try:
                for page in pages:
                    self.applier.submit(planner.plan(page))
                    if self.stop.is_set():
                        break
            except BaseException:
                self.halt.set()  # before the pages are closed: their waits end now
                raise
        applier, self.applier = self.applier, None
        applier.close()
        if self.stop.is_set():
            raise Interrupted(self.stop.reason)

    def _close(self, error: EtlError | None) -> EtlError | None:
        """Close what is open; a failure here never hides the run's first error."""
        for close in (self._close_applier, self._close_client):
            try:
                close()
            except EtlError as exc:
                error = error or exc
            except OSError as exc:
                error = error or EtlError(f"closing the run: {exc}")
        return error

    def _close_applier(self) -> None:
        applier, self.applier = self.applier, None
        if applier is not None:
            applier.close()

    def _close_client(self) -> None:
        if self.client is not None:
            self.client.close()

    # --- parts --------------------------------------------------------------------

    def _applier(self) -> Applier:
        """The writer process for a database target, else (or when it cannot start) inline."""
        pipeline, committed = self.pipeline, self.checkpoint.dumps() if self.checkpoint else None
        if self.options.dry_run:
            target = dry_run_target(self.options.stdout)
            return InlineApplier(
                pipeline.name, self.store, target, pipeline.mapping.names, committed=committed,
                on_committed=self._committed, types=pipeline.mapping.column_types,
            )
        if _wants_writer(pipeline):
            setup = Setup(
                pipeline.name, pipeline.target, pipeline.state, pipeline.mapping.names,  # type: ignore[arg-type]
                committed, os.getpid(), self.record.run_id, pipeline.secrets, log.settings(),
                log.credential_params(), types=pipeline.mapping.column_types,
            )
            try:
                return ProcessApplier(
                    setup, depth=WRITE_BEHIND_PAGES, on_committed=self._committed,
                    fallback=lambda: self._inline(committed),
                )
            except WriterUnavailable as exc:
                log.event(logger, "writer.inline", level=logging.WARNING, reason=str(exc))
        return self._inline(committed)

    def _inline(self, committed: str | None) -> InlineApplier:
        pipeline = self.pipeline
        self.target = open_target(
            pipeline.target, fields=pipeline.mapping.names, pipeline=pipeline.name,
            transport=self.options.transport, sleep=self._wait, types=pipeline.mapping.column_types,
        )
        return InlineApplier(
            pipeline.name, self.store, self.target, pipeline.mapping.names, committed=committed,
            on_committed=self._committed, types=pipeline.mapping.column_types,
        )

    def _checkpoint(self) -> Checkpoint | None:
        if self.options.restart or self.options.full_refresh:
            return None
        name = self.pipeline.name
        text = self.store.checkpoint(name)
        if text is None:
            return None
        try:
            checkpoint = Checkpoint.loads(text)
            paginator_for(self.pipeline.source.pagination).describe(checkpoint.next)  # a page style reads its param
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(
                f"pipeline {name!r}: the saved checkpoint cannot be used ({type(exc).__name__}: {exc}); "
                f"run with --restart to read from the start, or `etl state reset {name}`"
            ) from exc
        return checkpoint

    def _cursor(self) -> Cursor | None:
        spec = self.pipeline.source.incremental
        if spec is None:
            return None
        saved = None if self.options.full_refresh else self.store.watermark(self.pipeline.name)
        resumed = self.checkpoint.watermark if self.checkpoint is not None else None
        return cursor_for(spec, saved=saved, resumed_from=resumed)

    def _committed(self, result: PageResult) -> None:
        """A page (or a batch) is committed: count it, hold the watermark back for the
        records the target refused, tell the progress line."""
        self.pages = result.last_page
        self.counts.add(result.counts)
        if self.cursor is not None:
            for value in result.failed_cursors:
                self.cursor.hold_back(value)
        log.event(
            logger, "page.committed", level=logging.DEBUG, page=result.last_page, records=result.records,
            writes=result.writes, failed=result.counts.failed,
        )
        if self.on_progress is not None:
            self.on_progress(self.counts, self.pages, time.monotonic() - self.started)

    def _wait(self, seconds: float) -> None:
        """Retry and rate-limit waits end at once when a signal arrives or the run fails
        elsewhere, so neither waits out a long Retry-After."""
        sleep, stop, halt = self.options.sleep, self.stop, self.halt
        if sleep is time.sleep:
            deadline = time.monotonic() + seconds
            while not (stop.is_set() or halt.is_set()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                stop.wait(min(left, 0.05))
        else:
            sleep(seconds)
        if stop.is_set():
            raise Interrupted(stop.reason)
        if halt.is_set():
            raise _Halted("the run is ending")

    # --- the end ------------------------------------------------------------------

    def _finish(self, error: EtlError | None) -> RunResult:
        status = _run_status(error, self.counts)
        result = self._result(status, error)
        record = self.record
        record.status, record.finished_at = status, now_iso()
        record.counts = {k: v for k, v in result.as_dict().items() if k not in ("run_id", "pipeline", "status")}
        done = status in ("success", "partial")
        limited = self.reader is not None and self.reader.stopped_by is not None
        saved = None
        if done and self.cursor is not None:
            saved = self.cursor.to_save(read_to_end=not limited, resumed=self.checkpoint is not None)
        # a limit stop keeps its checkpoint: the next run goes on from it (with order: asc,
        # the watermark moved instead, and the next run starts fresh from it)
        keep_checkpoint = limited and not (self.cursor is not None and self.cursor.ascending)
        self.store.finish_run(
            self.pipeline.name, record, watermark=saved, clear_checkpoint=done and not keep_checkpoint
        )
        fields = {k: v for k, v in result.as_dict().items() if k not in ("run_id", "pipeline")}
        if fields["error"] is None:
            del fields["error"]
        log.event(logger, "run.summary", level=logging.INFO if done else logging.ERROR, **fields)
        if error is not None:
            error.result = result
            raise error
        return result

    def _result(self, status: RunStatus, error: EtlError | None) -> RunResult:
        client, target = self.client, self.target
        return RunResult(
            run_id=self.record.run_id, pipeline=self.pipeline.name, status=status, counts=self.counts,
            pages=self.pages,
            requests=(client.requests if client else 0) + int(getattr(target, "requests", 0)),
            retries=(client.retries if client else 0) + int(getattr(target, "retries", 0)),
            elapsed_ms=int((time.monotonic() - self.started) * 1000),
            stopped_by=self.reader.stopped_by if self.reader else None,
            dry_run=self.options.dry_run, resumed=self.checkpoint is not None,
            error=log.redact(str(error)) if error else None,
            exit_code=_exit_code(error, self.counts),
        )


def _wants_writer(pipeline: Pipeline) -> bool:
    """A database target is written by the writer process, unless ETL_WRITER=inline; the
    http target (an update needs the id its create returned) and jsonl are written inline."""
    if not isinstance(pipeline.target, (SqliteTargetConfig, PostgresTargetConfig)):
        return False
    return os.environ.get("ETL_WRITER", "process") != "inline"


def _unstarted(error: EtlError, run_id: str, pipeline: str, dry_run: bool, started: float) -> EtlError:
    """An error before the run began (opening the store, the lock) with its result attached."""
    error.result = RunResult(
        run_id=run_id, pipeline=pipeline, status="failed", counts=Counts(), dry_run=dry_run,
        elapsed_ms=int((time.monotonic() - started) * 1000), error=log.redact(str(error)),
        exit_code=error.exit_code,
    )
    return error


def _run_status(error: EtlError | None, counts: Counts) -> RunStatus:
    if isinstance(error, Interrupted):
        return "interrupted"
    if error is not None:
        return "failed"
    return "partial" if counts.failed else "success"


def _exit_code(error: EtlError | None, counts: Counts) -> int:
    if error is not None:
        return error.exit_code
    return 3 if counts.failed else 0
