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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import httpx

from runner import log
from runner.config import load_pipeline, templates
from runner.db import require_postgres_driver
from runner.errors import EtlError, FetchError, Interrupted, StateError, UsageError
from runner.extract.pagination import PageRequest, paginator_for
from runner.extract.prefetch import prefetch
from runner.extract.children import ChildBatch, ChildReader, with_parent
from runner.extract.reader import Page, SourceReader
from runner.http.client import HttpClient
from runner.load.applier import Applier, InlineApplier, ProcessApplier, WriterUnavailable
from runner.load.apply import PageResult
from runner.load.deletes import Sweep, deleted_at, delete_missing, incomplete, sweep_for
from runner.load.plan import Checkpoint, Planner
from runner.load.process import Setup
from runner.load.watermark import Cursor, IncrementalCursor, SyncToken, cursor_for
from runner.model import Expr, Pipeline, PostgresTargetConfig, Resource, Source, SqliteTargetConfig
from runner.result import Counts, RunResult, RunStatus
from runner.state import RunRecord, StateStore, open_store
from runner.state.base import FailedRecord, now_iso
from runner.state.pending import DryRunPending
from runner.config.templates import TemplateValueError
from runner.transform.expressions import json_kind
from runner.targets import Target, dry_run_target, open_target
from runner.transform.mapping import Mapper
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
    resources: Sequence[str] = (),
) -> RunResult:
    """Run one pipeline; return its RunResult, or raise EtlError (with `.result`) when it fails.

    `transport` and `sleep` are seams for tests (no real network, no real waiting).
    `stop` is set by a signal handler to end the run after the page in hand.
    `source_transport` carries the source's requests only, not the http target's (recording
    and replaying them: `runner.authoring`); `store`, when given, is used instead of the
    configured state store, and closed at the end like it. `resources` (the resources form)
    runs only those resources, and the parents they need.
    """
    if not isinstance(pipeline, Pipeline):
        pipeline = load_pipeline(pipeline, env=env, env_file=env_file)
    if resources and not pipeline.resources:
        raise UsageError("--resource names a resource, and this file has none: it is in the simple form "
                         "(`mapping`), not `resources`")
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
                if pipeline.resources:
                    return _Resources(
                        pipeline, store, run_id, options, stop or StopFlag(), on_progress, started, resources
                    ).execute()
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
        on_progress: Progress | None, started: float, *, part: _Part | None = None,
    ) -> None:
        self.pipeline, self.store, self.options, self.stop = pipeline, store, options, stop
        self.on_progress, self.started = on_progress, started
        self.part = part  # the resources form: this run is one resource of the file's run
        self.record = RunRecord(run_id=run_id if part is None else f"{run_id}/{part.name}", started_at=now_iso())
        self.halt = threading.Event()  # set when any part fails: every wait ends
        self.counts = Counts()
        self.pages = 0  # pages committed (numbered on from a checkpoint)
        self.child_pages = 0  # a child resource: its pages read (several go in one plan)
        self.checkpoint = self._checkpoint()
        self.cursor = self._cursor()
        self.sweep = sweep_for(pipeline.target, run_id, dry_run=options.dry_run)  # deletes.missing only
        self.source = pipeline.source  # with its templates filled, once `_open` ran
        # a decimal field is mapped: every reader decodes numbers without losing digits
        self.exact_numbers = "decimal" in pipeline.mapping.column_types.values()
        self.client: HttpClient | None = None
        self.reader: SourceReader | None = None
        self.children: ChildReader | None = None  # a child resource's reader
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
        if self.part is not None and self.part.child is not None:
            self._open_child(self.part, self.part.child)
            return
        pipeline, source = self.pipeline, self._filled_source()
        self.client = self.part.client if self.part is not None else _source_client(
            source, self.options, sleep=self._wait, started=self.started, headers=source.headers
        )
        self.applier = self._applier()
        if self.checkpoint is not None:
            self.pages = self.checkpoint.pages
            log.event(logger, "run.resumed", level=logging.WARNING, from_page=self.checkpoint.pages + 1)
        self.store.start_run(pipeline.name, self.record)
        params = self.cursor.params(source.params) if self.cursor else dict(source.params)
        self.reader = SourceReader(
            source=source, send=self._sender(source), params=params, start=self._start(),
            restart=self._token_expired if isinstance(self.cursor, SyncToken) else None,
            exact_numbers=self.exact_numbers,
        )

    def _sender(self, source: Source) -> Callable[..., httpx.Response]:
        """The client's `send`; with a shared client (the resources form), one that adds
        the resource's own headers to each request."""
        assert self.client is not None
        send = self.client.send
        if self.part is None or not source.headers:
            return send
        headers = dict(source.headers)

        def with_headers(method: str, url: str, **kwargs: Any) -> httpx.Response:
            kwargs["headers"] = {**headers, **(kwargs.get("headers") or {})}
            return send(method, url, **kwargs)

        return with_headers

    def _open_child(self, part: _Part, child: _Child) -> None:
        """A child resource: its pages come from the work its parent recorded, per parent."""
        self.client = part.client
        self.applier = self._applier()
        self.store.start_run(self.pipeline.name, self.record)
        self.children = ChildReader(
            work=lambda after, limit: self.store.pending_work(self.pipeline.name, after=after, limit=limit),
            fetch=self._child_pages, concurrency=self.pipeline.source.concurrency, halt=self.halt,
        )

    def _child_pages(self, parent: Any) -> Iterator[Page]:
        """One parent's child pages: the list `from_parent` names, or the child's requests
        with `_parent` in their templates; each record gets `_parent`."""
        assert self.part is not None and self.part.child is not None
        from_parent = self.part.child.from_parent
        if from_parent is not None:
            found = from_parent.search(parent)
            if found is not None and not isinstance(found, list):
                raise TemplateValueError(
                    f"from_parent {from_parent.text!r} gave {json_kind(found)}, not a list",
                    key="from_parent", template=from_parent.text,
                )
            yield Page(1, PageRequest(""), with_parent(found or [], parent), None)
            return
        source = templates.fill(self.pipeline.source, {"_parent": parent, "watermark": None}, file=self.pipeline.file)
        # `concurrency` is the number of parents at once: each parent's pages one after another
        source = replace(source, concurrency=1)
        reader = SourceReader(
            source=source, send=self._sender(source), params=dict(source.params), exact_numbers=self.exact_numbers
        )
        for page in reader.pages():
            yield replace(page, records=with_parent(page.records, parent))

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
        if self.children is not None:
            self._pump_children(self.children)
            return
        assert self.reader is not None and self.applier is not None
        applier, planner = self.applier, self._planner(self.cursor, self.sweep)
        pages = prefetch(self.reader.pages(), depth=PREFETCH_PAGES, stop=self.stop)
        with closing(pages):
            try:
                for page in pages:
                    applier.submit(planner.plan(page))
                    if self.stop.is_set():
                        break
            except BaseException:
                self.halt.set()  # before the pages are closed: their waits end now
                raise
        if not self.stop.is_set():
            self._delete_missing(applier)
        self._drain(applier)

    def _planner(self, cursor: Cursor | None, sweep: Sweep | None) -> Planner:
        """The planner of this run's pages, numbered on from the checkpoint's."""
        int_range = INT64 if isinstance(self.pipeline.target, SqliteTargetConfig) else None
        planner = Planner(
            self.pipeline.mapping, cursor=cursor, pages_before=self.pages, int_range=int_range,
            deleted_at=deleted_at(self.record.started_at), sweep=sweep,
        )
        planner.children = self.part.children if self.part is not None else ()
        return planner

    def _drain(self, applier: Applier) -> None:
        """Every page handed over is committed; then a signal that stopped the pages ends the run."""
        self.applier = None
        applier.close()
        if self.stop.is_set():
            raise Interrupted(self.stop.reason)

    def _pump_children(self, children: ChildReader) -> None:
        """A child resource's pages, parent after parent, through the planner to the applier.

        Several parents' pages go in one plan (up to CHILD_PLAN_RECORDS records or
        CHILD_PLAN_PARENTS parents): most parents have one small page, and a state commit
        per parent would cost more than its requests. The plan that holds a parent's last
        page also removes its recorded work, in the same state transaction; a parent whose
        requests failed gets one failed record, `parent:<key>`."""
        assert self.applier is not None and self.part is not None
        # deletes.missing: the keys read are marked, with the parent each was read under
        sweep = None if self.options.dry_run else self.sweep
        applier, planner = self.applier, self._planner(None, sweep)
        keyer = Mapper(self.pipeline.mapping).key if sweep is not None else None
        held = _ChildPlan(keyer)

        def submit() -> None:
            page = Page(0, PageRequest(""), held.records, None, special_numbers=held.special)
            plan = planner.plan(page)
            plan.checkpoint = None  # the recorded work is a child's checkpoint
            plan.done, plan.failed = held.done, [*plan.failed, *held.failed]
            plan.parent_of, plan.swept = held.parent_of, held.swept
            applier.submit(plan)

        batches = children.batches()
        with closing(batches):
            try:
                for batch in batches:
                    held.add(batch)
                    self.child_pages += batch.page is not None
                    if held.full():
                        submit()
                        held = _ChildPlan(keyer)
                    if self.stop.is_set():
                        break
                if held.records or held.done:
                    submit()
                if not self.stop.is_set():
                    self._delete_missing(applier)
            except BaseException:
                self.halt.set()
                raise
        self._drain(applier)

    def _delete_missing(self, applier: Applier) -> None:
        """deletes.missing: once every page is committed, a complete read deletes the keys it
        did not read (`runner.load.deletes`: the guard, the plans of deletes). A child resource
        is judged per parent: the keys last read under a parent whose children this run read
        completely and not read now, and the keys of a parent the parent resource deleted."""
        sweep = self.sweep
        if sweep is None:
            return
        child = self.part.child if self.part is not None else None
        if child is not None and self.options.dry_run:
            reason: str | None = "a dry run of a child resource writes no marks to judge by"
        else:  # a child reads each parent's pages to the end: only its keyless failures count
            reason = incomplete(
                stopped_by=self.reader.stopped_by if self.reader is not None else None,
                incremental=self.pipeline.source.incremental is not None, full_refresh=self.options.full_refresh,
                resumed=self.checkpoint is not None, keyless=sweep.keyless,
            )
        if reason is not None:
            log.event(logger, "deletes.skipped", reason=reason)
            return
        applier.flush()  # the marks of every page are committed: the unmarked keys are missing
        parent = None if child is None else f"{self.pipeline.name.rpartition('/')[0]}/{child.parent}"
        delete_missing(
            self.store, self.pipeline.name, sweep, self.pipeline.target.deletes, self.pipeline.target,
            submit=applier.submit, last_page=self.pages, deleted_at=deleted_at(self.record.started_at),
            dry_run=self.options.dry_run, stopped=self.stop.is_set, parent=parent,
        )

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
        if self.client is not None and self.part is None:  # a shared client is the file's to close
            self.client.close()

    # --- parts --------------------------------------------------------------------

    def _applier(self) -> Applier:
        """The writer process for a database target, else (or when it cannot start) inline."""
        pipeline, committed = self.pipeline, self.checkpoint.dumps() if self.checkpoint else None
        if self.options.dry_run:
            target = dry_run_target(self.options.stdout, resource=self.part.name if self.part else None)
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
        _log_summary(result, done=done, **({"resource": self.part.name} if self.part is not None else {}))
        if error is not None:
            error.result = result
            raise error
        return result

    def _result(self, status: RunStatus, error: EtlError | None) -> RunResult:
        client, target, part = self.client, self.target, self.part
        # a resource's share of the shared client's requests, and its own time
        requests_before, retries_before, started = (0, 0, self.started) if part is None else part.before
        return RunResult(
            run_id=self.record.run_id.partition("/")[0], pipeline=self.pipeline.name.partition("/")[0],
            status=status, counts=self.counts, pages=self.child_pages if self.children is not None else self.pages,
            requests=(client.requests - requests_before if client else 0) + int(getattr(target, "requests", 0)),
            retries=(client.retries - retries_before if client else 0) + int(getattr(target, "retries", 0)),
            elapsed_ms=int((time.monotonic() - started) * 1000),
            stopped_by=self.reader.stopped_by if self.reader else None,
            dry_run=self.options.dry_run, resumed=self.checkpoint is not None,
            error=log.redact(str(error)) if error else None,
            exit_code=_exit_code(error, self.counts),
        )


CHILD_PLAN_RECORDS = 500  # child records in one plan (one target commit, one state transaction)
CHILD_PLAN_PARENTS = 100  # parents whose children one plan completes


class _ChildPlan:
    """Child pages of several parents gathered into one plan; with `keyer` (deletes.missing),
    the parent each child key was read under, and the parents read completely."""

    def __init__(self, keyer: Callable[[Any], str | None] | None = None) -> None:
        self.records: list[Any] = []
        self.done: list[str] = []  # parents whose last page is here
        self.failed: list[FailedRecord] = []
        self.special = False
        self.keyer = keyer
        self.parent_of: dict[str, str] = {}
        self.swept: list[str] = []

    def add(self, batch: ChildBatch) -> None:
        if batch.page is not None:
            self.records.extend(batch.page.records)
            self.special = self.special or batch.page.special_numbers
            if self.keyer is not None:
                for record in batch.page.records:
                    key = self.keyer(record)
                    if key is not None:
                        self.parent_of[key] = batch.key
        if batch.last:
            self.done.append(batch.key)
            if batch.error is None and self.keyer is not None:
                self.swept.append(batch.key)
        if batch.error is not None:
            failure = f"parent {batch.key}: {batch.error}"
            self.failed.append(FailedRecord(f"parent:{batch.key}", batch.parent, log.redact(failure)))
            log.event(logger, "child.failed", level=logging.WARNING, parent=batch.key, error=log.redact(failure))

    def full(self) -> bool:
        return len(self.records) >= CHILD_PLAN_RECORDS or len(self.done) >= CHILD_PLAN_PARENTS


@dataclass(frozen=True)
class _Child:
    """How a child resource gets its records: its parent, and `from_parent` (no request) or its source."""

    parent: str
    from_parent: Expr | None


@dataclass(frozen=True)
class _Part:
    """One resource's run inside a file's run: the shared client and what the resource is."""

    name: str
    client: HttpClient
    children: tuple[tuple[str, bool], ...]  # (child's state key, changed_only): work its records make
    child: _Child | None
    before: tuple[int, int, float]  # the client's requests and retries, and the time, when it began


class _Resources:
    """A file in the resources form: its resources in file order (a parent before its
    children), each a `_Run` with its own state key (`name/resource`), over one HTTP client:
    one connection pool, one rate limit, one OAuth2 token. The first resource that fails
    ends the run; the counts are per resource, and a last `run.summary` sums them."""

    def __init__(
        self, pipeline: Pipeline, store: StateStore, run_id: str, options: _Options, stop: StopFlag,
        on_progress: Progress | None, started: float, only: Sequence[str],
    ) -> None:
        # a dry run records no child work in the store: it is kept in memory
        store = DryRunPending.wrap(store) if options.dry_run else store
        self.pipeline, self.store, self.run_id, self.options = pipeline, store, run_id, options
        self.stop, self.on_progress, self.started = stop, on_progress, started
        self.selected = _selected(pipeline, only)
        self.current: _Run | None = None

    def execute(self) -> RunResult:
        pipeline = self.pipeline
        # each resource adds its own headers to its requests (`_Run._sender`)
        client = _source_client(pipeline.resources[0].source, self.options, sleep=self._wait, started=self.started)
        results: list[tuple[str, RunResult]] = []
        error: EtlError | None = None
        try:
            for resource in self.selected:
                result, error = self._one(resource, client)
                results.append((resource.name, result))
                if error is not None:
                    break
        finally:
            client.close()
        total = _summed(pipeline.name, self.run_id, results, error, self.options.dry_run, self.started)
        _log_summary(total, done=error is None, resources=len(results))
        if error is not None:
            error.result = total
            raise error
        return total

    def _one(self, resource: Resource, client: HttpClient) -> tuple[RunResult, EtlError | None]:
        pipeline = self.pipeline
        children = tuple(
            (pipeline.state_key(r.name), r.changed_only) for r in self.selected if r.parent == resource.name
        )
        child = None if resource.parent is None else _Child(resource.parent, resource.from_parent)
        part = _Part(resource.name, client, children, child, (client.requests, client.retries, time.monotonic()))
        sub = replace(
            pipeline, name=pipeline.state_key(resource.name), source=resource.source, mapping=resource.mapping,
            target=resource.target, resources=(),
        )
        self.current = _Run(
            sub, self.store, self.run_id, self.options, self.stop, self.on_progress, self.started, part=part
        )
        try:
            return self.current.execute(), None
        except EtlError as exc:
            assert exc.result is not None  # _Run._finish attaches it
            return exc.result, exc

    def _wait(self, seconds: float) -> None:
        """The shared client's waits end with the resource that is running."""
        if self.current is not None:
            self.current._wait(seconds)
        else:
            self.options.sleep(seconds)


def _source_client(
    source: Source, options: _Options, *, sleep: Callable[[float], None], started: float,
    headers: Mapping[str, str] | None = None,
) -> HttpClient:
    """The client of a run's source (of all its resources in the resources form)."""
    return HttpClient(
        timeout=source.timeout, retry=source.retry, rate_limit=source.rate_limit, auth=source.auth,
        headers=headers, max_response_bytes=source.max_response_bytes, transport=options.source_transport,
        sleep=sleep,
        # credentials go to the source's own origin (not a resumed next URL's), and no
        # request or wait runs past limits.max_seconds
        origin=source.url, deadline=started + source.limits.max_seconds,
    )


def _log_summary(result: RunResult, *, done: bool, **extra: Any) -> None:
    """The `run.summary` line: `extra` first (resource=, resources=), then the result's fields."""
    fields = {k: v for k, v in result.as_dict().items() if k not in ("run_id", "pipeline")}
    if fields["error"] is None:
        del fields["error"]
    log.event(logger, "run.summary", level=logging.INFO if done else logging.ERROR, **extra, **fields)


def _selected(pipeline: Pipeline, only: Sequence[str]) -> list[Resource]:
    """The resources to run, in file order: all, or those named and every parent they need."""
    if not only:
        return list(pipeline.resources)
    by_name = {r.name: r for r in pipeline.resources}
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise UsageError(f"unknown resource {', '.join(map(repr, unknown))}; its resources: {', '.join(by_name)}")
    wanted: set[str] = set()
    for name in only:
        at: str | None = name
        while at is not None and at not in wanted:
            wanted.add(at)
            at = by_name[at].parent
    return [r for r in pipeline.resources if r.name in wanted]


def _summed(
    name: str, run_id: str, results: list[tuple[str, RunResult]], error: EtlError | None, dry_run: bool,
    started: float,
) -> RunResult:
    """The file's result: the resources' counts, requests and pages added up."""
    counts = Counts()
    for _, result in results:
        counts.add(result.counts)
    stopped = [r.stopped_by for _, r in results if r.stopped_by]
    return RunResult(
        run_id=run_id, pipeline=name, status=_run_status(error, counts), counts=counts,
        pages=sum(r.pages for _, r in results), requests=sum(r.requests for _, r in results),
        retries=sum(r.retries for _, r in results), elapsed_ms=int((time.monotonic() - started) * 1000),
        stopped_by=stopped[0] if stopped else None, dry_run=dry_run,
        resumed=any(r.resumed for _, r in results), error=log.redact(str(error)) if error else None,
        exit_code=_exit_code(error, counts), resources={n: r for n, r in results},
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
