"""Planning a page: map its records, and say where a killed run resumes.

`Planner.plan` runs on the engine's thread (it needs the raw records and the
compiled mapping): it maps each record, keeps failures with their raw text,
tells the incremental cursor every record's cursor value (and holds it back
for a failed one), and builds the `Checkpoint` that is committed with the
page. The plan then goes to an applier (`runner.load.applier`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runner import log
from runner.extract.pagination import PageRequest
from runner.extract.reader import Page
from runner.load.apply import PagePlan
from runner.load.deletes import Sweep
from runner.load.deletes import deleted_at as soft_stamp
from runner.load.watermark import Cursor, SyncToken
from runner.model import MappingSpec
from runner.result import Counts
from runner.state.base import FailedRecord, now_iso
from runner.transform.mapping import Deleted, Failed, Mapper
from runner.transform.values import unstorable


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
        """The checkpoint a run saved; ValueError when the text is not one."""
        try:
            data = json.loads(text)
            following, pages = data["next"], data["pages"]
            if not (isinstance(following, dict) and isinstance(following.get("url"), str)):
                raise ValueError("'next' is not a request")
            if not isinstance(following.get("params") or {}, dict):
                raise ValueError("'next.params' is not an object")
            if isinstance(pages, bool) or not isinstance(pages, int) or pages < 0:
                raise ValueError("'pages' is not a page count")
            return cls(PageRequest.from_json(following), pages, data.get("watermark"))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or wrong {exc}") from exc


class Planner:
    """Maps pages into plans, numbering them on from `pages_before` (the checkpoint's count)."""

    def __init__(
        self, mapping: MappingSpec, *, cursor: Cursor | None, pages_before: int = 0,
        int_range: tuple[int, int] | None = None, deleted_at: str = "", sweep: Sweep | None = None,
    ) -> None:
        mapper = Mapper(mapping)
        self._map, self._key = mapper.map, mapper.key
        self._deleted_at = deleted_at or soft_stamp(now_iso())  # the run's start: what a soft delete writes
        self._sweep = sweep  # deletes.missing: which keys this run read
        self._cursor = cursor
        self._int_range = int_range  # the integers the target stores (SQLite: 64 bits)
        self.planned = pages_before  # the number of the last page planned
        # resources: the child resources of this one, whose work each written record makes
        self.children: tuple[tuple[str, bool], ...] = ()  # (child's state key, changed_only)

    def plan(self, page: Page) -> PagePlan:
        """Map a page's records; a key seen twice in one page keeps its last record."""
        counts, failed = Counts(), []
        mapped: dict[str, dict[str, Any]] = {}  # external_id -> record
        deleted: dict[str, None] = {}  # keys that mapping.deleted marks
        filtered: list[str] | None = [] if self._sweep is not None else None
        cursors: dict[str, Any] = {}
        cursor, map_record = self._cursor, self._map
        sources: dict[str, Any] | None = {} if self.children else None  # a parent's raw records
        if isinstance(cursor, SyncToken):
            cursor.observe_page(page.token)
        for raw in page.records:
            counts.processed += 1
            value, unreadable = cursor.read(raw) if cursor is not None else (None, None)
            if cursor is not None:
                cursor.observe(value)
            outcome = map_record(raw)
            if outcome is not None and unreadable is not None:  # it fails alone, moving nothing
                outcome = Failed(outcome.external_id, raw, unreadable)
            if outcome is None:
                counts.skipped += 1
                if filtered is not None and (key := self._key(raw)) is not None:
                    filtered.append(key)  # a filtered record was read: not missing
            elif isinstance(outcome, Deleted):
                if outcome.external_id in mapped or outcome.external_id in deleted:
                    counts.skipped += 1  # the same key twice in one page: the last one wins
                mapped.pop(outcome.external_id, None)
                cursors.pop(outcome.external_id, None)
                deleted[outcome.external_id] = None
            elif isinstance(outcome, Failed):
                failed.append(FailedRecord(outcome.external_id, raw, log.redact(outcome.error)))
                if cursor is not None:
                    cursor.hold_back(value)
            else:
                if outcome.external_id in mapped or (deleted and deleted.pop(outcome.external_id, 0) is None):
                    counts.skipped += 1  # the same key twice in one page: the last one wins
                mapped[outcome.external_id] = outcome.record
                if sources is not None:
                    sources[outcome.external_id] = raw
                if value is not None:
                    cursors[outcome.external_id] = value
        for key, error in unstorable(mapped.items(), int_range=self._int_range, deep=page.special_numbers).items():
            record = mapped.pop(key)
            failed.append(FailedRecord(key, record, error))
            if cursor is not None:
                cursor.hold_back(cursors.pop(key, None))
        self.planned += 1
        plan = PagePlan(
            self.planned, len(page.records), list(mapped.items()), failed, self._checkpoint(page), counts, cursors,
            list(deleted), self._deleted_at, *self._seen(mapped, deleted, filtered, failed),
        )
        if sources is not None:
            plan.children = self.children
            plan.parents = {key: json.dumps(sources[key], default=str) for key in mapped}
        return plan

    def _seen(
        self, mapped: dict[str, Any], deleted: dict[str, None], filtered: list[str] | None, failed: list[FailedRecord]
    ) -> tuple[list[str] | None, str | None]:
        """With deletes.missing: every key the page read (mapped, deleted, filtered, failed), and the run id."""
        sweep = self._sweep
        if sweep is None:
            return None, None
        seen = [*mapped, *deleted, *(filtered or ()), *(f.external_id for f in failed if f.external_id is not None)]
        sweep.read(seen, keyless=sum(1 for f in failed if f.external_id is None))
        return seen, sweep.run_id

    def _checkpoint(self, page: Page) -> str | None:
        if page.next is None:
            return None
        seen = self._cursor.seen if self._cursor is not None else None
        return Checkpoint(page.next, self.planned, seen).dumps()
