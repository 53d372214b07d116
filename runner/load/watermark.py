"""The incremental watermark: the greatest cursor value seen, kept as the source wrote it.

Every value of one watermark must be of the kind of the first (number or
timestamp, see `runner.timestamps`); a value of another kind is an error
that names it.
"""

from __future__ import annotations

from typing import Any

from runner.errors import ResponseError
from runner.timestamps import Kind, sort_key

__all__ = ["Watermark"]


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
