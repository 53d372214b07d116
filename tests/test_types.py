"""Tests of the field types (runner/transform/types.py): every accepted and rejected kind per
type, exact decimals through parse_float, the mapping's conversion and `required`, the
loader's long field form, and the content hash over converted values."""

from __future__ import annotations

import json
import pickle
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fakes import expr
from runner.config import load_pipeline
from runner.config.load import check_file
from runner.errors import ConfigError
from runner.load.contenthash import RecordHasher
from runner.model import MappingSpec
from runner.transform import types
from runner.transform.mapping import Failed, Mapped, Mapper
from runner.transform.types import ExactFloat, Rejected, parse_float
from runner.transform.values import HugeNumber

BIG = 2**63

# (type, value given, value written)
ACCEPTED: list[tuple[str, Any, Any]] = [
    ("string", "abc", "abc"),
    ("string", "", ""),
    ("string", 42, "42"),
    ("string", -1.5, "-1.5"),
    ("string", True, "true"),
    ("string", False, "false"),
    ("string", HugeNumber("9" * 5000), "9" * 5000),
    ("integer", 42, 42),
    ("integer", -(2**63), -(2**63)),
    ("integer", 2**63 - 1, 2**63 - 1),
    ("integer", 3.0, 3),
    ("integer", "42", 42),
    ("integer", " -7 ", -7),
    ("integer", "3.0", 3),
    ("integer", "1e3", 1000),
    ("number", 42, 42),
    ("number", 4.5, 4.5),
    ("number", "42", 42),
    ("number", "4.5", 4.5),
    ("number", "-1e-3", -0.001),
    ("decimal", 19.99, "19.99"),
    ("decimal", "19.99", "19.99"),
    ("decimal", "19.990", "19.99"),
    ("decimal", 100, "100"),
    ("decimal", "1E+2", "100"),
    ("decimal", 1e16, "10000000000000000"),
    ("decimal", "-0.00", "0"),
    ("decimal", "-0", "0"),
    ("decimal", -0.0, "0"),
    ("decimal", 100.0, "100"),
    ("decimal", "-12.5", "-12.5"),
    ("decimal", 1.5e-7, "0.00000015"),
    ("decimal", "0.1000000000000000055511151231257827", "0.1000000000000000055511151231257827"),
    ("boolean", True, True),
    ("boolean", False, False),
    ("boolean", "true", True),
    ("boolean", "FALSE", False),
    ("boolean", "True", True),
    ("boolean", 1, True),
    ("boolean", 0, False),
    ("timestamp", "2024-05-01T08:00:00Z", "2024-05-01T08:00:00Z"),
    ("timestamp", "2024-05-01T10:00:00+02:00", "2024-05-01T08:00:00Z"),
    ("timestamp", "2024-05-01T03:30:00-04:30", "2024-05-01T08:00:00Z"),
    ("timestamp", "2024-05-01T08:00:00.250+00:00", "2024-05-01T08:00:00.25Z"),
    ("timestamp", "2024-05-01T08:00:00.000Z", "2024-05-01T08:00:00Z"),
    ("timestamp", "2024-05-01T08:00:00.123456789Z", "2024-05-01T08:00:00.123456Z"),
    ("timestamp", "2024-05-01T08:00:00.5-01:00", "2024-05-01T09:00:00.5Z"),
    ("timestamp", "2024-05-01T08:00:00+0200", "2024-05-01T06:00:00Z"),
    ("timestamp", "2024-05-01 08:00:00Z", "2024-05-01T08:00:00Z"),
    ("timestamp", "2024-05-01", "2024-05-01T00:00:00Z"),
    ("timestamp", "Wed, 01 May 2024 10:00:00 +0200", "2024-05-01T08:00:00Z"),
    ("timestamp", "Wed, 01 May 2024 08:00:00 GMT", "2024-05-01T08:00:00Z"),
    ("timestamp", 1714550400, "2024-05-01T08:00:00Z"),
    ("timestamp", 1714550400.5, "2024-05-01T08:00:00.5Z"),
    ("timestamp", 0, "1970-01-01T00:00:00Z"),
    ("date", "2024-05-01", "2024-05-01"),
    ("date", "2024-05-01T23:30:00-02:00", "2024-05-02"),
    ("date", "Wed, 01 May 2024 23:00:00 GMT", "2024-05-01"),
    ("date", 1714550400, "2024-05-01"),
    ("json", {"a": [1, 2]}, {"a": [1, 2]}),
    ("json", [1, "x"], [1, "x"]),
    ("json", "abc", "abc"),
    ("json", 1.5, 1.5),
]

# (type, value, words the reason holds)
REJECTED: list[tuple[str, Any, str]] = [
    ("string", [1], "not a list"),
    ("string", {"a": 1}, "not an object"),
    ("string", float("nan"), "finite"),
    ("integer", "abc", "not a number"),
    ("integer", 1.5, "fraction"),
    ("integer", "1.5", "fraction"),
    ("integer", True, "boolean"),
    ("integer", BIG, "64-bit"),
    ("integer", str(BIG), "64-bit"),
    ("integer", "1_000", "not a number"),
    ("integer", HugeNumber("9" * 5000), "64-bit"),
    ("decimal", HugeNumber("9" * 5000), "exponent"),
    ("integer", "", "not a number"),
    ("integer", [1], "not a number"),
    ("integer", float("inf"), "finite"),
    ("number", "abc", "not a number"),
    ("number", "1e999", "finite"),
    ("number", "NaN", "not a number"),
    ("number", False, "boolean"),
    ("number", {"a": 1}, "not a number"),
    ("decimal", "abc", "not a number"),
    ("decimal", "NaN", "not a number"),
    ("decimal", "Infinity", "not a number"),
    ("decimal", True, "boolean"),
    ("decimal", "1e5000", "exponent"),
    ("decimal", [19.99], "not a number"),
    ("boolean", "yes", "true, false"),
    ("boolean", 2, "true, false"),
    ("boolean", "1", "true, false"),
    ("boolean", 1.0, "true, false"),
    ("boolean", [True], "true, false"),
    ("timestamp", "yesterday", "ISO-8601"),
    ("timestamp", "2024-02-30T08:00:00Z", "ISO-8601"),
    ("timestamp", "2024-05-01T25:00:00+00:00", "ISO-8601"),
    ("timestamp", "2024-13-01T00:00:00Z", "ISO-8601"),
    ("timestamp", "1714550400", "ISO-8601"),
    ("timestamp", True, "boolean"),
    ("timestamp", 1714550400000000, "out of range"),
    ("timestamp", [1], "not a list"),
    ("date", "2024-02-30", "ISO-8601"),
    ("date", "May 1st", "ISO-8601"),
    ("date", {"y": 2024}, "not an object"),
]


@pytest.mark.parametrize(("type_", "value", "written"), ACCEPTED, ids=lambda v: repr(v)[:30])
def test_each_type_converts_what_it_accepts(type_: str, value: Any, written: Any) -> None:
    """Every kind a type accepts converts to the value (and class) the spec says it writes."""
    got = types.CONVERTERS[type_](value)
    assert got == written and type(got) is type(written)


@pytest.mark.parametrize(("type_", "value", "reason"), REJECTED, ids=lambda v: repr(v)[:30])
def test_each_type_rejects_what_it_does_not_accept(type_: str, value: Any, reason: str) -> None:
    """Every kind a type refuses raises Rejected, saying why."""
    with pytest.raises(Rejected) as caught:
        types.CONVERTERS[type_](value)
    assert reason in str(caught.value)


def test_the_type_list_is_the_schema_enum() -> None:
    """The schema's enum of field types, the converters and the column types are the same eight."""
    from runner.config.load import load_schema
    from runner.targets.postgres import COLUMN_TYPES as PG
    from runner.targets.sqlite import COLUMN_TYPES as SQLITE

    field = load_schema()["properties"]["mapping"]["properties"]["fields"]["additionalProperties"]
    assert field["properties"]["type"]["enum"] == list(types.TYPES)
    assert set(types.CONVERTERS) == set(types.UNCHANGED) == set(SQLITE) == set(PG) == set(types.TYPES)


# --- exact decimals ------------------------------------------------------------------


def test_parse_float_keeps_plain_floats_and_the_literal_a_float_cannot_hold() -> None:
    """Short literals stay plain floats (untyped fields see no difference); a literal with more
    digits than a float holds becomes an ExactFloat that is still a float, with its text."""
    body = json.loads('[19.99, 1.50, 1e3, 12345678901234567890.123456789]', parse_float=parse_float)
    assert [type(v) for v in body[:3]] == [float, float, float] and body[:3] == [19.99, 1.5, 1000.0]
    exact = body[3]
    assert isinstance(exact, float) and isinstance(exact, ExactFloat)
    assert exact.text == "12345678901234567890.123456789" and exact == 12345678901234567890.123456789
    assert types.to_decimal(exact) == "12345678901234567890.123456789"
    assert types.to_string(exact) == "12345678901234567890.123456789"
    assert type(types.to_number(exact)) is float
    again = pickle.loads(pickle.dumps(exact))  # the writer process gets pages pickled
    assert isinstance(again, ExactFloat) and again.text == exact.text


def test_exponents_past_a_float_keep_their_literal() -> None:
    """1e400 is infinity as a float and 1e-320 a subnormal; as decimals they are exact."""
    big, tiny = json.loads("[1e400, 1.5e-320]", parse_float=parse_float)
    assert types.to_decimal(big) == "1" + "0" * 400
    assert types.to_decimal(tiny) == "0." + "0" * 319 + "15"


def test_without_parse_float_the_same_literal_loses_digits() -> None:
    """Why parse_float exists: a plain float of that literal is not the decimal that was sent."""
    plain = json.loads("12345678901234567890.123456789")
    assert types.to_decimal(plain) != "12345678901234567890.123456789"


def test_an_exact_float_is_a_float_to_jmespath_functions() -> None:
    """JMESPath's functions check types by class name: an ExactFloat passes as a number."""
    record = json.loads('{"a": 0.10000000000000000555111512312578271}', parse_float=parse_float)
    assert isinstance(record["a"], ExactFloat)
    assert expr("abs(a)").search(record) == pytest.approx(0.1)


# --- the mapping -----------------------------------------------------------------------


def spec(required: frozenset[str] = frozenset(), **typed: str) -> MappingSpec:
    names = ["plain", *typed]
    return MappingSpec(
        expr("to_string(id)"), tuple((n, expr(n)) for n in names), types=tuple(typed.items()), required=required,
    )


def test_the_mapping_converts_typed_fields_and_leaves_untyped_ones_alone() -> None:
    """Typed fields are converted; an untyped field keeps its JSON value, "42" stays a string."""
    mapped = Mapper(spec(amount="decimal", count="integer", at="timestamp", ok="boolean")).map(
        {"id": 1, "plain": "42", "amount": 19.99, "count": "42", "at": 1714550400, "ok": "true"}
    )
    assert mapped == Mapped(
        "1", {"plain": "42", "amount": "19.99", "count": 42, "at": "2024-05-01T08:00:00Z", "ok": True}
    )


def test_a_value_that_does_not_convert_fails_its_record_naming_field_type_and_value() -> None:
    """The error names the field, the type and the value, the value cut at 100 characters."""
    mapper = Mapper(spec(count="integer", name="string"))
    failed = mapper.map({"id": 7, "count": "abc"})
    assert isinstance(failed, Failed) and failed.external_id == "7"
    assert failed.error == "field 'count' (integer): cannot convert \"abc\": not a number"
    long = mapper.map({"id": 8, "name": ["x" * 300]})
    assert isinstance(long, Failed)
    assert long.error == "field 'name' (string): cannot convert [\"" + "x" * 98 + "...: a string takes a string, " \
        "a number or a boolean, not a list"


def test_null_is_null_for_every_type_unless_required() -> None:
    """A null or missing typed value stays null; with required: true it fails the record."""
    every = {t: t for t in types.TYPES}
    mapped = Mapper(spec(**every)).map({"id": 1})
    assert isinstance(mapped, Mapped) and set(mapped.record.values()) == {None}
    for type_ in types.TYPES:
        mapper = Mapper(spec(frozenset({type_}), **{type_: type_}))
        missing, null = mapper.map({"id": 1}), mapper.map({"id": 1, type_: None})
        assert isinstance(missing, Failed) and isinstance(null, Failed)
        assert null.error == f"field {type_!r} ({type_}) is required but is null or missing"
    untyped = MappingSpec(expr("id"), (("x", expr("x")),), required=frozenset({"x"}))
    assert isinstance(Mapper(untyped).map({"id": 1}), Failed)
    assert Mapper(untyped).map({"id": 1, "x": "1"}) == Mapped("1", {"x": "1"})


def test_a_record_that_is_no_object_is_converted_the_same_way() -> None:
    """The slow path (a record that is a list) converts and checks `required` too."""
    mapper = Mapper(MappingSpec(expr("[0]"), (("n", expr("[1]")),), types=(("n", "integer"),)))
    assert mapper.map(["a", "5"]) == Mapped("a", {"n": 5})
    failed = mapper.map(["a", "x"])
    assert isinstance(failed, Failed) and "field 'n' (integer)" in failed.error


# --- the content hash ---------------------------------------------------------------------


def test_the_hash_covers_converted_values_and_the_types() -> None:
    """ "42" and 42 for an integer field map to one hash; the types are in the seed, and a
    pipeline without types hashes as before."""
    mapper = Mapper(spec(count="integer"))
    typed = {"count": "integer"}
    first, second = (mapper.map({"id": 1, "count": v}) for v in ("42", 42))
    assert isinstance(first, Mapped) and isinstance(second, Mapped)
    hasher = RecordHasher(["plain", "count"], types=typed)
    assert hasher(first.record) == hasher(second.record)
    assert hasher(first.record) != RecordHasher(["plain", "count"])(first.record)
    assert RecordHasher(["a"], types={})({"a": 1}) == RecordHasher(["a"])({"a": 1})


# --- the file ---------------------------------------------------------------------------


FILE = """\
version: 1
name: typed
source: {url: "http://127.0.0.1:9/x"}
mapping:
  external_id: to_string(id)
  fields:
    title: title
    amount: {path: price.amount, type: decimal, required: true}
    created: {path: created_at, type: timestamp}
    note: {path: note}
target: {type: sqlite, path: out.db, table: t}
"""


def test_the_long_form_loads_into_the_mapping(tmp_path: Path) -> None:
    """`{path, type, required}` beside the short form: expressions, types and `required`."""
    path = tmp_path / "p.yaml"
    path.write_text(FILE)
    mapping = load_pipeline(path).mapping
    assert [(n, e.text) for n, e in mapping.fields] == [
        ("title", "title"), ("amount", "price.amount"), ("created", "created_at"), ("note", "note"),
    ]
    assert mapping.column_types == {"amount": "decimal", "created": "timestamp"}
    assert mapping.required == frozenset({"amount"})


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("type: decimal", "type: decimel", 8, "unknown field type 'decimel'; valid types: string, integer, number, "
         "decimal, boolean, timestamp, date, json; did you mean 'decimal'?"),
        ("{path: note}", "{type: integer}", 10, "missing required key 'path'"),
        ("{path: note}", "{path: note, typ: integer}", 10, "unknown key 'typ'"),
        ("path: price.amount", "path: 'price['", 8, "invalid JMESPath 'price['"),
        ("required: true", "required: 'yes'", 8, "expected true or false, got a string"),
        ("{path: note}", "[note]", 10, "expected a string or a mapping, got a list"),
    ],
)
def test_a_bad_long_form_is_reported_at_its_line(tmp_path: Path, old: str, new: str, line: int, message: str) -> None:
    """A bad type (with did-you-mean), a missing path, an unknown key or a bad expression: one
    error at the field's line."""
    path = tmp_path / "p.yaml"
    path.write_text(FILE.replace(old, new))
    problems = [p for p in check_file(path, env={}) if p.severity == "error"]
    assert len(problems) == 1, problems
    assert problems[0].line == line and message in problems[0].message
    with pytest.raises(ConfigError):
        load_pipeline(path)


def test_decimal_text_is_the_exact_value() -> None:
    """decimal_text never rounds: 40 digits in, 40 digits out."""
    digits = "1234567890123456789012345678901234567.891"
    assert types.decimal_text(Decimal(digits)) == digits
