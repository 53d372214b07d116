"""Request templates: `{{ EXPR }}` in the source's params, headers and json.

`split` cuts a string into literal text and expression text when the file loads
(`load` compiles each expression and reports problems at the key's line);
`fill` evaluates them once per run, before the first request, on the run's
context (`watermark`), and returns the source with plain values in their place.
A value that is exactly one template takes the expression's value (null leaves
the key out); a template inside a longer string must give a string or a number.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from runner import model
from runner.errors import ConfigError, Problem

__all__ = ["BLOCKS", "Template", "TemplateSyntaxError", "fill", "split"]

OPEN, CLOSE = "{{", "}}"
BLOCKS = ("params", "headers", "json")  # the source keys whose values may hold templates

Where = tuple[str | int, ...]  # a value's place under `source`: ("params", "jql"), ("json", "filter", 0)
_OMIT = object()  # an exact template that gave null: the key is left out


class TemplateSyntaxError(ValueError):
    """A `{{` with no `}}` after it."""


def split(text: str) -> list[tuple[bool, str]]:
    """`text` as (is_expression, text) pieces in order; raise TemplateSyntaxError when a `{{` is not closed."""
    pieces: list[tuple[bool, str]] = []
    rest = text
    while (start := rest.find(OPEN)) >= 0:
        end = rest.find(CLOSE, start + len(OPEN))
        if end < 0:
            column = len(text) - len(rest) + start + 1
            raise TemplateSyntaxError(f"'{{{{' at character {column} has no closing '}}}}'")
        if start:
            pieces.append((False, rest[:start]))
        pieces.append((True, rest[start + len(OPEN):end].strip()))
        rest = rest[end + len(CLOSE):]
    if rest:
        pieces.append((False, rest))
    return pieces


@dataclass(frozen=True, slots=True)
class Template:
    """One string of the file with templates in it: literal text and compiled expressions, in order."""

    where: Where
    parts: tuple[str | model.Expr, ...]
    line: int = 1
    column: int = 1

    @property
    def key(self) -> str:
        return ".".join(("source", *(str(k) for k in self.where)))

    def uses(self, name: str) -> bool:
        """Whether any expression reads `name` from the context."""
        return any(_reads(p.parsed.parsed, name) for p in self.parts if isinstance(p, model.Expr))

    def render(self, context: Mapping[str, Any], *, file: str) -> Any:
        """The value for this key: an exact template's JSON value (`_OMIT` for null), else the text."""
        if len(self.parts) == 1 and isinstance(self.parts[0], model.Expr):
            value = self.parts[0].search(context)
            return _OMIT if value is None else value
        return "".join(p if isinstance(p, str) else self._inline(p, context, file) for p in self.parts)

    def _inline(self, expr: model.Expr, context: Mapping[str, Any], file: str) -> str:
        value = expr.search(context)
        if isinstance(value, str):
            return value
        if isinstance(value, int | float):
            return json.dumps(value)
        kind = "null" if value is None else ("a list" if isinstance(value, list) else "an object")
        message = (
            f"'{{{{ {expr.text} }}}}' is {kind}, and a template inside a longer string needs a string "
            "or a number: give incremental.initial_value or a default with ||"
        )
        raise ConfigError([Problem(file, self.line, self.column, self.key, message)], file=file)


def fill(source: model.Source, context: Mapping[str, Any], *, file: str = "<config>") -> model.Source:
    """`source` with every template filled from `context`; ConfigError when one cannot be written."""
    if not source.templates:
        return source
    params, headers = dict(source.params), dict(source.headers)
    body = copy.deepcopy(source.json)
    for template in source.templates:
        value = template.render(context, file=file)
        block, *rest = template.where
        if block == "json":
            body = _placed(body, rest, value)
            continue
        values = params if block == "params" else headers
        if value is _OMIT:
            values.pop(str(rest[0]), None)
        else:
            values[str(rest[0])] = _text(value)
    return replace(
        source, params=model.frozen_map(params), headers=model.frozen_map(headers), json=body, templates=()
    )


def _placed(body: Any, path: list[str | int], value: Any) -> Any:
    """`body` with `value` at `path` (a dict key left out for `_OMIT`; a list keeps its place as null)."""
    if not path:
        return None if value is _OMIT else value
    node = body
    for key in path[:-1]:
        node = node[key]
    last = path[-1]
    if value is _OMIT and isinstance(node, dict):
        node.pop(last, None)
    else:
        node[last] = None if value is _OMIT else value
    return body


def _text(value: Any) -> str:
    """A value as a query parameter or header writes it: strings as they are, the rest as JSON text."""
    return value if isinstance(value, str) else json.dumps(value)


def _reads(node: Any, name: str) -> bool:
    return any(n.get("type") == "field" and n.get("value") == name for n in _nodes(node))


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            yield current
            stack.extend(current.get("children", []))
