"""Timestamps and cursor values: the project's one ISO-8601 parser, and the order of cursor values.

Used by the watermark (`runner.load.watermark`), the JMESPath functions and
the dev servers. Values compare by kind, never as text: numbers as numbers,
ISO-8601 timestamps as instants (offsets honoured, `Z` accepted, a naive
time or a bare date taken as UTC). A string that is a plain decimal number
(`"1700000000"`) counts as a number, because a saved watermark or a query
parameter may come back as text.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

__all__ = ["Kind", "parse_timestamp", "sort_key"]

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
