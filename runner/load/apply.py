"""Applying planned pages: diff them against the state store, write the target, commit the state.

This is the part of a run that talks to the target and the state store; the
engine plans pages (`runner.load.plan`) and an applier (`runner.load.applier`)
hands them here, in the engine's process or in the writer process
(`runner.load.process`), which imports only this side: no HTTP client, no
config loader.

Two steps. `decide` is pure: given the plans, what the store knows of their
keys and their hashes, it says which keys are written (create or update,
each key once with its newest record) and which are unchanged.
`apply_plans` does the I/O around it: one state lookup for all the keys, the
writes in one target commit, then hashes, failures and the checkpoint in one
state transaction, so state moves only after the data is committed. Because
the diff happens right before the commit, in page order, a key in two
consecutive pages is always diffed against the commit before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runner import log
from runner.errors import EtlError
from runner.load.contenthash import RecordHasher
from runner.result import Counts
from runner.state.base import FailedRecord, KeyState, PageCommit, StateStore
from runner.load.journal import Journal
from runner.targets.base import AnswersAsItGoes, Target, Write, WriteResult


@dataclass(slots=True)
class PagePlan:
    """A page mapped: what `apply_plans` needs, and nothing of the raw page but failures."""

    number: int
    records: int
    mapped: list[tuple[str, dict[str, Any]]]  # (external_id, record); each key once
    failed: list[FailedRecord]
    checkpoint: str | None
    counts: Counts  # planning's counts: processed, skipped (filtered, repeated)
    cursors: dict[str, Any] = field(default_factory=dict)  # external_id -> incremental cursor value
    deleted: list[str] = field(default_factory=list)  # keys this page deletes (none of them in `mapped`)
    deleted_at: str = ""  # the run's start: what a soft delete writes
    seen: list[str] | None = None  # with deletes.missing: every key the page read, marked in the store
    sweep: str | None = None  # the run id those marks carry
    # resources: child work that the page's written records make (see `_pending`)
    children: tuple[tuple[str, bool], ...] = ()  # (child's state key, changed_only)
    parents: dict[str, str] = field(default_factory=dict)  # external_id -> its source record as JSON
    done: list[str] = field(default_factory=list)  # a child's page: parent keys whose children it completes
    # a child with deletes.missing: the parent each key was read under; the parents read completely
    parent_of: dict[str, str] = field(default_factory=dict)
    swept: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PageResult:
    """Pages applied (one or a batch): their counts, planned plus written, for the engine to add up."""

    last_page: int
    records: int
    writes: int
    last_checkpoint: str | None
    counts: Counts
    pages: int = 1
    failed_cursors: list[Any] = field(default_factory=list)  # cursor values of records the target refused


@dataclass(slots=True)
class Decision:
    """What `decide` found: the writes to send and, per page, what each record came to."""

    writes: list[Write]  # one per key, its newest record
    hashes: dict[str, str]  # the hash of each written key's newest record
    decided: list[tuple[int, Write]]  # (page index, write) for every record that changed
    unchanged: list[int]  # per page: records whose hash equals the stored one


def decide(plans: Sequence[PagePlan], known: dict[str, KeyState], hashed: Sequence[dict[str, str]]) -> Decision:
    """Diff consecutive pages against `known`, each as if the pages before it were committed.

    A key unknown to the store is created, a key whose hash differs is updated, an equal
    hash is unchanged. A key written by two pages is written once, with its newest record;
    when an earlier page of the batch created it, that write stays a create. A deleted key
    the store (or the batch) has is deleted; one it does not have is unchanged.
    """
    known = dict(known)
    final: dict[str, Write] = {}
    hashes: dict[str, str] = {}
    decided: list[tuple[int, Write]] = []
    unchanged = [0] * len(plans)
    for index, (plan, page_hashes) in enumerate(zip(plans, hashed, strict=True)):
        for key, record in plan.mapped:
            state, digest = known.get(key), page_hashes[key]
            if state is None:
                write = Write("create", key, record)
            elif state.hash == digest:
                unchanged[index] += 1
                continue
            else:
                write = Write("update", key, record, state.target_id)
            decided.append((index, write))
            earlier = final.get(key)
            if earlier is not None and earlier.op == "create":
                write = Write("create", key, record)  # created in this batch: one create, newest record
            known[key] = KeyState(digest, write.target_id)
            final[key], hashes[key] = write, digest
        for key in plan.deleted:
            state = known.pop(key, None)
            if state is None:
                unchanged[index] += 1  # not in the store: deleted already, or never written
                continue
            write = Write("delete", key, {"_deleted_at": plan.deleted_at}, state.target_id)
            decided.append((index, write))
            final[key] = write
            hashes.pop(key, None)
    return Decision(list(final.values()), hashes, decided, unchanged)


def apply_plans(
    pipeline: str, store: StateStore, target: Target, hasher: RecordHasher, plans: Sequence[PagePlan], *,
    committed: str | None,
) -> PageResult:
    """Diff the pages against the store, write their changes in one target commit, then
    commit their state (the last page's checkpoint) in one transaction.

    The counts are those of applying the pages one by one. `committed` is the checkpoint
    committed before these pages: where pages that fail part-way leave the target ids they made.
    """
    hashed = [{key: hasher(record) for key, record in plan.mapped} for plan in plans]
    keys = {key: None for page in hashed for key in page}
    for plan in plans:
        keys.update(dict.fromkeys(plan.deleted))
    known = store.key_states(pipeline, list(keys))
    decision = decide(plans, known, hashed)
    journal = None if any(plan.children for plan in plans) else Journal(pipeline, store, decision.hashes, committed)
    result = _write(pipeline, store, target, decision.writes, committed, journal) if decision.writes else WriteResult()
    store.commit_page(pipeline, _page_commit(plans, decision, result))
    return _page_result(plans, decision, result)


def _page_commit(plans: Sequence[PagePlan], decision: Decision, result: WriteResult) -> PageCommit:
    """Hashes and target ids of what was written; failures of mapping and of the target."""
    rows: list[tuple[str, str | None, str | None]] = []
    succeeded: list[str] = []
    deleted: list[str] = []
    failed = _mapping_failures(plans, decision, result)
    for write in decision.writes:
        key = write.external_id
        error = result.errors.get(key)
        if error is not None:
            raw = {"op": "delete"} if write.op == "delete" else write.record
            failed.append(FailedRecord(key, raw, log.redact(error)))
            continue
        if write.op == "delete":
            deleted.append(key)
        else:
            rows.append((key, decision.hashes[key], result.target_ids.get(key)))
        succeeded.append(key)
    seen = [key for plan in plans if plan.seen for key in plan.seen]
    done = [key for plan in plans for key in plan.done]
    if done:  # a parent's children succeeded: its earlier `parent:<key>` failure is cleared
        failing = {f.external_id for f in failed}
        succeeded.extend(key for key in (f"parent:{k}" for k in done) if key not in failing)
    return PageCommit(
        rows, failed, succeeded, plans[-1].checkpoint, deleted=deleted, seen=seen, sweep=plans[-1].sweep,
        pending=_pending(plans, decision, result), done=done,
        parent_of=[item for plan in plans for item in plan.parent_of.items()],
        swept=[key for plan in plans for key in plan.swept],
    )


def _pending(plans: Sequence[PagePlan], decision: Decision, result: WriteResult) -> list[tuple[str, str, str]]:
    """The child work of the pages' parent records, recorded with them: every record the
    target took (a `changed_only` child: only those created or updated now)."""
    if not any(plan.children for plan in plans):
        return []
    changed = {w.external_id for _, w in decision.decided if w.op in ("create", "update")}
    rows: list[tuple[str, str, str]] = []
    for plan in plans:
        for key, parent in plan.parents.items():
            if key in result.errors:
                continue
            rows.extend((child, key, parent) for child, changed_only in plan.children
                        if not changed_only or key in changed)
    return rows


def _mapping_failures(plans: Sequence[PagePlan], decision: Decision, result: WriteResult) -> list[FailedRecord]:
    """The pages' failed records, less those a later page of the batch wrote: one by one,
    that later page would have cleared them."""
    written_on: dict[str, int] = {}
    for index, write in decision.decided:
        if write.external_id not in result.errors:
            written_on[write.external_id] = index
    return [
        failure
        for index, plan in enumerate(plans)
        for failure in plan.failed
        if failure.external_id is None or written_on.get(failure.external_id, -1) < index
    ]


def _page_result(plans: Sequence[PagePlan], decision: Decision, result: WriteResult) -> PageResult:
    """Planning's counts plus what applying found; every failure counts, also one a later
    page of the batch cleared (as one by one)."""
    total = Counts()
    for plan in plans:
        total.add(plan.counts)
    total.skipped += sum(decision.unchanged)
    for _, write in decision.decided:
        if write.external_id in result.errors:
            continue
        if write.op == "create":
            total.created += 1
        elif write.op == "delete":
            total.deleted += 1
        else:
            total.updated += 1
    total.failed += sum(len(plan.failed) for plan in plans) + len(result.errors)
    failed_cursors = [
        plan.cursors[key] for key in result.errors for plan in plans if plan.cursors.get(key) is not None
    ]
    last = plans[-1]
    return PageResult(
        last.number, sum(p.records for p in plans), len(decision.writes), last.checkpoint, total, len(plans),
        failed_cursors,
    )


def _write(
    pipeline: str, store: StateStore, target: Target, writes: list[Write], committed: str | None,
    journal: Journal | None = None,
) -> WriteResult:
    """Write one page; when it fails part-way, keep the target ids of what was created. A
    target that answers as it goes has its answers kept meanwhile (`runner.load.journal`)."""
    try:
        if journal is not None and isinstance(target, AnswersAsItGoes):
            return target.write_journaled(writes, journal)
        return target.write(writes)
    except EtlError as exc:
        if journal is not None:
            journal.flush()  # what was answered is on the target: the next run need not send it
        partial = exc.partial
        kept = journal.kept if journal is not None else set()
        if partial is not None and partial.target_ids.keys() - kept:
            # no hash: these records are sent again next run, as updates of these ids
            ids = [(key, None, target_id) for key, target_id in partial.target_ids.items() if key not in kept]
            store.commit_page(pipeline, PageCommit(ids, [], [], committed))
        raise
