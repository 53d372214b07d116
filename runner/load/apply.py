"""Applying a planned page: diff it against the state store, write the target, commit the state.

This is the part of a run that talks to the target and the state store; the
engine plans pages (`runner.load.plan`) and this module applies them, either
in the engine's process or in the writer process (`runner.load.process`), which
imports only this side: no HTTP client, no config loader.

Per page: one state lookup for all its keys; the creates and updates in one
target commit; then hashes, failures and the checkpoint in one state
transaction, so state moves only after the data is committed. Because the
diff happens right before the commit, in page order, a key in two
consecutive pages is always diffed against the commit before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from runner import log
from runner.load.contenthash import RecordHasher
from runner.errors import EtlError
from runner.state.base import FailedRecord, KeyState, PageCommit, StateStore
from runner.targets.base import Target, Write, WriteResult


@dataclass(slots=True)
class Counts:
    processed: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0


@dataclass(slots=True)
class PagePlan:
    """A page mapped: what `apply_plans` needs, and nothing of the raw page but failures."""

    number: int
    records: int
    mapped: list[tuple[str, dict[str, Any]]]  # (external_id, record); each key once
    failed: list[FailedRecord]
    checkpoint: str | None
    counts: Counts  # processed, skipped (filtered, repeated) and failed mappings


@dataclass(slots=True)
class PageResult:
    """Pages applied (one or a batch): their counts, planned plus written, for the engine to add up."""

    number: int  # the last page's number
    records: int
    writes: int
    checkpoint: str | None  # the last page's
    counts: Counts
    pages: int = 1


def apply_plans(
    pipeline: str, store: StateStore, target: Target, hasher: RecordHasher, plans: Sequence[PagePlan], *,
    committed: str | None,
) -> PageResult:
    """Diff consecutive pages against the store, write their changes in one target commit,
    then commit their state (the last page's checkpoint) in one transaction.

    Each page is diffed as if the pages before it were committed, so the counts are
    those of applying the pages one by one; a key written by two of them is written
    once, with its newest record. `committed` is the checkpoint committed before
    these pages: where pages that fail part-way leave the target ids they made.
    """
    hashed = [{key: hasher(record) for key, record in plan.mapped} for plan in plans]
    known = store.key_states(pipeline, list({key: None for page in hashed for key in page}))
    decided: list[tuple[int, Counts, Write]] = []
    final: dict[str, Write] = {}
    final_hash: dict[str, str] = {}  # the hash of each key's newest record
    batched = len(plans) > 1
    for index, (plan, hashes) in enumerate(zip(plans, hashed)):
        for key, record in plan.mapped:
            state = known.get(key)
            if state is None:
                write = Write("create", key, record)
            elif state.hash == hashes[key]:
                plan.counts.skipped += 1
                continue
            else:
                write = Write("update", key, record, state.target_id)
            decided.append((index, plan.counts, write))
            if batched:  # a later page of the batch sees this one as committed
                earlier = final.get(key)
                if earlier is not None and earlier.op != write.op:
                    write = Write("create", key, record)  # created in this batch: one create, newest record
                known[key] = KeyState(hashes[key], write.target_id)
            final[key], final_hash[key] = write, hashes[key]
    writes = list(final.values())
    result = _write(pipeline, store, target, writes, committed) if writes else WriteResult()
    failed = _failures(plans, decided, result)
    rows, succeeded = [], []
    for write in writes:
        key = write.external_id
        error = result.errors.get(key)
        if error is not None:
            failed.append(FailedRecord(key, write.record, log.redact(error)))
            continue
        rows.append((key, final_hash[key], result.target_ids.get(key)))
        succeeded.append(key)
    for _, counts, write in decided:
        if write.external_id not in result.errors:
            if write.op == "create":
                counts.created += 1
            else:
                counts.updated += 1
    last = plans[-1]
    store.commit_page(pipeline, PageCommit(rows, failed, succeeded, last.checkpoint))
    total = Counts()
    for plan in plans:
        add_counts(total, plan.counts)
    # every failure counts, also one a later page of the batch cleared (as one by one)
    total.failed += sum(len(plan.failed) for plan in plans) + len(result.errors)
    return PageResult(last.number, sum(p.records for p in plans), len(writes), last.checkpoint, total, len(plans))


def _failures(
    plans: Sequence[PagePlan], decided: list[tuple[int, Counts, Write]], result: WriteResult
) -> list[FailedRecord]:
    """The pages' failed records, less those a later page of the batch wrote: one by one,
    that later page would have cleared them."""
    written_on: dict[str, int] = {}
    for index, _, write in decided:
        if write.external_id not in result.errors:
            written_on[write.external_id] = index
    return [
        failure
        for index, plan in enumerate(plans)
        for failure in plan.failed
        if failure.external_id is None or written_on.get(failure.external_id, -1) < index
    ]


def add_counts(total: Counts, page: Counts) -> None:
    total.processed += page.processed
    total.created += page.created
    total.updated += page.updated
    total.skipped += page.skipped
    total.failed += page.failed


def _write(
    pipeline: str, store: StateStore, target: Target, writes: list[Write], committed: str | None
) -> WriteResult:
    """Write one page; when it fails part-way, keep the target ids of what was created."""
    try:
        return target.write(writes)
    except EtlError as exc:
        partial: WriteResult | None = getattr(exc, "partial", None)
        if partial is not None and partial.target_ids:
            # no hash: these records are sent again next run, as updates of these ids
            ids = [(key, None, target_id) for key, target_id in partial.target_ids.items()]
            store.commit_page(pipeline, PageCommit(ids, [], [], committed))
        raise
