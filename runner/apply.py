"""Applying a planned page: diff it against the state store, write the target, commit the state.

This is the part of a run that talks to the target and the state store; the
engine plans pages (`runner.committer`) and this module applies them, either
in the engine's process or in the writer process (`runner.writer`), which
imports only this side: no HTTP client, no config loader.

Per page: one state lookup for all its keys; the creates and updates in one
target commit; then hashes, failures and the checkpoint in one state
transaction, so state moves only after the data is committed. Because the
diff happens right before the commit, in page order, a key in two
consecutive pages is always diffed against the commit before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner import log
from runner.contenthash import RecordHasher
from runner.errors import EtlError
from runner.state.base import FailedRecord, PageCommit, StateStore
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
    """A page mapped: what `apply_plan` needs, and nothing of the raw page but failures."""

    number: int
    records: int
    mapped: list[tuple[str, dict[str, Any]]]  # (external_id, record); each key once
    failed: list[FailedRecord]
    checkpoint: str | None
    counts: Counts  # processed, skipped (filtered, repeated) and failed mappings


@dataclass(slots=True)
class PageResult:
    """A page applied: its counts (planned plus written), for the engine to add up."""

    number: int
    records: int
    writes: int
    checkpoint: str | None
    counts: Counts


def apply_plan(
    pipeline: str, store: StateStore, target: Target, hasher: RecordHasher, plan: PagePlan, *,
    committed: str | None,
) -> PageResult:
    """Diff the plan against the store, write the changes, then commit the page's state.

    `committed` is the checkpoint committed before this page: where a page that
    fails part-way leaves the target ids it made.
    """
    counts = plan.counts
    hashed = {key: hasher(record) for key, record in plan.mapped}
    writes = _diff(pipeline, store, counts, plan.mapped, hashed)
    result = _write(pipeline, store, target, writes, committed) if writes else WriteResult()
    failed, hashes, succeeded = list(plan.failed), [], []
    for write in writes:
        error = result.errors.get(write.external_id)
        if error is not None:
            failed.append(FailedRecord(write.external_id, write.record, log.redact(error)))
            continue
        if write.op == "create":
            counts.created += 1
        else:
            counts.updated += 1
        hashes.append((write.external_id, hashed[write.external_id], result.target_ids.get(write.external_id)))
        succeeded.append(write.external_id)
    counts.failed += len(failed)
    store.commit_page(pipeline, PageCommit(hashes, failed, succeeded, plan.checkpoint))
    return PageResult(plan.number, plan.records, len(writes), plan.checkpoint, counts)


def _diff(
    pipeline: str, store: StateStore, counts: Counts, mapped: list[tuple[str, dict[str, Any]]],
    hashed: dict[str, str],
) -> list[Write]:
    known = store.key_states(pipeline, list(hashed))
    writes = []
    for key, record in mapped:
        state = known.get(key)
        if state is None:
            writes.append(Write("create", key, record))
        elif state.hash == hashed[key]:
            counts.skipped += 1
        else:
            writes.append(Write("update", key, record, state.target_id))
    return writes


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
