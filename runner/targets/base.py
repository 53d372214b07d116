"""The Target protocol: a page of writes in, one commit, per-record outcomes out."""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Write:
    """One key's change. A `delete` has no fields: its record holds only `_deleted_at` (the
    run's start, which a soft delete writes); the jsonl target prints its record as null."""

    op: Literal["create", "update", "delete"]
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


# told, on the caller's thread, each request's keys and outcomes as its answer arrives
OnAnswered = Callable[[Sequence[str], WriteResult], None]


@runtime_checkable
class AnswersAsItGoes(Protocol):
    """A target whose writes are answered request by request (the http target): besides
    `write`, it can tell each answer before the page ends, so that the state store keeps
    what was written even when the run dies before the page is done."""

    def write_journaled(self, writes: Sequence[Write], on_answered: OnAnswered) -> WriteResult: ...


def split_deletes(writes: Sequence[Write]) -> tuple[Sequence[Write], list[Write]]:
    """(the upserts, the deletes) of a page; the page itself when it deletes nothing."""
    deletes = [write for write in writes if write.op == "delete"]
    return ([write for write in writes if write.op != "delete"] if deletes else writes), deletes


DELETED_AT = "_deleted_at"  # the column a soft delete sets (and a key that comes back clears)


_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
NESTED = (list, dict)


def _json_text() -> Callable[[Any], str]:
    """Compact JSON text of a value. JSONEncoder.encode builds a C encoder on every call,
    which is most of its cost for a short list; this builds it once (pure Python: as is)."""
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:
        return _COMPACT.encode
    try:
        encoder = make(None, _COMPACT.default, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    except TypeError:  # another interpreter's signature
        return _COMPACT.encode
    return lambda value: "".join(encoder(value, 0))


json_text = _json_text()


def json_cells(values: list[Any], width: int) -> None:
    """Lists and objects as JSON text (scalars keep their type), over rows laid end to end
    (`width` values each), in place; a column with no list or object in this page is
    skipped at C speed."""
    for column in range(width):
        kinds = set(map(type, values[column::width]))
        if list in kinds or dict in kinds:
            for i in range(column, len(values), width):
                if type(values[i]) in NESTED:
                    values[i] = json_text(values[i])
