"""Timestamps and cursor values: the project's one timestamp parser, and the order of cursor values.

Used by the watermark (`runner.load.watermark`), the JMESPath functions and
the dev servers. Values compare by kind, never as text: numbers as numbers,
timestamps as instants, whatever their form: ISO-8601 (offsets honoured, `Z`
accepted, a naive time or a bare date taken as UTC) or RFC 2822 / HTTP dates
as SaaS APIs write them (`Tue, 05 Mar 2024 18:53:33 +0000`, Twilio;
`Wed, 21 Oct 2015 07:28:00 GMT`). A string that is a plain decimal number
(`"1700000000"`) counts as a number, because a saved watermark or a query
parameter may come back as text.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime
from typing import Any, Literal

__all__ = ["Kind", "parse_timestamp", "sort_key", "step_back"]

Kind = Literal["number", "timestamp"]

_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?)?"
)
# RFC 2822 section 3.3 (day name optional, seconds optional, case-insensitive names); HTTP
# dates (RFC 9110 IMF-fixdate) are its GMT form. Obsolete forms (two-digit years, US zone
# names, military letters) are left out: no API we know writes them, and guessing is worse.
_RFC2822 = re.compile(
    r"(?:(?P<weekday>mon|tue|wed|thu|fri|sat|sun)\s*,\s*)?"
    r"(?P<day>\d{1,2})\s+(?P<month>[a-z]{3})\s+(?P<year>\d{4})\s+"
    r"(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?\s+"
    r"(?P<zone>[+-]\d{4}|gmt|ut|utc|z)",
    re.IGNORECASE,
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime for an ISO-8601 date or date-time or an RFC 2822 / HTTP date;
    ValueError if it is none of them.

    Fractions finer than a microsecond are truncated here; `sort_key` keeps them.
    """
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        rfc = _RFC2822.fullmatch(text.strip())
        if rfc is None:
            raise ValueError(f"not an ISO-8601 or RFC 2822 timestamp: {text!r}")
        return _rfc2822_local(rfc).astimezone(timezone.utc)
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    local = datetime(
        int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0), micro
    )
    return local.replace(tzinfo=_zone(offset)).astimezone(timezone.utc)


def _rfc2822_local(match: re.Match[str]) -> datetime:
    """The instant an RFC 2822 match names, in the offset it was written with."""
    month = match["month"].lower()
    if month not in _MONTHS:
        raise ValueError(f"not an RFC 2822 month: {match['month']!r} in {match.string!r}")
    zone = match["zone"]
    offset = _zone(zone if zone[0] in "+-" else None)
    return datetime(
        int(match["year"]), _MONTHS.index(month) + 1, int(match["day"]),
        int(match["hour"]), int(match["minute"]), int(match["second"] or 0), tzinfo=offset,
    )


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
        return _rfc2822_back(text, amount)
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


def _rfc2822_back(text: str, amount: float | None) -> str:
    """An RFC 2822 value moved back, written in RFC 2822 (whole seconds: a fractional
    `amount` rounds toward the past, which only widens a lookback)."""
    match = _RFC2822.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an ISO-8601 or RFC 2822 timestamp: {text!r}")
    unit = timedelta(minutes=1) if match["second"] is None else timedelta(seconds=1)
    moved = _rfc2822_local(match) - (unit if amount is None else timedelta(seconds=amount))
    # The offset is fixed, so the zone is written as the original spelled it: GMT stays GMT,
    # +0000 stays +0000, and "-0000" (UTC, local zone unknown: RFC 2822 3.3) stays too.
    head = format_datetime(moved).rpartition(" ")[0]
    if match["second"] is None:
        head = head[:-3]
    if match["weekday"] is None:
        head = head[5:]
    return f"{head} {match['zone']}"
