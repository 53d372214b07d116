"""ISO-8601 parsing that Python 3.10's fromisoformat lacks: `Z`, dates, naive = UTC."""

from __future__ import annotations

import re
from datetime import date, datetime, timezone

_FRACTION = re.compile(r"(\.\d+)")


def parse_instant(text: object) -> datetime | None:
    """An aware datetime for an ISO-8601 date or timestamp, else None."""
    if not isinstance(text, str) or not text[:4].isdigit():
        return None
    value = text.strip().replace("z", "Z")
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    value = _FRACTION.sub(lambda m: m.group(1)[:7].ljust(7, "0"), value, count=1)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            return None
        moment = datetime(day.year, day.month, day.day)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment
