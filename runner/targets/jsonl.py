"""The jsonl target (and the dry-run printer): one line per create, update or delete
(a delete's `record` is null)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from runner.errors import TargetError
from runner.targets.base import Write, WriteResult


def write_line(write: Write, resource: str | None = None) -> str:
    """One line; in a file of the resources form it names its resource."""
    record = None if write.op == "delete" else write.record
    line = {"op": write.op, "external_id": write.external_id, "record": record}
    if resource is not None:
        line = {"resource": resource, **line}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"


class JsonlTarget:
    """Appends `{"op", "external_id", "record"}` lines to a file or stdout; flushes per page."""

    def __init__(self, stream: IO[str], *, close_stream: bool, resource: str | None = None) -> None:
        self._stream = stream
        self._close_stream = close_stream
        self._resource = resource  # the resources form: each line names it

    @classmethod
    def for_path(cls, path: str, *, resource: str | None = None) -> JsonlTarget:
        if path == "-":
            return cls(sys.stdout, close_stream=False, resource=resource)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return cls(open(path, "a", encoding="utf-8"), close_stream=True, resource=resource)
        except OSError as exc:
            raise TargetError(f"jsonl target {path}: cannot open: {exc.strerror}") from exc

    def write(self, writes: Sequence[Write]) -> WriteResult:
        try:
            self._stream.write("".join(write_line(w, self._resource) for w in writes))
            self._stream.flush()
        except OSError as exc:
            raise TargetError(f"jsonl target: write failed: {exc.strerror}") from exc
        return WriteResult()

    def close(self) -> None:
        """Close the file; a flush that fails here (a full disk) is a TargetError, which the
        engine reports only when the run had no error before it."""
        if not self._close_stream:
            return
        try:
            self._stream.close()
        except OSError as exc:
            raise TargetError(f"jsonl target: closing the file failed: {exc.strerror}") from exc
