"""Values a target cannot store: found per page at C speed, failed per record.

A JSON body can hold what no target stores faithfully: NaN and Infinity (the
decoder accepts them; PostgreSQL's jsonb refuses them, SQLite would store NULL,
a JSON line would not be JSON), integers past 64 bits (SQLite's INTEGER), and
numbers of more than 4,300 digits (Python will not make them ints; they are
kept as `HugeNumber` text). Such a record fails alone, with the field named;
the page and the run go on.

The cost on the hot path is one C-level pass over a page's field values (their
types, and the least and greatest int when the target has a 64-bit bound). The
walk through lists and objects runs only for a page whose body may hold NaN,
Infinity or a huge number, which the reader tells from the bytes (`deep`).
An integer past 64 bits inside a list or object is no problem: it is JSON text.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Iterable
from typing import Any

INT64 = (-(2**63), 2**63 - 1)
_RECORD = operator.itemgetter(1)
_IS_INT = functools.partial(operator.is_, int)


class HugeNumber(str):
    """A JSON number of more than 4,300 digits, kept as its text."""


def parse_huge(text: str) -> int | HugeNumber:
    """`json.loads`'s parse_int for a body with a number Python will not convert."""
    try:
        return int(text)
    except ValueError:
        return HugeNumber(text)


def unstorable(
    records: Iterable[tuple[str, dict[str, Any]]], *, int_range: tuple[int, int] | None, deep: bool = True
) -> dict[str, str]:
    """The keys of the records holding a value the target cannot store, with the reason.

    `deep=False` says the page's body held no NaN, Infinity or huge number: then only the
    fields' own ints are checked against `int_range`.
    """
    records = list(records)
    if not deep and int_range is None:
        return {}
    values = list(itertools.chain.from_iterable(map(dict.values, map(_RECORD, records))))
    if not (deep or _ints_out_of(values, int_range)):
        return {}
    found: dict[str, str] = {}
    for key, record in records:
        for name, value in record.items():
            reason = _problem(value, int_range, deep=deep)
            if reason is not None:
                found[key] = f"field {name!r}: {reason}; the target cannot store it"
                break
    return found


def _ints_out_of(values: list[Any], int_range: tuple[int, int] | None) -> bool:
    """Whether an int among `values` (not a bool) lies outside `int_range`: C-level passes only."""
    if int_range is None:
        return False
    types = list(map(type, values))
    if int not in types:
        return False
    ints: list[int] = list(itertools.compress(values, map(_IS_INT, types)))
    return min(ints) < int_range[0] or max(ints) > int_range[1]


def _problem(value: Any, int_range: tuple[int, int] | None, *, deep: bool) -> str | None:
    """Why one field's value cannot be stored, or None: an int past the range (the field's
    own value only), and with `deep`, NaN, Infinity or a huge number anywhere inside it."""
    if type(value) is int and int_range is not None and not int_range[0] <= value <= int_range[1]:
        return f"the integer {_cut(str(value))} does not fit in 64 bits"
    stack = [value] if deep else []
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float and not math.isfinite(item):
            return f"{item} is not a JSON number"
        if kind is HugeNumber:
            return f"a number of {len(item)} digits ({_cut(item)})"
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
    return None


def _cut(text: str) -> str:
    return text if len(text) <= 30 else f"{text[:12]}...{text[-12:]}"
