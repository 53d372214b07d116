"""Record selection and field mapping: one source record -> a keyed, hashed output record.

The mapping's expressions were compiled at load (`config.py`); here they only
run. A record either maps (`Mapped`), is filtered out (`None`), or fails
(`Failed`, kept with its raw record and the reason so the run can go on).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from jmespath.exceptions import JMESPathError

from runner.model import MappingSpec


@dataclass(frozen=True, slots=True)
class Mapped:
    external_id: str
    record: dict[str, Any]
    hash: str


@dataclass(frozen=True, slots=True)
class Failed:
    external_id: str | None
    raw: Any
    error: str


def map_record(spec: MappingSpec, raw: Any) -> Mapped | Failed | None:
    """Map one source record; None means the filter skipped it."""
    try:
        if spec.filter is not None and not _truthy(spec.filter.search(raw)):
            return None
        key = key_string(spec.external_id.search(raw))
        record = {name: expr.search(raw) for name, expr in spec.fields}
    except (JMESPathError, ValueError, TypeError, ArithmeticError) as exc:
        return Failed(_safe_key(spec, raw), raw, f"{type(exc).__name__}: {exc}")
    if key is None:
        return Failed(None, raw, f"external_id ({spec.external_id.text}) is null or empty")
    return Mapped(key, record, content_hash(record))


def key_string(value: Any) -> str | None:
    """The external_id made a string: strings as they are, other values as compact JSON."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# one encoder, built once: json.dumps with options builds a new encoder per call
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(record: dict[str, Any]) -> str:
    """A stable hash of the mapped record (field names included), so a new field is a change."""
    return hashlib.blake2b(_CANONICAL.encode(record).encode(), digest_size=16).hexdigest()


def _safe_key(spec: MappingSpec, raw: Any) -> str | None:
    try:
        return key_string(spec.external_id.search(raw))
    except (JMESPathError, ValueError, TypeError, ArithmeticError):
        return None


def _truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null, empty strings, lists and objects are false; 0 is true."""
    return not (value is None or value is False or value in ("", [], {}))
