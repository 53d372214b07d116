"""Deletes of missing keys: after a complete read, the keys the state store holds and the
run did not read are deleted, unless the guard refuses.

Marker deletes (`mapping.deleted`) need nothing here: they travel with their page
(`PagePlan.deleted`) and `runner.load.apply` decides and commits them like any write.
This module owns the other kind, `target.deletes.missing`:

* While pages are read, each page's keys (mapped, deleted, filtered, failed with a key)
  go to the store with the page's commit, as the key's last-seen run id (`PagePlan.seen`,
  `Sweep.run_id`). Nothing is kept in memory, and a pipeline without `deletes.missing`
  writes no mark. A dry run cannot write marks: it keeps the keys in a set instead.
* After the last page is committed, `delete_missing` counts the unmarked keys, refuses
  when they are more than `max_fraction` of the keys the store holds (an API that answers
  an empty list by mistake must not empty the target), and otherwise hands them to the
  applier in plans of `chunk` keys, ordered by key: each plan is a target commit and then
  a state commit that removes the deleted keys' rows. A run killed in this phase leaves
  the deleted keys deleted and the rest held; the next complete run deletes the rest,
  none twice.

Only a complete read may delete: `incomplete` says why a run is not one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from runner import log
from runner.errors import EtlError
from runner.load.apply import PagePlan
from runner.model import Deletes, HttpTargetConfig, TargetConfig
from runner.result import Counts
from runner.state.base import StateStore

logger = logging.getLogger(__name__)

# keys per plan of the delete phase: a database target deletes them in one statement; the
# http target commits each answered DELETE on its own, so a kill re-sends none of them
DATABASE_CHUNK = 500
HTTP_CHUNK = 1
LOOKUP = 1000  # keys read from the store per query


class DeletesRefused(EtlError):
    """The guard refused: deleting the missing keys would remove too much of the target."""


@dataclass(slots=True)
class Sweep:
    """One run's record of what it read, for `deletes.missing`."""

    run_id: str  # the mark the store gives each key read
    remember: bool = False  # a dry run: the store is read-only, so the keys are kept here
    seen: set[str] = field(default_factory=set)
    keyless: int = 0  # records that failed without a key: whatever they were is unknown

    def read(self, keys: Iterable[str], *, keyless: int) -> None:
        """A page's keys were read."""
        self.keyless += keyless
        if self.remember:
            self.seen.update(keys)


def sweep_for(target: TargetConfig, run_id: str, *, dry_run: bool) -> Sweep | None:
    """The sweep of a run whose target deletes missing keys, else None (no cost at all)."""
    return Sweep(run_id, remember=dry_run) if target.deletes.missing else None


def deleted_at(started_at: str) -> str:
    """The run's start as a soft delete writes it: ISO-8601 UTC with a Z."""
    return started_at.removesuffix("+00:00") + "Z" if started_at.endswith("+00:00") else started_at


def incomplete(
    *, stopped_by: str | None, incremental: bool, full_refresh: bool, resumed: bool, keyless: int
) -> str | None:
    """Why this run may not delete missing keys, or None when it read the source completely.
    (A run with a failed page never gets here: it failed.)"""
    if stopped_by is not None:
        return f"a limit stopped the read ({stopped_by})"
    if incremental and not full_refresh:
        return "the source is incremental: only --full-refresh reads every record"
    if resumed:
        return "the run resumed from a checkpoint and did not read the pages before it"
    if keyless:
        return f"{keyless} records failed without a key, so what they were is unknown"
    return None


def delete_missing(
    store: StateStore, pipeline: str, sweep: Sweep, deletes: Deletes, target: TargetConfig, *,
    submit: Callable[[PagePlan], None], last_page: int, deleted_at: str, dry_run: bool,
    stopped: Callable[[], bool] = lambda: False, parent: str | None = None,
) -> int:
    """Hand the keys this complete run did not read to `submit`, in plans; return how many.
    DeletesRefused (nothing deleted) when they are more than `max_fraction` of the store's keys.
    When `stopped()` (a signal), no further plan is handed over: the next run deletes the rest.
    With `parent` (a child resource: its parent's state key), the missing keys are judged per
    parent: `StateStore.count_orphans`."""
    if parent is not None:
        total, missing = store.count_orphans(pipeline, parent, sweep.run_id)
        keys: Iterator[str] = _orphans(store, pipeline, parent, sweep)
    else:
        total, missing = _counts(store, pipeline, sweep, dry_run)
        keys = _missing(store, pipeline, sweep, dry_run)
    if missing == 0:
        return 0
    if missing > deletes.max_fraction * total:
        raise _refusal(pipeline, missing, total, deletes.max_fraction, dry_run)
    log.event(logger, "deletes.missing", keys=missing, held=total, mode=deletes.mode)
    size = HTTP_CHUNK if isinstance(target, HttpTargetConfig) else DATABASE_CHUNK
    chunk: list[str] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) == size:
            if stopped():
                return missing
            submit(_plan(chunk, last_page, deleted_at))
            chunk = []
    if chunk and not stopped():
        submit(_plan(chunk, last_page, deleted_at))
    return missing


def _counts(store: StateStore, pipeline: str, sweep: Sweep, dry_run: bool) -> tuple[int, int]:
    """(keys the store holds, keys of them this run did not read)."""
    total, unseen = store.count_keys(pipeline, sweep.run_id)
    if dry_run:  # no marks were written: the run's keys are in the sweep
        unseen = sum(1 for _ in _missing(store, pipeline, sweep, dry_run))
    return total, unseen


def _missing(store: StateStore, pipeline: str, sweep: Sweep, dry_run: bool) -> Iterator[str]:
    """The keys this run did not read, in key order, a few at a time (never all in memory)."""
    after = ""
    while batch := store.unseen_keys(pipeline, sweep.run_id, after=after, limit=LOOKUP):
        after = batch[-1]
        yield from (key for key in batch if key not in sweep.seen) if dry_run else batch


def _orphans(store: StateStore, pipeline: str, parent: str, sweep: Sweep) -> Iterator[str]:
    """A child resource's missing keys (`StateStore.orphan_keys`), a few at a time."""
    after = ""
    while batch := store.orphan_keys(pipeline, parent, sweep.run_id, after=after, limit=LOOKUP):
        after = batch[-1]
        yield from batch


def _plan(keys: list[str], last_page: int, deleted_at: str) -> PagePlan:
    """A plan that only deletes: no records, no checkpoint (the read is over), the last page's number."""
    return PagePlan(last_page, 0, [], [], None, Counts(), deleted=keys, deleted_at=deleted_at)


def _refusal(pipeline: str, missing: int, total: int, fraction: float, dry_run: bool) -> DeletesRefused:
    share = f"{missing / total:.0%}" if total else "all"
    would = "would refuse" if dry_run else "refused"
    return DeletesRefused(
        f"pipeline {pipeline!r}: deletes.missing {would} to delete {missing} of the {total} keys the state "
        f"holds ({share}, more than max_fraction {fraction:g}); nothing was deleted. If the source really "
        "lost them, raise target.deletes.max_fraction for one run"
    )
