"""Pages into the target and the state store: plan a page, then apply it, in order.

`plan_page` maps a page's records (the engine's side: it needs the raw
records and the compiled mapping). `apply_plans` diffs the mapped records
against the state store (one lookup per page), writes the changes to the
target in one commit, and then commits hashes, failures and the checkpoint
to the state store in one transaction, so state moves only after the data is
committed. Because diff and commit happen in one place, in page order, a key
in two consecutive pages is always diffed against the commit before it.

`Committer` applies each plan inline, or hands it to a writer process
(`runner.load.process`) that applies plans in order on the second CPU core while
this process fetches and maps the next pages.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from jmespath.exceptions import JMESPathError

from runner import log
from runner.load.apply import Counts, PagePlan, PageResult, add_counts, apply_plans
from runner.load.contenthash import RecordHasher
from runner.errors import EtlError
from runner.load.watermark import Watermark
from runner.transform.mapping import Failed, Mapper
from runner.model import Pipeline
from runner.extract.pagination import PageRequest
from runner.extract.reader import Page
from runner.state import FailedRecord, StateStore
from runner.targets import Target
from runner.load.process import WriterUnavailable

logger = logging.getLogger("runner.engine")


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
    hasher: RecordHasher = field(init=False)

    def __post_init__(self) -> None:
        self.mapper = Mapper(self.pipeline.mapping)
        self.hasher = RecordHasher(self.pipeline.mapping.names)


# --- planning (the engine's thread) -----------------------------------------------


def plan_page(run: RunState, page: Page) -> PagePlan:
    """Map a page's records; a key seen twice in one page keeps its last record."""
    counts, failed = Counts(), []
    mapped: dict[str, dict[str, Any]] = {}  # external_id -> record
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
            mapped[outcome.external_id] = outcome.record
    run.planned += 1
    return PagePlan(run.planned, len(page.records), list(mapped.items()), failed, _checkpoint(run, page), counts)


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


# --- the committer -----------------------------------------------------------------------


class Channel(Protocol):
    """Where plans go when they are not applied inline: the writer process (`runner.load.process`)."""

    @property
    def ready(self) -> bool: ...  # False until the writer said so: its plans are kept until then


    def send(self, plan: PagePlan) -> None: ...
    def receive(self) -> PageResult | int: ...  # a result, or how many plans were dropped
    def close(self) -> None: ...


class Committer:
    """Applies plans in order: inline, or through a channel with at most `depth` in flight
    (the writer applies the plans that wait for it as one batch).

    `on_commit` runs (on the engine's thread) after each page is committed.
    """

    def __init__(
        self, run: RunState, *, channel: Channel | None = None, depth: int = 2,
        on_commit: Callable[[], None],
    ) -> None:
        self._run, self._channel, self._depth, self._on_commit = run, channel, depth, on_commit
        self._in_flight = 0
        self._unconfirmed: list[PagePlan] = []  # sent before the writer said it is ready

    def submit(self, page: Page) -> None:
        """Plan the page here; apply it here, or hand it to the writer."""
        plan = plan_page(self._run, page)
        while self._channel is not None and self._in_flight >= self._depth:
            self._receive()
        if self._channel is None:  # inline, or the writer was unavailable
            self._apply_here(plan)
            return
        self._in_flight += 1
        if not self._channel.ready:
            self._unconfirmed.append(plan)
        try:
            self._channel.send(plan)
        except WriterUnavailable as exc:
            self._fall_back(exc)

    def close(self) -> None:
        """Wait until every plan handed over is committed (or dropped); raise the writer's error."""
        channel = self._channel
        if channel is None:
            return
        error: EtlError | None = None
        try:
            while self._in_flight:
                try:
                    self._receive()
                except EtlError as exc:
                    error = error or exc
        finally:
            channel.close()
        if error is not None:
            raise error

    def _receive(self) -> None:
        """One answer from the writer: pages committed (one or a batch), or plans dropped."""
        assert self._channel is not None
        try:
            result = self._channel.receive()
        except WriterUnavailable as exc:
            self._fall_back(exc)
            return
        except EtlError as exc:
            self._in_flight -= getattr(exc, "plans", 1)
            raise
        if self._channel.ready:
            self._unconfirmed.clear()
        if isinstance(result, int):
            self._in_flight -= result
        else:
            self._in_flight -= result.pages
            self._committed(result)

    def _fall_back(self, why: WriterUnavailable) -> None:
        """The writer ended before it was ready, so it applied nothing: apply here what it was sent."""
        log.event(logger, "writer.inline", level=logging.WARNING, reason=str(why))
        self._channel, self._in_flight = None, 0
        plans, self._unconfirmed = self._unconfirmed, []
        for plan in plans:
            self._apply_here(plan)

    def _apply_here(self, plan: PagePlan) -> None:
        run = self._run
        self._committed(apply_plans(run.pipeline.name, run.store, run.target, run.hasher, [plan], committed=run.checkpoint))

    def _committed(self, result: PageResult) -> None:
        run = self._run
        run.pages, run.checkpoint = result.number, result.checkpoint
        add_counts(run.counts, result.counts)
        log.event(
            logger, "page.committed", level=logging.DEBUG, page=result.number, records=result.records,
            writes=result.writes, failed=result.counts.failed,
        )
        self._on_commit()
