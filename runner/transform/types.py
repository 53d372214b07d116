"""Field types: what each of the eight types accepts, and the value it writes.

A typed field (`{path, type, required}` in `mapping.fields`) is converted by
the mapping before the record is hashed and written, so "42" and 42 for an
integer field are the same record. Each `to_<type>` here is a pure function
of one non-null value: it returns the converted value or raises `Rejected`
saying why; the mapping adds the field's name, type and value
(`ConversionError`). null stays null for every type (`required` is the
mapping's to check).

`decimal` never goes through a float: a JSON number whose literal a float
cannot hold exactly is decoded as an `ExactFloat` carrying its text
(`parse_float`, used by the reader only when a pipeline has a decimal
field), and `to_decimal` reads that text. Decimals are written as the
canonical text of the exact value ("19.990" and 19.99 both "19.99"), so equal
amounts hash equal.

`timestamp` writes ISO-8601 UTC with `Z`, to the microsecond, the fraction
only when it is not zero; `date` writes the UTC date.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any, Literal, get_args

from runner.timestamps import parse_timestamp

FieldType = Literal["string", "integer", "number", "decimal", "boolean", "timestamp", "date", "json"]
TYPES: tuple[str, ...] = get_args(FieldType)

INT64 = (-(2**63), 2**63 - 1)
SHOWN_CHARS = 100  # a rejected value is shown cut to this many characters
MAX_DECIMAL_EXPONENT = 1000  # 1e1001 as a decimal would be a thousand-digit string: refused

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_PLAIN_DECIMAL = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d*[1-9])?")  # decimal_text's own form ("-0" aside)
_INT64_DECIMAL = (Decimal(INT64[0]), Decimal(INT64[1]))
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# datetime.fromisoformat reads ISO-8601 as APIs write it ("Z", any fraction) from Python 3.11 on;
# before, and for what it refuses, parse_timestamp does (a naive time is UTC for both)
_FAST_ISO = sys.version_info >= (3, 11)


class Rejected(ValueError):
    """A value a type does not accept; the message says why."""


class ConversionError(ValueError):
    """A typed field's value that does not convert, or a required field that is null."""

    def __init__(self, field: str, type_: str, value: Any, reason: str) -> None:
        self.field, self.type, self.value = field, type_, value
        if value is None:
            message = f"field {field!r} ({type_}) is required but is null or missing"
        else:
            message = f"field {field!r} ({type_}): cannot convert {shown(value)}: {reason}"
        super().__init__(message)


class ExactFloat(float):
    """A JSON number whose literal a float does not hold exactly, with that literal as `text`.

    It is a float everywhere (untyped fields, filters, comparisons); only `decimal`
    reads `text`. JMESPath's functions check types by `type(x).__name__`, so the
    class says it is a float there.
    """

    text: str

    def __new__(cls, text: str) -> ExactFloat:
        value = super().__new__(cls, text)
        value.text = text
        return value

    def __reduce__(self) -> tuple[Any, ...]:
        return ExactFloat, (self.text,)


ExactFloat.__name__ = "float"


def parse_float(text: str) -> float:
    """`json.loads`'s parse_float that loses no digit: a plain float when it holds the
    literal's value exactly as its shortest form ("19.99", "1.50", "1e3"), else an
    ExactFloat (more digits than a float keeps)."""
    if len(text) <= 15 and "e" not in text and "E" not in text:
        return float(text)  # at most 15 digits and no exponent: a double keeps them (DBL_DIG)
    value = float(text)
    if repr(value) == text or Decimal(repr(value)) == Decimal(text):
        return value
    return ExactFloat(text)


def shown(value: Any) -> str:
    """The value as JSON text (its repr if it has none), cut at SHOWN_CHARS characters."""
    if isinstance(value, ExactFloat):
        text = value.text
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=True, default=repr)
        except (ValueError, TypeError, RecursionError):
            text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


# --- one function per type ----------------------------------------------------------------


def to_string(value: Any) -> str:
    """Strings as they are; numbers and booleans as their JSON text."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):  # a HugeNumber (a number of more than 4,300 digits): its text
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if isinstance(value, float):
        _finite(value)
        return value.text if isinstance(value, ExactFloat) else repr(value)
    raise Rejected(f"a string takes a string, a number or a boolean, not {_kind(value)}")


def to_integer(value: Any) -> int:
    """Integers; floats with no fraction; numeric strings whose value is whole. 64 bits."""
    kind = type(value)
    if kind is int:
        if INT64[0] <= value <= INT64[1]:
            return value  # type: ignore[no-any-return]
        raise Rejected("out of the 64-bit integer range")
    if kind is bool:
        raise Rejected("a boolean is not an integer")
    if kind is float:
        _finite(value)
        if not value.is_integer():
            raise Rejected("it has a fraction")
        return to_integer(int(value))
    if isinstance(value, (str, ExactFloat)):
        exact = _exact(value)
        if exact != exact.to_integral_value():
            raise Rejected("it has a fraction")
        if not _INT64_DECIMAL[0] <= exact <= _INT64_DECIMAL[1]:
            raise Rejected("out of the 64-bit integer range")
        return int(exact)
    raise Rejected(f"not a number but {_kind(value)}")


def to_number(value: Any) -> int | float:
    """Numbers as given (an integer stays one); numeric strings ("42" -> 42, "4.5" -> 4.5)."""
    kind = type(value)
    if kind is int or kind is float:
        if kind is float:
            _finite(value)
        return value  # type: ignore[no-any-return]
    if kind is bool:
        raise Rejected("a boolean is not a number")
    if isinstance(value, ExactFloat):
        return float(value)
    if kind is str:
        text = value.strip()
        if not _NUMBER.fullmatch(text):
            raise Rejected("not a number")
        if "." in text or "e" in text or "E" in text:
            return _finite(float(text))
        return int(_exact(text))
    raise Rejected(f"not a number but {_kind(value)}")


def to_decimal(value: Any) -> str:
    """Numbers and numeric strings, as the canonical text of their exact value."""
    kind = type(value)
    if kind is bool:
        raise Rejected("a boolean is not a number")
    if kind is int:
        return str(value)
    if kind is float:
        text = repr(value)  # the shortest text that is this float: exact, as JSON wrote it
        if "e" not in text and "n" not in text:  # no exponent, not inf or nan: plain already
            return "0" if text in ("0.0", "-0.0") else (text[:-2] if text.endswith(".0") else text)
        _finite(value)
        return decimal_text(Decimal(text))
    if kind is str and _PLAIN_DECIMAL.fullmatch(value) and value != "-0":
        return str(value)  # already the canonical text
    if isinstance(value, (str, ExactFloat)):
        return decimal_text(_exact(value))
    raise Rejected(f"not a number but {_kind(value)}")


def to_boolean(value: Any) -> bool:
    """Booleans; "true" / "false" in any case; the integers 0 and 1."""
    kind = type(value)
    if kind is bool:
        return bool(value)
    if kind is int and value in (0, 1):
        return bool(value)
    if kind is str:
        lowered = value.strip().lower()
        if lowered in ("true", "false"):
            return bool(lowered == "true")
    raise Rejected('a boolean takes true, false, "true", "false", 0 or 1')


def to_timestamp(value: Any) -> str:
    """ISO-8601 (any offset), RFC 2822 / HTTP dates, epoch seconds -> ISO-8601 UTC `...Z`."""
    return timestamp_text(_instant(value))


def to_date(value: Any) -> str:
    """ISO dates, or timestamps as `to_timestamp` takes them -> their UTC date."""
    if type(value) is str and _ISO_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            raise Rejected("not an ISO-8601 or RFC 2822 date or timestamp") from None
    return _instant(value).astimezone(timezone.utc).date().isoformat()


def to_json(value: Any) -> Any:
    """Anything, as it is."""
    return value


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "string": to_string,
    "integer": to_integer,
    "number": to_number,
    "decimal": to_decimal,
    "boolean": to_boolean,
    "timestamp": to_timestamp,
    "date": to_date,
    "json": to_json,
}

# the classes a type's converter returns unchanged: the generated mapping tests
# `type(v) is C` inline and calls the converter only for the others
UNCHANGED: dict[str, type | None] = {
    "string": str,
    "integer": None,  # an int is checked against 64 bits
    "number": None,  # a float is checked for NaN and Infinity
    "decimal": None,
    "boolean": bool,
    "timestamp": None,
    "date": None,
    "json": None,
}


# --- helpers ----------------------------------------------------------------------------


def decimal_text(exact: Decimal) -> str:
    """The shortest plain (no exponent) text of an exact decimal: "19.990" -> "19.99", 1E+2 -> "100"."""
    if not exact.is_finite():
        raise Rejected("not a finite number")
    if abs(exact.adjusted()) > MAX_DECIMAL_EXPONENT:
        raise Rejected(f"the exponent is past {MAX_DECIMAL_EXPONENT}")
    text = format(exact, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def timestamp_text(instant: datetime) -> str:
    """An aware datetime as ISO-8601 UTC with `Z`; the fraction only when not zero."""
    if instant.utcoffset():
        try:
            instant = instant.astimezone(timezone.utc)
        except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise Rejected("out of range (years 1 to 9999 in UTC)") from None
    # formatted from its fields: about half of what isoformat() of an aware datetime costs
    text = (
        f"{instant.year:04d}-{instant.month:02d}-{instant.day:02d}"
        f"T{instant.hour:02d}:{instant.minute:02d}:{instant.second:02d}"
    )
    micro = instant.microsecond
    return f"{text}.{micro:06d}".rstrip("0") + "Z" if micro else text + "Z"


def _instant(value: Any) -> datetime:
    """An aware datetime (in any offset) for a timestamp string or epoch seconds."""
    kind = type(value)
    if kind is str:
        if _FAST_ISO:
            try:  # C, and most API timestamps are what it reads (from Python 3.11: Z, any fraction)
                instant = datetime.fromisoformat(value)
            except ValueError:
                pass  # RFC 2822, or a form only parse_timestamp reads
            else:
                return instant if instant.tzinfo is not None else instant.replace(tzinfo=timezone.utc)
        try:
            return parse_timestamp(value)
        except ValueError:
            raise Rejected("not an ISO-8601 or RFC 2822 date or timestamp") from None
    if kind is bool:
        raise Rejected("a boolean is not a timestamp")
    if kind is int or isinstance(value, float):
        return _from_epoch(value)
    raise Rejected(f"a timestamp takes a string or epoch seconds, not {_kind(value)}")


def _from_epoch(seconds: int | float) -> datetime:
    if isinstance(seconds, float):
        _finite(seconds)
        exact = Decimal(seconds.text) if isinstance(seconds, ExactFloat) else Decimal(repr(seconds))
    else:
        exact = Decimal(seconds)
    try:
        micro = int((exact * 1_000_000).to_integral_value(ROUND_FLOOR))
        return _EPOCH + timedelta(microseconds=micro)
    except (OverflowError, ValueError):
        raise Rejected("epoch seconds out of range (years 1 to 9999; not milliseconds?)") from None


def _exact(value: str | ExactFloat) -> Decimal:
    """The exact value of a numeric string or of an ExactFloat's literal."""
    text = value.text if isinstance(value, ExactFloat) else value.strip()
    if not _NUMBER.fullmatch(text):
        raise Rejected("not a number")
    try:
        return Decimal(text)
    except InvalidOperation:  # the pattern lets no such text through; kept as a guard
        raise Rejected("not a number") from None


def _finite(value: float) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        raise Rejected("not a finite number")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"
