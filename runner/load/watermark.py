"""The incremental watermark: the greatest cursor value seen, kept as the source wrote it.

Every value of one watermark must be of the kind of the first (number or
timestamp, see `runner.timestamps`); a value of another kind is an error
that names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jmespath.exceptions import JMESPathError

from runner.errors import ResponseError
from runner.model import Incremental
from runner.timestamps import Kind, sort_key

__all__ = ["IncrementalCursor", "Watermark"]


class Watermark:
    """The greatest cursor value observed (the least with `lowest=True`), as the source wrote it.

    `initial` counts as observed.
    """

    def __init__(
        self,
        initial: str | int | float | None = None,
        *,
        field: str = "cursor_field",
        lowest: bool = False,
    ) -> None:
        self.field = field
        self.lowest = lowest
        self._value: Any = None
        self._kind: Kind | None = None
        self._key: Any = None
        if initial is not None:
            self.observe(initial)

    @property
    def value(self) -> Any:
        return self._value

    @property
    def kind(self) -> Kind | None:
        return self._kind

    def observe(self, value: Any) -> None:
        """Keep `value` if it is greater (less, when `lowest`) than every value so far.

        A null value is ignored; on a tie the first value seen is kept.
        """
        if value is None:
            return
        key = self._checked_key(value)
        if self._key is None or (key < self._key if self.lowest else key > self._key):
            self._value, self._key = value, key

    def lesser(self, value: Any) -> Any:
        """The lesser of `.value` and `value` (both as written); None counts as absent."""
        if value is None or self._value is None:
            return self._value if value is None else value
        return value if self._checked_key(value) < self._key else self._value

    def _checked_key(self, value: Any) -> Any:
        kind, key = self._classify(value)
        if self._kind is None:
            self._kind = kind
        elif kind != self._kind:
            raise ResponseError(
                f"incremental {self.field}: value {value!r} is a {kind}, "
                f"but earlier values were {self._kind}s; every value must be of one kind"
            )
        return key

    def _classify(self, value: Any) -> tuple[Kind, Any]:
        try:
            return sort_key(value)
        except (ValueError, ArithmeticError) as exc:
            raise ResponseError(
                f"incremental {self.field}: value {value!r} is neither a number "
                "nor an ISO-8601 timestamp (like 2024-05-01T12:00:00Z)"
            ) from exc


class IncrementalCursor:
    """The one home of the incremental watermark for one run.

    - `params(base)`: the first request's query, with the saved watermark (or
      `initial_value`) as the incremental param.
    - `observe(raw)`: every source record read; the greatest cursor value wins.
    - `hold_back(value)`: a record that failed, in mapping or at the target, keeps
      the watermark at or before its own cursor value, so the next run reads it again.
    - `seen`: what a checkpoint carries, so a resumed run goes on from it.
    - `to_save()`: the value the run saves when it succeeds (or finishes partial).
    """

    def __init__(self, spec: Incremental, *, saved: Any, resumed_from: Any = None) -> None:
        self._spec = spec
        self._saved = saved
        self._greatest = Watermark()
        self._least_failed: Watermark | None = None
        if resumed_from is not None:
            self._greatest.observe(resumed_from)

    def params(self, base: Mapping[str, Any]) -> dict[str, Any]:
        params = dict(base)
        value = self._saved if self._saved is not None else self._spec.initial_value
        if value is not None:
            params[self._spec.param] = value
        return params

    def cursor_of(self, raw: Any) -> Any:
        """The record's cursor value, or None when it has none (or it cannot be read)."""
        try:
            return self._spec.cursor_field.search(raw)
        except JMESPathError:  # a record whose cursor cannot be read does not move it
            return None

    def observe(self, value: Any) -> None:
        self._greatest.observe(value)

    def hold_back(self, value: Any) -> None:
        if value is None:
            return
        if self._least_failed is None:
            self._least_failed = Watermark(lowest=True)
        self._least_failed.observe(value)

    @property
    def seen(self) -> Any:
        return self._greatest.value

    def to_save(self) -> Any:
        """The greatest cursor value seen, held back to the least failed record's value."""
        if self._least_failed is not None and self._least_failed.value is not None:
            return self._greatest.lesser(self._least_failed.value)
        return self._greatest.value
