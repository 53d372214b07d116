"""Pages into the target and the state store: plan a page, then commit it, in order.

`plan_page` maps a page's records and diffs them against the state store (one
lookup per page); `apply_plan` writes the changes to the target in one commit
and then commits hashes, failures and the checkpoint to the state store in one
transaction, so state moves only after the data is committed.

`Committer` applies plans on a writer thread, so that SQLite and PostgreSQL
work (which releases the GIL) overlaps with mapping the next page; the queue
between them holds at most `depth` plans. Keys planned but not yet committed
are remembered, so a key in two consecutive pages is diffed against its newest
plan, not against stale state. The http target applies inline (depth 0): an
update needs the target id that the create before it returns.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from jmespath.exceptions import JMESPathError

from runner import log
from runner.errors import EtlError
from runner.incremental import Watermark
from runner.mapping import Failed, Mapped, Mapper
from runner.model import Pipeline
from runner.pagination import PageRequest
from runner.source import Page
from runner.state import FailedRecord, KeyState, StateStore
from runner.state.base import PageCommit
from runner.targets import Target, Write, WriteResult

logger = logging.getLogger("runner.engine")


@dataclass(slots=True)
class Counts:
    processed: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0


@dataclass(slots=True)
class Checkpoint:
    """Where a killed run resumes: the next page's request, pages so far, the watermark seen."""

    next: PageRequest
    pages: int
    watermark: Any = None

    def dumps(self) -> str:
        return json.dumps({"next": self.next.to_json(), "pages": self.pages, "watermark": self.watermark})

    @classmethod
    def loads(cls, text: str) -> Checkpoint:
        data = json.loads(text)
        return cls(PageRequest.from_json(data["next"]), data["pages"], data.get("watermark"))


@dataclass(slots=True)
class RunState:
    """The mutable bookkeeping of one run; only the engine and the committer touch it."""

    pipeline: Pipeline
    store: StateStore  # reads (and, inline, writes) on the engine's thread
    target: Target
    counts: Counts = field(default_factory=Counts)
    watermark: Watermark | None = None
    first_failed: Watermark | None = None  # the earliest cursor value among failed records
    planned: int = 0  # pages planned (the page number of the last plan)
    pages: int = 0  # pages committed
    checkpoint: str | None = None  # the last one committed
    mapper: Mapper = field(init=False)

    def __post_init__(self) -> None:
        self.mapper = Mapper(self.pipeline.mapping)


@dataclass(slots=True)
class PagePlan:
    number: int
    records: int
    writes: list[Write]
    hashes: dict[str, str]
    failed: list[FailedRecord]
    checkpoint: str | None
    counts: Counts  # processed, skipped and failed mappings; added to the run's once committed


# --- planning (the engine's thread) -----------------------------------------------


def plan_page(run: RunState, page: Page, pending: dict[str, tuple[str, int]]) -> PagePlan:
    """Map a page and diff it against the state store and the plans not yet committed."""
    counts, mapped, failed = Counts(), {}, []
    map_record = run.mapper.map
    for raw in page.records:
        counts.processed += 1
        _observe(run, raw, failed=False)
        outcome = map_record(raw)
        if outcome is None:
            counts.skipped += 1
        elif isinstance(outcome, Failed):
            failed.append(FailedRecord(outcome.external_id, raw, log.redact(outcome.error)))
            _observe(run, raw, failed=True)
        else:
            if outcome.external_id in mapped:
                counts.skipped += 1  # the same key twice in one page: the last one wins
            mapped[outcome.external_id] = outcome
    run.planned += 1
    writes = _diff(run, counts, mapped, pending)
    hashes = {w.external_id: mapped[w.external_id].hash for w in writes}
    return PagePlan(run.planned, len(page.records), writes, hashes, failed, _checkpoint(run, page), counts)


def _diff(
    run: RunState, counts: Counts, mapped: dict[str, Mapped], pending: dict[str, tuple[str, int]]
) -> list[Write]:
    known = run.store.key_states(run.pipeline.name, list(mapped))
    writes = []
    for key, item in mapped.items():
        state = known.get(key)
        if key in pending:
            state = KeyState(pending[key][0], state.target_id if state else None)
        if state is not None and state.hash == item.hash:
            counts.skipped += 1
            continue
        if state is None:
            writes.append(Write("create", key, item.record))
        else:
            writes.append(Write("update", key, item.record, state.target_id))
        pending[key] = (item.hash, run.planned)
    return writes


def _checkpoint(run: RunState, page: Page) -> str | None:
    if page.next is None:
        return None
    mark = run.watermark.value if run.watermark else None
    return Checkpoint(page.next, run.planned, mark).dumps()


def _observe(run: RunState, raw: Any, *, failed: bool) -> None:
    """Track the greatest cursor value, and the least among failed records (the watermark stops there)."""
    incremental = run.pipeline.source.incremental
    if incremental is None:
        return
    try:
        value = incremental.cursor_field.search(raw)
    except JMESPathError:  # a record whose cursor cannot be read does not move it
        return
    if value is None:
        return
    if not failed:
        if run.watermark is not None:
            run.watermark.observe(value)
        return
    if run.first_failed is None:
        run.first_failed = Watermark(lowest=True)
    run.first_failed.observe(value)


# --- applying (the writer's thread, or inline) -----------------------------------------


def apply_plan(run: RunState, store: StateStore, plan: PagePlan) -> None:
    """Write the plan to the target, then commit its state: hashes, failures, checkpoint."""
    result = _write(run, store, plan.writes) if plan.writes else WriteResult()
    failed, hashes, succeeded = list(plan.failed), [], []
    counts = plan.counts
    for write in plan.writes:
        error = result.errors.get(write.external_id)
        if error is not None:
            failed.append(FailedRecord(write.external_id, write.record, log.redact(error)))
            continue
        if write.op == "create":
            counts.created += 1
        else:
            counts.updated += 1
        hashes.append((write.external_id, plan.hashes[write.external_id], result.target_ids.get(write.external_id)))
        succeeded.append(write.external_id)
    counts.failed += len(failed)
    store.commit_page(run.pipeline.name, PageCommit(hashes, failed, succeeded, plan.checkpoint))
    run.pages, run.checkpoint = plan.number, plan.checkpoint
    _add(run.counts, counts)
    log.event(
        logger, "page.committed", level=logging.DEBUG, page=plan.number, records=plan.records,
        writes=len(plan.writes), failed=len(failed),
    )


def _add(total: Counts, page: Counts) -> None:
    total.processed += page.processed
    total.created += page.created
    total.updated += page.updated
    total.skipped += page.skipped
    total.failed += page.failed


def _write(run: RunState, store: StateStore, writes: list[Write]) -> WriteResult:
    """Write one page; when it fails part-way, keep the target ids of what was created."""
    try:
        return run.target.write(writes)
    except EtlError as exc:
        partial: WriteResult | None = getattr(exc, "partial", None)
        if partial is not None and partial.target_ids:
            # no hash: these records are sent again next run, as updates of these ids
            ids = [(key, None, target_id) for key, target_id in partial.target_ids.items()]
            store.commit_page(run.pipeline.name, PageCommit(ids, [], [], run.checkpoint))
        raise


# --- the committer -----------------------------------------------------------------------

_CLOSE = object()


class Committer:
    """Applies plans in order, inline (depth 0) or on one writer thread behind a bounded queue.

    `writer_store` is the state store the writer commits with (its own connection);
    `on_commit` runs after each commit; `stopped` tells the writer to drop plans
    that are not committed yet (a signal: they will be read again on resume).
    """

    def __init__(
        self, run: RunState, *, writer_store: StateStore, depth: int,
        on_commit: Callable[[], None], stopped: Callable[[], bool],
    ) -> None:
        self._run, self._store, self._on_commit, self._stopped = run, writer_store, on_commit, stopped
        self._pending: dict[str, tuple[str, int]] = {}
        self._error: BaseException | None = None
        self._queue: queue.Queue[object] | None = None
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._work, name="etl-writer", daemon=True)
            self._thread.start()

    def submit(self, page: Page) -> None:
        """Plan the page here; commit it here (inline) or hand it to the writer."""
        self._raise_if_failed()
        self._forget_committed()
        plan = plan_page(self._run, page, self._pending)
        if self._queue is None:
            self._apply(plan)
        else:
            self._queue.put(plan)

    def close(self) -> None:
        """Wait until every plan handed over is committed (or dropped on a stop); raise its error."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(_CLOSE)
            self._thread.join()
            self._queue = None
        self._raise_if_failed()

    def _apply(self, plan: PagePlan) -> None:
        apply_plan(self._run, self._store, plan)
        self._on_commit()

    def _work(self) -> None:
        assert self._queue is not None
        while (plan := self._queue.get()) is not _CLOSE:
            if self._error is not None or self._stopped():
                continue  # drain: nothing after a failure or a stop is committed
            try:
                self._apply(plan)  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - re-raised on the engine's thread
                self._error = exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _forget_committed(self) -> None:
        done = self._run.pages
        if self._pending and done:
            self._pending = {k: v for k, v in self._pending.items() if v[1] > done}
