"""What a run reports: its `Counts` and its `RunResult` (the public API returns these)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

RunStatus = Literal["success", "partial", "failed", "interrupted"]


@dataclass(slots=True)
class Counts:
    """What a run (or a page) did with the records it read; `etl run` prints these."""

    processed: int = 0  # every record read from the source
    created: int = 0
    updated: int = 0
    skipped: int = 0  # unchanged (same content hash), filtered out, or repeated in one page
    failed: int = 0  # failed in mapping or at the target; kept in the state store
    deleted: int = 0  # keys deleted: marked by mapping.deleted, or missing after a complete read

    def add(self, other: Counts) -> None:
        for name in _COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


_COUNT_FIELDS = tuple(f.name for f in fields(Counts))


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a run did; `exit_code` is what `etl run` exits with for it."""

    run_id: str
    pipeline: str
    status: RunStatus
    counts: Counts
    pages: int = 0
    requests: int = 0
    retries: int = 0
    elapsed_ms: int = 0
    stopped_by: str | None = None
    dry_run: bool = False
    resumed: bool = False
    error: str | None = None
    exit_code: int = 0
    resources: dict[str, RunResult] = field(default_factory=dict)  # the resources form: each one's result

    def as_dict(self) -> dict[str, Any]:
        """The result's fields and counts, flat (the `run.summary` event and the runs table)."""
        data = {
            name: getattr(self, name) for name in self.__dataclass_fields__
            if name not in ("counts", "exit_code", "resources")
        }
        return {**data, **asdict(self.counts)}
