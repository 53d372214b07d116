"""The StateStore protocol, the plain records it reads and writes, and what both
backends share: the run lock's shape (`LockingStore`), `show` (`build_show` over
`StateQueries`), failure keys, timestamps and the lock holder checks."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, TypeAlias

from runner import log


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the store knows of one external_id: its content hash and target id."""

    hash: str | None
    target_id: str | None = None


@dataclass(frozen=True, slots=True)
class FailedRecord:
    """A record that could not be mapped or written, kept until it succeeds."""

    external_id: str | None
    raw: Any
    error: str


@dataclass(slots=True)
class RunRecord:
    """One run as the store records it; `counts` are the run's totals."""

    run_id: str
    status: str = "running"
    started_at: str = ""
    finished_at: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PageCommit:
    """Everything one committed page changes in the store, written in one transaction."""

    hashes: Sequence[tuple[str, str | None, str | None]]  # (external_id, hash, target_id)
    failed: Sequence[FailedRecord]
    succeeded: Sequence[str]  # keys whose earlier failures are cleared
    checkpoint: str | None


class StateStore(Protocol):
    """Per pipeline: key hashes and target ids, watermark, checkpoint, failed records, runs, lock."""

    def lock(self, pipeline: str, run_id: str) -> AbstractContextManager[None]:
        """Hold the pipeline's run lock for the block; raise LockError while a live run holds it."""
        ...

    def unlock(self, pipeline: str) -> bool:
        """Remove the pipeline's lock whoever holds it; True when there was one."""
        ...

    def watermark(self, pipeline: str) -> Any:
        """The incremental cursor value saved by the last run (a JSON value), or None."""
        ...

    def checkpoint(self, pipeline: str) -> str | None:
        """Where an unfinished run stopped (JSON text), or None."""
        ...

    def key_states(self, pipeline: str, keys: Sequence[str]) -> dict[str, KeyState]:
        """What is known of each of `keys`; a key never written is left out."""
        ...

    def commit_page(self, pipeline: str, commit: PageCommit) -> None:
        """Write one page's hashes, failures and checkpoint in one transaction."""
        ...

    def start_run(self, pipeline: str, run: RunRecord) -> None:
        """Record a run as started."""
        ...

    def finish_run(self, pipeline: str, run: RunRecord, *, watermark: Any, clear_checkpoint: bool) -> None:
        """Record a run's end; save `watermark` unless None, and clear the checkpoint if asked."""
        ...

    def show(self, pipeline: str, *, runs: int = 10, failed: int = 20) -> dict[str, Any]:
        """Everything `etl state show` prints, as a JSON-ready dict (see `build_show`)."""
        ...

    def reset(self, pipeline: str) -> None:
        """Clear watermark, checkpoint, hashes and failures; keep target ids."""
        ...

    def close(self) -> None:
        """Release what the store holds (its connection, its locks)."""
        ...


class LockingStore:
    """A base for stores: `lock()` acquires, runs the block, releases; a read-only store
    takes no lock. Each store supplies `_acquire` and `_release`."""

    read_only: bool

    @contextmanager
    def lock(self, pipeline: str, run_id: str) -> Iterator[None]:
        """Hold the pipeline's run lock for the block (none when read-only)."""
        if self.read_only:
            yield
            return
        self._acquire(pipeline, run_id)
        try:
            yield
        finally:
            self._release(pipeline, run_id)

    def _acquire(self, pipeline: str, run_id: str) -> None:
        raise NotImplementedError

    def _release(self, pipeline: str, run_id: str) -> None:
        raise NotImplementedError


# --- show ------------------------------------------------------------------------------

# run_id, status, started_at, finished_at, counts
RunRow: TypeAlias = tuple[str, str, str, str | None, dict[str, Any]]
# external_id, error, failed_at, the raw record as JSON text
FailureRow: TypeAlias = tuple[str | None, str, str, str]


class StateQueries(Protocol):
    """The reads `build_show` (and a store's watermark and checkpoint) are made of; each
    backend answers them with its own SQL."""

    def pipeline_row(self, pipeline: str) -> tuple[Any, str | None] | None:
        """(watermark as its JSON value, checkpoint), or None for a pipeline never seen."""
        ...

    def count(self, table: Literal["keys", "failed"], pipeline: str) -> int:
        """The number of the pipeline's rows in `table`."""
        ...

    def lock_holder(self, pipeline: str) -> dict[str, Any] | None:
        """run_id, pid, host, acquired_at of the lock's holder, or None when none holds it."""
        ...

    def runs(self, pipeline: str, limit: int) -> Sequence[RunRow]:
        """The last `limit` runs, newest first."""
        ...

    def failures(self, pipeline: str, limit: int) -> Sequence[FailureRow]:
        """The last `limit` failed records, newest first."""
        ...


def build_show(queries: StateQueries, pipeline: str, *, runs: int, failed: int) -> dict[str, Any]:
    """The dict `StateStore.show` returns, the same keys for every backend."""
    row = queries.pipeline_row(pipeline)
    watermark, checkpoint = (None, None) if row is None else row
    return {
        "pipeline": pipeline,
        "watermark": watermark,
        "checkpoint": checkpoint,
        "keys": queries.count("keys", pipeline),
        "lock": queries.lock_holder(pipeline),
        "runs": [
            {"run_id": run_id, "status": status, "started_at": started, "finished_at": finished, **counts}
            for run_id, status, started, finished, counts in queries.runs(pipeline, runs)
        ],
        "failed_total": queries.count("failed", pipeline),
        "failed": [
            {"external_id": external_id, "error": error, "failed_at": failed_at, "raw": json.loads(raw)}
            for external_id, error, failed_at, raw in queries.failures(pipeline, failed)
        ],
    }


# --- shared by both backends ----------------------------------------------------------------


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds, as the stores write it."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def failure_key(external_id: str | None, raw: Any) -> str:
    """Failures are kept per key; a record without a key is kept per raw content."""
    if external_id is not None:
        return "id:" + external_id
    return "raw:" + json.dumps(raw, sort_keys=True, default=str)[:500]


def log_takeover(pipeline: str, run_id: str, pid: int, host: str) -> None:
    """A lock whose process is gone is taken over; say so in the log."""
    log.event(
        logging.getLogger("runner.state"), "lock.taken_over", level=logging.WARNING,
        stale_run_id=run_id, stale_pid=pid, host=host, locked_pipeline=pipeline,
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one we may not signal runs too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
