"""The incremental watermark: the greatest cursor value seen, kept as the source wrote it.

Values compare by kind, never as text: numbers as numbers, ISO-8601
timestamps as instants (offsets honoured, `Z` accepted, a naive time or a
bare date taken as UTC). Every value of one watermark must be of the kind
of the first; a value of another kind is an error that names it.

A string that is a plain decimal number (`"1700000000"`) counts as a number,
because a saved watermark or a query parameter may come back as text.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

from runner.errors import ResponseError

__all__ = ["Watermark", "parse_timestamp", "sort_key"]

Kind = Literal["number", "timestamp"]

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?)?"
)
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime for an ISO-8601 date or date-time; ValueError if it is not one.

    Fractions finer than a microsecond are truncated here; `sort_key` keeps them.
    """
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an ISO-8601 timestamp: {text!r}")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    local = datetime(
        int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0), micro
    )
    return local.replace(tzinfo=_zone(offset)).astimezone(timezone.utc)


def _zone(offset: str | None) -> timezone:
    if offset is None or offset in ("Z", "z"):
        return timezone.utc
    digits = offset[1:].replace(":", "")
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
    return timezone(-delta if offset[0] == "-" else delta)


def sort_key(value: Any) -> tuple[Kind, Any]:
    """The kind of a cursor value and a key that orders values of that kind; ValueError if neither."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is neither a number nor an ISO-8601 timestamp")
    if isinstance(value, (int, float)):
        return "number", value
    if isinstance(value, str):
        if _NUMBER.fullmatch(value.strip()):
            return "number", Decimal(value.strip())
        instant = parse_timestamp(value)
        return "timestamp", (instant, _sub_microseconds(value))
    raise ValueError(f"{value!r} is neither a number nor an ISO-8601 timestamp")


def _sub_microseconds(text: str) -> Decimal:
    """The digits of a fraction past the sixth, so nanosecond timestamps still order."""
    match = _TIMESTAMP.fullmatch(text.strip())
    fraction = (match.group(7) if match else None) or ""
    return Decimal("0." + fraction[6:]) if len(fraction) > 6 else Decimal(0)


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
