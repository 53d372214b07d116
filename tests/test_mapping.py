"""Tests of runner.transform.mapping and the JMESPath functions of runner.transform.functions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jmespath
import pytest

from fakes import expr
from runner.model import MappingSpec
from runner.transform import functions
from runner.transform.mapping import Failed, Mapped, Mapper, key_string


def map_record(spec: MappingSpec, raw: Any) -> Mapped | Failed | None:
    """Map one record with a Mapper built for `spec`."""
    return Mapper(spec).map(raw)


def spec(external_id: str = "to_string(id)", filter: str | None = None, **fields: str) -> MappingSpec:
    return MappingSpec(
        external_id=expr(external_id),
        fields=tuple((name, expr(text)) for name, text in fields.items()),
        filter=expr(filter) if filter else None,
    )


def test_nested_paths_and_lists_map_to_their_json_values() -> None:
    """Nested keys, list projections and objects come through with their JSON types."""
    raw = {"id": 7, "user": {"login": "ada"}, "labels": [{"name": "bug"}, {"name": "ui"}], "meta": {"a": 1}}
    out = map_record(spec(author="user.login", labels="labels[].name", meta="meta", missing="nope"), raw)
    assert isinstance(out, Mapped)
    assert out.external_id == "7"
    assert out.record == {"author": "ada", "labels": ["bug", "ui"], "meta": {"a": 1}, "missing": None}


def test_filter_falsy_skips_and_zero_is_truthy() -> None:
    """A falsy filter result skips the record; 0 is truthy in JMESPath and keeps it."""
    s = spec(filter="keep", n="n")
    assert map_record(s, {"id": 1, "keep": False}) is None
    assert map_record(s, {"id": 1, "keep": []}) is None
    assert map_record(s, {"id": 1}) is None
    assert isinstance(map_record(s, {"id": 1, "keep": 0}), Mapped)


@pytest.mark.parametrize("raw", [{"id": None}, {}, {"id": ""}])
def test_null_key_fails_with_reason(raw: dict[str, Any]) -> None:
    """A record whose external_id is null or empty fails and says which expression."""
    out = map_record(spec(external_id="id", x="x"), raw)
    assert isinstance(out, Failed)
    assert out.external_id is None and "external_id (id) is null" in out.error
    assert out.raw == raw


def test_runtime_expression_error_fails_the_record_only() -> None:
    """A type error inside an expression fails that record, keeping its key when readable."""
    out = map_record(spec(n="abs(name)"), {"id": 3, "name": "x"})
    assert isinstance(out, Failed)
    assert out.external_id == "3"
    assert "JMESPathTypeError" in out.error or "invalid type" in out.error


@pytest.mark.parametrize(
    "value,expected",
    [
        ("abc", "abc"), (12, "12"), (12.0, "12"), (1.5, "1.5"), (True, "true"), ([1, 2], "[1,2]"),
        (None, None), ("", None),
    ],
)
def test_key_string(value: Any, expected: str | None) -> None:
    """The external_id is made a string: strings kept, others as compact JSON."""
    assert key_string(value) == expected


@pytest.mark.parametrize(
    "expression,data,expected",
    [
        ("lower(s)", {"s": "AbC"}, "abc"),
        ("upper(s)", {"s": "AbC"}, "ABC"),
        ("trim(s)", {"s": "  x \n"}, "x"),
        ("split(s, ',')", {"s": "a,b,,c"}, ["a", "b", "", "c"]),
        ("replace(s, '-', '')", {"s": "0791-9"}, "07919"),
        ("lower(missing)", {}, None),
        ("to_iso(t)", {"t": "2024-05-01T10:00:00+02:00"}, "2024-05-01T08:00:00Z"),
        ("to_iso(t)", {"t": 0}, "1970-01-01T00:00:00Z"),
        ("format_date(t, '%Y/%m/%d')", {"t": "2024-05-01T23:30:00-05:00"}, "2024/05/02"),
        ("to_epoch(t)", {"t": "1970-01-02T00:00:00Z"}, 86400),
        ("from_epoch(n)", {"n": 86400}, "1970-01-02T00:00:00Z"),
        ("coalesce(a, b, 'x')", {"b": 2}, 2),
        ("coalesce(a, b)", {}, None),
    ],
)
def test_added_functions(expression: str, data: Any, expected: Any) -> None:
    """Each function of our own gives the documented result, null in -> null out."""
    assert expr(expression).search(data) == expected


def test_now_is_an_iso_instant_in_utc() -> None:
    """now() returns the current time as ISO-8601 in UTC."""
    value = expr("now()").search({})
    assert value.endswith("Z") and value[:2] == "20"


def test_bad_date_fails_the_record() -> None:
    """A value that is not a date makes to_iso fail the record, not the run."""
    out = map_record(spec(t="to_iso(t)"), {"id": 1, "t": "yesterday"})
    assert isinstance(out, Failed) and "not an ISO-8601" in out.error


# --- the generated mapping function ---------------------------------------------------------

RECORDS: list[Any] = [
    {"id": 1, "user": {"login": "ada", "id": 7}, "tags": ["a", "b"], "n": 0, "f": 1.5, "b": False},
    {"id": "x-2", "user": {"login": None}, "tags": [], "n": None},
    {"id": 3, "user": "not an object", "tags": "not a list"},
    {"id": 4, "user": ["a", "list"], "deep": {"a": {"b": {"c": [1, {"d": 2}]}}}},
    {"id": 5.0, "user": {}, "deep": {"a": None}},
    {"id": True, "deep": {"a": {"b": "leaf"}}},
    {},
]
PATHS = {
    "plain": "user", "nested": "user.login", "deep": "deep.a.b.c", "missing": "nope.nothing",
    "string": "to_string(user.id)", "string_of_object": "to_string(user)", "index": "tags[0]",
    "projection": "deep.a.b.c[].d", "function": "length(tags || `[]`)", "literal": "`\"k\"`",
}


def test_the_generated_function_maps_as_jmespath_does() -> None:
    """Every path the generator inlines, and the ones it hands to the evaluator, give what
    jmespath.search gives on records whose intermediates are objects, lists, strings or null."""
    mapping = spec(external_id="to_string(id)", **PATHS)
    for raw in RECORDS:
        out = map_record(mapping, raw)
        expected = {name: jmespath.search(text, raw, options=functions.OPTIONS) for name, text in PATHS.items()}
        key = jmespath.search("to_string(id)", raw, options=functions.OPTIONS)
        if raw.get("id") is None:  # to_string(null) is "null" in JMESPath; a key it is not
            assert isinstance(out, Failed) and out.external_id is None, (raw, out)
            continue
        assert isinstance(out, Mapped), (raw, out)
        assert out.record == expected and list(out.record) == list(PATHS), raw
        assert out.external_id == key_string(key), raw


def test_a_record_that_is_not_an_object_maps_through_the_evaluators() -> None:
    """A records list of scalars or lists: `@` and paths give what jmespath gives (paths null)."""
    mapping = spec(external_id="to_string(@)", whole="@", name="name", first="[0]")
    for raw in ("abc", 12, [1, 2], ["x"]):
        out = map_record(mapping, raw)
        assert isinstance(out, Mapped)
        fields = (("whole", "@"), ("name", "name"), ("first", "[0]"))
        expected = {name: jmespath.search(text, raw) for name, text in fields}
        assert out.record == expected


def test_field_names_that_are_not_identifiers_are_kept_as_written() -> None:
    """Output names with spaces, quotes or Python keywords are dict keys, never code."""
    names = {"with space": "id", "quote'd\"": "id", "class": "id", "_f0": "user.login"}
    mapping = MappingSpec(expr("to_string(id)"), tuple((n, expr(t)) for n, t in names.items()))
    out = map_record(mapping, RECORDS[0])
    assert isinstance(out, Mapped)
    assert out.record == {"with space": 1, "quote'd\"": 1, "class": 1, "_f0": "ada"}


EXAMPLES = sorted(Path(__file__).parent.parent.joinpath("pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_pipeline_mapping_compiles_and_maps(path: Path) -> None:
    """Each shipped pipeline's mapping becomes a generated function that maps a sparse record."""
    from runner.config import load_pipeline
    from runner.transform.mapping import Mapper

    names = re.findall(r"\$\{(\w+)", path.read_text())
    pipeline = load_pipeline(path, env={name: "placeholder" for name in names})
    mapper = Mapper(pipeline.mapping)
    out = mapper.map({"id": 1, "key": "K-1", "fields": {"status": {}}, "user": None})
    assert out is None or isinstance(out, (Mapped, Failed))


def test_a_very_long_plain_path_maps_too() -> None:
    """A 150-step path is too deep to inline as Python; it runs on its evaluator instead."""
    steps = [f"k{i}" for i in range(150)]
    raw: dict[str, Any] = {"id": 1}
    node = raw
    for step in steps[:-1]:
        node[step] = {}
        node = node[step]
    node[steps[-1]] = "deep"
    out = map_record(spec(leaf=".".join(steps), short="k0.k1.k2"), raw)
    assert isinstance(out, Mapped) and out.record == {"leaf": "deep", "short": raw["k0"]["k1"]["k2"]}


@pytest.mark.parametrize("raw", [{"name": "a"}, {"id": None, "name": "b"}, ["not", "an", "object"]])
@pytest.mark.parametrize("key", ["to_string(id)", "to_string(meta.id)"])
def test_to_string_of_a_missing_key_is_null_not_the_text_null(key: str, raw: Any) -> None:
    """JMESPath's to_string(null) is "null": without this, every record lacking its key would
    be written under the one key "null", each overwriting the last."""
    outcome = Mapper(MappingSpec(external_id=expr(key), fields=(("name", expr("name")),))).map(raw)
    assert isinstance(outcome, Failed) and outcome.external_id is None
    assert "is null or empty" in outcome.error
    assert Mapper(MappingSpec(external_id=expr(key), fields=())).map({"id": 7, "meta": {"id": 7}}) == Mapped("7", {})
