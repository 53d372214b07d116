"""The Target protocol: a page of writes in, one commit, per-record outcomes out."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence


@dataclass(frozen=True, slots=True)
class Write:
    op: Literal["create", "update"]
    external_id: str
    record: dict[str, Any]
    target_id: str | None = None  # the http target's id from an earlier create


@dataclass(slots=True)
class WriteResult:
    """Per-record outcomes of one page: new target ids, and errors of records that failed."""

    target_ids: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class Target(Protocol):
    def write(self, writes: Sequence[Write]) -> WriteResult:
        """Write one page and commit it; raise TargetError when the page as a whole fails."""
        ...

    def close(self) -> None: ...


_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def json_cell(value: Any) -> Any:
    """Lists and objects are stored as JSON text; scalars keep their type."""
    if type(value) in (list, dict):
        return _COMPACT.encode(value)
    return value
