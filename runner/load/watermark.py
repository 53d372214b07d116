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
from runner.timestamps import Kind, sort_key, step_back

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

    def check(self, value: Any) -> None:
        """Raise ResponseError when `value` cannot join this watermark (not a number or
        timestamp, or not of the kind of the values so far)."""
        self._checked_key(value)

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
                f"incremental {self.field}: value {value!r} is neither a number nor a timestamp "
                "(ISO-8601 like 2024-05-01T12:00:00Z, or RFC 2822 like Wed, 01 May 2024 12:00:00 +0000)"
            ) from exc


class IncrementalCursor:
    """The one home of the incremental watermark for one run.

    - `params(base)`: the first request's query, with the saved watermark (or
      `initial_value`), less `lookback`, as the incremental param.
    - `read(raw)`: a record's cursor value, or why it cannot be read (that record
      fails alone: a value that is no number or timestamp, or of another kind).
    - `observe(value)`: every record read; the greatest cursor value wins.
    - `hold_back(value)`: a record that failed, in mapping or at the target, keeps
      the watermark just before its own cursor value, so the next run reads it again.
    - `seen`: what a checkpoint carries.
    - `to_save(...)`: the value the run saves at its end, or None to keep the saved one.

    When the watermark may move (the rule that keeps every record): only after a run
    that read to the end and was not resumed from a checkpoint (a resumed run keeps the
    watermark its interrupted run started from: positions may have shifted in between);
    a run that a limit stopped keeps it too, unless the source is declared `order: asc`
    (then the greatest committed value is safe to start from).
    """

    def __init__(self, spec: Incremental, *, saved: Any, resumed_from: Any = None) -> None:
        self._spec = spec
        self._saved = saved
        self._greatest = Watermark()
        self._least_failed: Watermark | None = None
        if resumed_from is not None:
            self._greatest.observe(resumed_from)

    @property
    def ascending(self) -> bool:
        return self._spec.order == "asc"

    def params(self, base: Mapping[str, Any]) -> dict[str, Any]:
        params = dict(base)
        value = self.sent_value()
        if value is not None and self._spec.param is not None:
            params[self._spec.param] = value
        return params

    def sent_value(self) -> Any:
        """What the first request says: the saved watermark (or the initial value) less `lookback`."""
        value = self._saved if self._saved is not None else self._spec.initial_value
        if value is None or not self._spec.lookback:
            return value
        return step_back(value, self._spec.lookback)

    def read(self, raw: Any) -> tuple[Any, str | None]:
        """The record's cursor value (None when it has none), and the reason it cannot be used."""
        try:
            value = self._spec.cursor_field.search(raw)
        except JMESPathError:  # a record whose cursor cannot be read does not move it
            return None, None
        if value is None:
            return None, None
        try:
            self._greatest.check(value)
        except ResponseError as exc:
            return None, str(exc)
        return value, None

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

    def to_save(self, *, read_to_end: bool, resumed: bool) -> Any:
        """The watermark to save after a successful (or partial) run; None keeps the saved one."""
        if resumed or not (read_to_end or self.ascending):
            return None
        greatest = self._greatest.value
        if self._least_failed is None or self._least_failed.value is None:
            return greatest
        before = step_back(self._least_failed.value)
        return before if greatest is None else self._greatest.lesser(before)
