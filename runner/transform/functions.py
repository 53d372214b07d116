"""JMESPath functions of our own, registered once; every Expr searches with OPTIONS.

String helpers take null and give null, so an absent field maps to null
instead of failing the record. Dates are ISO-8601 strings, RFC 2822 / HTTP dates
(`Tue, 05 Mar 2024 18:53:33 +0000`) or epoch seconds; any other written form goes
through parse_date with its strptime format.

    lower(s)  upper(s)  trim(s)  split(s, sep)  replace(s, old, new)
    to_iso(date)              -> ISO-8601 in UTC, e.g. 2024-05-01T08:00:00Z
    parse_date(s, fmt)        -> strptime(fmt) of s as ISO-8601 in UTC (no offset in fmt: UTC)
    format_date(date, fmt)    -> strftime(fmt) of the instant in UTC
    to_epoch(date)            -> seconds since 1970 (number)
    from_epoch(seconds)       -> ISO-8601 in UTC
    now()                     -> the current instant, ISO-8601 in UTC
    coalesce(a, b, ...)       -> the first argument that is not null
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import jmespath
from jmespath import functions as jp

from runner.timestamps import parse_timestamp

if TYPE_CHECKING:  # an argument's accepted types: a TypedDict that exists only in types-jmespath
    from jmespath.functions import _Signature

_STR: _Signature = {"types": ["string", "null"]}
_DATE: _Signature = {"types": ["string", "number", "null"]}


_frozen_now: datetime | None = None  # set by `frozen_now`: `etl test` replays at the recording's time


@contextlib.contextmanager
def frozen_now(moment: datetime) -> Iterator[None]:
    """`now()` returns `moment` inside the block (process-wide; offline tests run one at a time)."""
    global _frozen_now
    before, _frozen_now = _frozen_now, moment
    try:
        yield
    finally:
        _frozen_now = before


def _instant(value: Any) -> datetime:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    return parse_timestamp(value)


def _iso(moment: datetime) -> str:
    text = moment.astimezone(timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


class EtlFunctions(jp.Functions):
    @jp.signature(_STR)
    def _func_lower(self, s: str | None) -> str | None:
        return None if s is None else s.lower()

    @jp.signature(_STR)
    def _func_upper(self, s: str | None) -> str | None:
        return None if s is None else s.upper()

    @jp.signature(_STR)
    def _func_trim(self, s: str | None) -> str | None:
        return None if s is None else s.strip()

    @jp.signature(_STR, {"types": ["string"]})
    def _func_split(self, s: str | None, sep: str) -> list[str] | None:
        return None if s is None else s.split(sep)

    @jp.signature(_STR, {"types": ["string"]}, {"types": ["string"]})
    def _func_replace(self, s: str | None, old: str, new: str) -> str | None:
        return None if s is None else s.replace(old, new)

    @jp.signature(_DATE)
    def _func_to_iso(self, value: Any) -> str | None:
        return None if value is None else _iso(_instant(value))

    @jp.signature(_STR, {"types": ["string"]})
    def _func_parse_date(self, s: str | None, fmt: str) -> str | None:
        if s is None:
            return None
        moment = datetime.strptime(s, fmt)  # ValueError on a mismatch fails that record only
        return _iso(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))

    @jp.signature(_DATE, {"types": ["string"]})
    def _func_format_date(self, value: Any, fmt: str) -> str | None:
        return None if value is None else _instant(value).strftime(fmt)

    @jp.signature(_DATE)
    def _func_to_epoch(self, value: Any) -> float | int | None:
        if value is None:
            return None
        seconds = _instant(value).timestamp()
        return int(seconds) if seconds.is_integer() else seconds

    @jp.signature({"types": ["number", "null"]})
    def _func_from_epoch(self, value: float | None) -> str | None:
        return None if value is None else _iso(_instant(value))

    @jp.signature()
    def _func_now(self) -> str:
        return _iso(_frozen_now or datetime.now(timezone.utc))

    @jp.signature({"types": [], "variadic": True})
    def _func_coalesce(self, *values: Any) -> Any:
        return next((v for v in values if v is not None), None)


FUNCTIONS = EtlFunctions()
OPTIONS = jmespath.Options(custom_functions=FUNCTIONS)
