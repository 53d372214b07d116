"""Running compiled JMESPath fast: the engine evaluates millions of expressions per run.

`jmespath`'s `ParsedResult.search` builds a new interpreter on every call,
which throws its method cache away; and most mapping expressions are plain
paths (`user.login`, `data[-1].id`, `to_string(id)`). So an expression is
turned once into a Python closure when its AST is made only of the node
types below, with exactly the interpreter's semantics; any other expression
runs on one shared interpreter with our functions. The tests compare both
paths against `jmespath.search` on the same data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jmespath.visitor import TreeInterpreter

from runner.transform import functions

if TYPE_CHECKING:  # the AST node's type: a TypedDict that exists only in types-jmespath
    from jmespath.visitor import _TreeNode as Node

Evaluate = Callable[[Any], Any]

_INTERPRETER = TreeInterpreter(functions.OPTIONS)


def evaluator(ast: Node) -> Evaluate:
    """A function of the data that returns what the expression with this AST returns."""
    fast = _compile(ast)
    if fast is not None:
        return fast
    return lambda data: _INTERPRETER.visit(ast, data)


def _compile(node: Node) -> Evaluate | None:
    compiler = _COMPILERS.get(node["type"])
    return None if compiler is None else compiler(node)


def _children(node: Node) -> list[Evaluate] | None:
    compiled = [_compile(child) for child in node["children"]]
    return None if any(c is None for c in compiled) else compiled  # type: ignore[return-value]


def _field(node: Node) -> Evaluate:
    name = node["value"]

    def field(data: Any) -> Any:
        try:
            return data.get(name)
        except AttributeError:
            return None

    return field


def _subexpression(node: Node) -> Evaluate | None:
    steps = _children(node)
    if steps is None:
        return None

    def subexpression(data: Any) -> Any:
        for step in steps:
            data = step(data)
        return data

    return subexpression


def _index_expression(node: Node) -> Evaluate | None:
    left, index = node["children"]
    base = _compile(left)
    if base is None or index["type"] != "index":
        return None
    position = index["value"]

    def index_expression(data: Any) -> Any:
        value = base(data)
        if not isinstance(value, list):
            return None
        try:
            return value[position]
        except IndexError:
            return None

    return index_expression


def _not_expression(node: Node) -> Evaluate | None:
    inner = _children(node)
    if inner is None:
        return None
    (child,) = inner

    def not_expression(data: Any) -> Any:
        return not truthy(child(data))

    return not_expression


def truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null, '', [] and {} are false; 0 is true."""
    return not (value is None or value is False or value in ("", [], {}))


def json_kind(value: Any) -> str:
    """A JSON value's kind as a message names it: 'an object', 'a list', 'a string', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _function(node: Node) -> Evaluate | None:
    args = _children(node)
    if node["value"] != "to_string" or args is None or len(args) != 1:
        return None
    (arg,) = args
    return lambda data: to_string(arg(data))


def to_string(value: Any) -> str:
    """JMESPath's to_string: a string as it is, anything else as compact JSON."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is int:  # what json.dumps gives, without its cost
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)


# a longer plain path runs on its compiled closure: Python's parser allows ~200 nested parentheses
MAX_INLINE_STEPS = 32


def inline_source(node: Node, var: str, temps: Callable[[], str]) -> str | None:
    """Python source of a plain path (`a.b.c`, `to_string(a.b)`) over the object `var`.

    None when the expression is anything else. `var` must hold a dict (the caller
    checks); each further step reads a dict or gives null, as JMESPath does.
    `temps()` names a fresh local for the walrus that keeps each step's value.
    """
    kind = node["type"]
    if kind == "field":
        return f"{var}.get({node['value']!r})"
    if kind == "subexpression":  # a.b.c parses as one node with the children a, b, c
        first, *rest = node["children"]
        if len(rest) > MAX_INLINE_STEPS:  # each step nests: the compiler has a depth limit
            return None
        source = inline_source(first, var, temps)
        if source is None or any(step["type"] != "field" for step in rest):
            return None
        for step in rest:
            temp = temps()
            source = f"({temp}.get({step['value']!r}) if type({temp} := {source}) is dict else None)"
        return source
    if kind == "function_expression" and node["value"] == "to_string" and len(node["children"]) == 1:
        inner = inline_source(node["children"][0], var, temps)
        return None if inner is None else f"_to_string({inner})"
    return None


def _projection(node: Node) -> Evaluate | None:
    parts = _children(node)
    if parts is None:
        return None
    base, right = parts

    def projection(data: Any) -> Any:
        values = base(data)
        if not isinstance(values, list):
            return None
        return [r for r in map(right, values) if r is not None]

    return projection


def _flatten(node: Node) -> Evaluate | None:
    inner = _children(node)
    if inner is None:
        return None
    (child,) = inner

    def flatten(data: Any) -> Any:
        values = child(data)
        if not isinstance(values, list):
            return None
        merged: list[Any] = []
        for value in values:
            if isinstance(value, list):
                merged.extend(value)
            else:
                merged.append(value)
        return merged

    return flatten


def _literal(node: Node) -> Evaluate:
    value = node["value"]
    return lambda data: value


def _current(node: Node) -> Evaluate:
    return lambda data: data


_COMPILERS: dict[str, Callable[[Node], Evaluate | None]] = {
    "field": _field,
    "subexpression": _subexpression,
    "index_expression": _index_expression,
    "not_expression": _not_expression,
    "function_expression": _function,
    "projection": _projection,
    "flatten": _flatten,
    "literal": _literal,
    "current": _current,
    "identity": _current,
}
