"""Timestamps and cursor values: the project's one ISO-8601 parser, and the order of cursor values.

Used by the watermark (`runner.load.watermark`), the JMESPath functions and
the dev servers. Values compare by kind, never as text: numbers as numbers,
ISO-8601 timestamps as instants (offsets honoured, `Z` accepted, a naive
time or a bare date taken as UTC). A string that is a plain decimal number
(`"1700000000"`) counts as a number, because a saved watermark or a query
parameter may come back as text.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

__all__ = ["Kind", "parse_timestamp", "sort_key", "step_back"]

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


def step_back(value: Any, amount: float | None = None) -> Any:
    """`value` moved back, written in its own form (a number stays a number, a numeric string
    a string, a timestamp keeps its offset and precision).

    `amount` is seconds for a timestamp and units for a number (`lookback`); None means one
    step of the value's own precision: the greatest value that sorts before it ("just before").
    ValueError if the value is neither a number nor a timestamp.
    """
    kind, _ = sort_key(value)
    if kind == "number":
        return _number_back(value, amount)
    return _timestamp_back(str(value), amount)


def _number_back(value: Any, amount: float | None) -> Any:
    if isinstance(value, int):
        if amount is None:
            return value - 1
        return value - int(amount) if float(amount).is_integer() else value - amount
    if isinstance(value, float):
        return math.nextafter(value, -math.inf) if amount is None else value - amount
    text = str(value).strip()
    exact = Decimal(text)
    step = Decimal(1).scaleb(exact.as_tuple().exponent) if amount is None else Decimal(str(amount))  # type: ignore[arg-type]
    return str(exact - step)


def _timestamp_back(text: str, amount: float | None) -> str:
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an ISO-8601 timestamp: {text!r}")
    _, _, _, hour, _minute, second, fraction, offset = match.groups()
    digits = min(len(fraction or ""), 6)
    if hour is None:
        unit = timedelta(days=1)
    elif second is None:
        unit = timedelta(minutes=1)
    else:
        unit = timedelta(microseconds=10 ** (6 - digits))
    instant = parse_timestamp(text).astimezone(_zone(offset))
    moved = instant - (unit if amount is None else timedelta(seconds=amount))
    if hour is None:
        return moved.date().isoformat()
    spec = "minutes" if second is None else ("seconds" if digits == 0 else "microseconds")
    written = moved.replace(tzinfo=None).isoformat(timespec=spec)
    if digits and spec == "microseconds":
        written = written[: len(written) - (6 - digits)]
    return written + _offset_like(offset, moved.utcoffset())


def _offset_like(offset: str | None, delta: timedelta | None) -> str:
    """The offset as the original wrote it (moving an instant back keeps a fixed offset)."""
    return offset or ""
