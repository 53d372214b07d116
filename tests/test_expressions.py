"""The fast evaluator gives exactly what jmespath's own interpreter gives."""

from __future__ import annotations

from typing import Any

import jmespath
import pytest

from runner.transform import expressions

from runner.transform import functions

EXPRESSIONS = [
    "a", "a.b.c", "a.b", "@", "`1`", "`\"x\"`", "a[0]", "a[-1]", "a[5]", "data[-1].id",
    "!a", "!a.b", "to_string(a)", "to_string(a.b)", "a[].b", "a[*].b", "a[]", "a[].b[]",
    "!has_more", "to_string(@)",
    # not compiled: run on the shared interpreter
    "a || b", "a && b", "length(a)", "a[?b > `1`].b", "lower(s)", "coalesce(a, b)", "{x: a}", "[a, b]",
    "a == b", "a[1:2]", "not_null(a, b)",
]

DATA: list[Any] = [
    None, 0, 1.5, "text", True, False, [], {}, [1, 2, 3], [[1], [2, [3]]],
    {"a": None}, {"a": 0}, {"a": ""}, {"a": []}, {"a": {}}, {"a": False}, {"a": 1},
    {"a": {"b": {"c": "deep"}}}, {"a": {"b": [1, 2]}}, {"a": [{"b": 1}, {"b": None}, {"c": 2}, 3, {"b": [4, 5]}]},
    {"a": [[{"b": 1}], {"b": 2}]}, {"a": "07919", "b": 7919},
    {"data": [{"id": "cus_1"}, {"id": "cus_2"}], "has_more": True},
    {"data": [], "has_more": False}, {"a": 2.0, "b": 2}, {"s": "MiXeD"}, {"a": {"b": "x"}, "b": {"c": 1}},
]


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_fast_and_interpreted_results_agree(expression: str) -> None:
    """For every sample document, the evaluator returns what jmespath.search returns."""
    parsed = jmespath.compile(expression)
    evaluate = expressions.evaluator(parsed.parsed)
    for data in DATA:
        expected = outcome(lambda data=data: jmespath.search(expression, data, options=functions.OPTIONS))
        actual = outcome(lambda data=data: evaluate(data))
        assert actual == expected and type(actual[1]) is type(expected[1]), (expression, data)


def outcome(call: Any) -> tuple[str, Any]:
    """The value returned, or the class of the error raised."""
    try:
        return "value", call()
    except Exception as exc:  # noqa: BLE001 - both sides must fail the same way
        return "error", type(exc).__name__


@pytest.mark.parametrize("expression", ["a.b.c", "to_string(id)", "data[-1].id", "labels[].name", "!has_more"])
def test_plain_paths_are_compiled(expression: str) -> None:
    """The expressions mappings use most run as closures, not on the interpreter."""
    assert expressions._compile(jmespath.compile(expression).parsed) is not None


@pytest.mark.parametrize("expression", ["a || b", "length(a)", "lower(a)", "a[?b]"])
def test_other_expressions_fall_back_to_the_interpreter(expression: str) -> None:
    """Anything the compiler does not know runs on the shared interpreter."""
    assert expressions._compile(jmespath.compile(expression).parsed) is None
