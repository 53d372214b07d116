"""The StateStore protocol and the plain records it reads and writes."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ContextManager, Iterator, Protocol, Sequence

from runner import log


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the store knows of one external_id: its content hash and target id."""

    hash: str | None
    target_id: str | None = None


@dataclass(frozen=True, slots=True)
class FailedRecord:
    external_id: str | None
    raw: Any
    error: str


@dataclass(slots=True)
class RunRecord:
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


class RunLock:
    """The `lock()` both stores share: acquire, run, release; a read-only store takes none."""

    read_only: bool

    @contextmanager
    def lock(self, pipeline: str, run_id: str) -> Iterator[None]:
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


class StateStore(Protocol):
    def lock(self, pipeline: str, run_id: str) -> ContextManager[None]: ...
    def watermark(self, pipeline: str) -> Any: ...
    def checkpoint(self, pipeline: str) -> str | None: ...
    def key_states(self, pipeline: str, keys: Sequence[str]) -> dict[str, KeyState]: ...
    def commit_page(self, pipeline: str, commit: PageCommit) -> None: ...
    def start_run(self, pipeline: str, run: RunRecord) -> None: ...
    def finish_run(self, pipeline: str, run: RunRecord, *, watermark: Any, clear_checkpoint: bool) -> None: ...
    def show(self, pipeline: str, *, runs: int = 10, failed: int = 20) -> dict[str, Any]: ...
    def reset(self, pipeline: str) -> None: ...
    def close(self) -> None: ...



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
