"""Values a target cannot store: found per page at C speed, failed per record.

A JSON body can hold what no target stores faithfully: NaN and Infinity (the
decoder accepts them; PostgreSQL's jsonb refuses them, SQLite would store NULL,
a JSON line would not be JSON), integers past 64 bits (SQLite's INTEGER), and
numbers of more than 4,300 digits (Python will not make them ints; they are
kept as `HugeNumber` text). Such a record fails alone, with the field named;
the page and the run go on.

`unstorable(records)` looks at a page's values in one pass over their types
(`set(map(type, ...))`): most pages hold no float, no large int and nothing
nested, and cost one C-level scan.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

INT64 = (-(2**63), 2**63 - 1)
_NESTED = (dict, list)


class HugeNumber(str):
    """A JSON number of more than 4,300 digits, kept as its text."""


def parse_huge(text: str) -> int | HugeNumber:
    """`json.loads`'s parse_int for a body with a number Python will not convert."""
    try:
        return int(text)
    except ValueError:
        return HugeNumber(text)


def unstorable(
    records: Iterable[tuple[str, dict[str, Any]]], *, int_range: tuple[int, int] | None
) -> dict[str, str]:
    """The keys of the records holding a value the target cannot store, with the reason."""
    records = list(records)
    values = list(itertools.chain.from_iterable(record.values() for _, record in records))
    kinds = set(map(type, values))
    if not kinds & {float, int, HugeNumber, dict, list}:
        return {}
    if not _suspect(values, kinds, int_range):
        return {}
    found: dict[str, str] = {}
    for key, record in records:
        for name, value in record.items():
            reason = _problem(value, int_range)
            if reason is not None:
                found[key] = f"field {name!r}: {reason}; the target cannot store it"
                break
    return found


def _suspect(values: list[Any], kinds: set[type], int_range: tuple[int, int] | None) -> bool:
    """Whether any value may be unstorable (a cheap test before the per-record one)."""
    if HugeNumber in kinds or kinds & set(_NESTED):
        return True
    if float in kinds and not all(map(math.isfinite, (v for v in values if type(v) is float))):
        return True
    if int in kinds and int_range is not None:
        ints = [v for v in values if type(v) is int]
        return min(ints) < int_range[0] or max(ints) > int_range[1]
    return False


def _problem(value: Any, int_range: tuple[int, int] | None) -> str | None:
    """Why one value (walked through lists and objects) cannot be stored, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float and not math.isfinite(item):
            return f"{item} is not a JSON number"
        if kind is int and int_range is not None and not int_range[0] <= item <= int_range[1]:
            return f"the integer {_cut(str(item))} does not fit in 64 bits"
        if kind is HugeNumber:
            return f"a number of {len(item)} digits ({_cut(item)})"
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
    return None


def _cut(text: str) -> str:
    return text if len(text) <= 30 else f"{text[:12]}...{text[-12:]}"
