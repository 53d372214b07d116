"""The content hash of a mapped record: equal hashes mean the record has not changed.

A record's hash is stored in the state store with its key; the next run skips
a record whose hash is the same. The hash covers the field names (a new or
renamed field is a change) and the values, serialized by `marshal` format 2:
exact for JSON values (1, 1.0, "1" and true all differ), a pure function of
the values (format 2 has no back-references, so object identity plays no
part), and about three times as fast as repr. Objects go in with their keys
sorted, so an API that reorders an object's keys causes no update.

Typed fields are converted before they are hashed (`transform/types`), so
"42" and 42 for an integer field hash the same; the field types go into the
seed, so a changed type rewrites the records once. A pipeline without typed
fields hashes as it always did.
"""

from __future__ import annotations

import hashlib
import marshal
import operator
from collections.abc import Callable, Mapping
from typing import Any

# the hash's version: a change here makes every stored hash differ, so one run updates all
_VERSION = b"etl-content-hash-2\0"
_NESTED = (dict, list)
_MARSHAL_FORMAT = 2  # the last format without references: the bytes depend on the values alone


class RecordHasher:
    """The hash of records with these fields; build once per run, call per record."""

    def __init__(self, fields: list[str], *, types: Mapping[str, str] | None = None) -> None:
        names = sorted(fields)
        seed = _VERSION + repr(names).encode()
        if types:  # a field's type is part of what was written: changing it rewrites the records
            seed += repr(sorted(types.items())).encode()
        self._seeded = hashlib.blake2b(seed, digest_size=16)
        self._values: Callable[[dict[str, Any]], tuple[Any, ...]] = _getter(names)

    def __call__(self, record: dict[str, Any]) -> str:
        values = self._values(record)
        for value in values:
            if type(value) in _NESTED and not _plain(value):
                values = tuple(map(_canonical, values))
                break
        hasher = self._seeded.copy()
        try:
            hasher.update(marshal.dumps(values, _MARSHAL_FORMAT))
        except ValueError:  # a value marshal cannot write (not one JSON gives): its repr
            hasher.update(repr(values).encode())
        return hasher.hexdigest()


def _getter(names: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """The record's values in `names` order, as a tuple, a missing field as null."""
    if len(names) > 1:
        get = operator.itemgetter(*names)

        def values(record: dict[str, Any]) -> tuple[Any, ...]:
            try:
                return get(record)  # type: ignore[no-any-return]
            except KeyError:
                return tuple(map(record.get, names))

        return values
    return lambda record: tuple(map(record.get, names))


def _plain(value: dict[str, Any] | list[Any]) -> bool:
    """True when `value` holds no object at any depth: then its repr is already canonical."""
    if type(value) is dict:
        return False
    kinds = set(map(type, value))
    if dict in kinds:
        return False
    return list not in kinds or all(_plain(item) for item in value if type(item) is list)


def _canonical(value: Any) -> Any:
    """Objects as ("object", sorted items), at any depth; a tuple never comes out of JSON."""
    kind = type(value)
    if kind is dict:
        return ("object", tuple((key, _canonical(item)) for key, item in sorted(value.items())))
    if kind is list:
        return [_canonical(item) for item in value]
    return value
