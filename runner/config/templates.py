"""Request templates: `{{ EXPR }}` in the source's url, path, params, headers and json.

`split` cuts a string into literal text and expression text when the file loads
(`load` compiles each expression and reports problems at the key's line);
`fill` evaluates them on a context (`watermark` once per run; `_parent` once per
parent of a child resource: any names work) and returns the source with plain
values in their place. A value that is exactly one template takes the
expression's value (null leaves the key out); a template inside a longer string,
or anywhere in the URL, must give a string or a number. A value written into the
URL is percent-encoded as one segment (`/` becomes %2F): it is data, never a path.

A value that cannot be written is the file's fault when the expression reads only
`watermark` (ConfigError, exit 2, before any request); when it reads anything
else (`_parent`), it is that context's fault: TemplateValueError, so that a caller
fails only that parent's children.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

from runner import model
from runner.errors import ConfigError, EtlError, Problem

__all__ = ["BLOCKS", "Template", "TemplateSyntaxError", "TemplateValueError", "fill", "split"]

OPEN, CLOSE = "{{", "}}"
BLOCKS = ("url", "path", "params", "headers", "json")  # the source keys whose values may hold templates
URL_BLOCKS = ("url", "path")  # their values are written into the URL, percent-encoded
PLACES = "url, path, params, headers and json"  # BLOCKS as a message says them
FILE_NAMES = frozenset({"watermark"})  # what the file itself decides: a bad value there is a ConfigError

Where = tuple[str | int, ...]  # a value's place under `source`: ("params", "jql"), ("json", "filter", 0)
_OMIT = object()  # an exact template that gave null: the key is left out


class TemplateSyntaxError(ValueError):
    """A `{{` with no `}}` after it."""


class TemplateValueError(EtlError):
    """A template on a run-time context (`_parent`) gave a value its place cannot hold.

    Not the file's fault but one context's: a caller fails only the requests of that
    context (one parent's children). `key` is the dotted key, `template` the `{{ ... }}` text.
    """

    def __init__(self, message: str, *, key: str, template: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.template = key, template


def split(text: str) -> list[tuple[bool, str]]:
    """`text` as (is_expression, text) pieces in order; raise TemplateSyntaxError when a `{{` is not closed.

    A `}}` inside a quoted string of the expression (`'...'`, `"..."`, a `` `...` `` literal)
    or closing one of its own braces (`{{ {a: b}}}`) does not end it.
    """
    pieces: list[tuple[bool, str]] = []
    at = 0
    while (start := text.find(OPEN, at)) >= 0:
        end = _closing(text, start + len(OPEN))
        if end < 0:
            raise TemplateSyntaxError(f"'{{{{' at character {start + 1} has no closing '}}}}'")
        if start > at:
            pieces.append((False, text[at:start]))
        pieces.append((True, text[start + len(OPEN):end].strip()))
        at = end + len(CLOSE)
    if at < len(text):
        pieces.append((False, text[at:]))
    return pieces


def _closing(text: str, at: int) -> int:
    """Where the `}}` that ends the expression starting at `at` is: outside quotes, at brace depth 0; -1 if none."""
    quote_char, escaped, depth = "", False, 0
    for i in range(at, len(text)):
        char = text[i]
        if escaped:
            escaped = False
        elif quote_char:
            escaped = char == "\\"
            quote_char = "" if char == quote_char else quote_char
        elif char in "'\"`":
            quote_char = char
        elif char == "{":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
        elif text.startswith(CLOSE, i):
            return i
    return -1


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
        """Whether any expression reads `name` from the context (`@` reads every name)."""
        return any(name in names or "@" in names for names in map(_roots, self._expressions()))

    def render(self, context: Mapping[str, Any], *, file: str) -> Any:
        """The value for this key: an exact template's JSON value (`_OMIT` for null), else the text;
        in the URL, always text with each value percent-encoded as one segment."""
        if self.where[0] in URL_BLOCKS:
            return "".join(p if isinstance(p, str) else quote(self._inline(p, context, file), safe="")
                           for p in self.parts)
        if len(self.parts) == 1 and isinstance(self.parts[0], model.Expr):
            value = self.parts[0].search(context)
            return _OMIT if value is None else value
        return "".join(p if isinstance(p, str) else self._inline(p, context, file) for p in self.parts)

    def _expressions(self) -> Iterator[Any]:
        return (p.parsed.parsed for p in self.parts if isinstance(p, model.Expr))

    def _inline(self, expr: model.Expr, context: Mapping[str, Any], file: str) -> str:
        value = expr.search(context)
        if isinstance(value, str):
            return value
        if isinstance(value, int | float):
            return json.dumps(value)
        kind = "null" if value is None else ("a list" if isinstance(value, list) else "an object")
        place = "a value in the URL" if self.where[0] in URL_BLOCKS else "a template inside a longer string"
        template = f"{{{{ {expr.text} }}}}"
        message = f"'{template}' is {kind}, and {place} needs a string or a number"
        if not _roots(expr.parsed.parsed) <= FILE_NAMES:
            raise TemplateValueError(message, key=self.key, template=template)
        message += ": give incremental.initial_value or a default with ||"
        raise ConfigError([Problem(file, self.line, self.column, self.key, message)], file=file)


def fill(source: model.Source, context: Mapping[str, Any], *, file: str = "<config>") -> model.Source:
    """`source` with every template filled from `context` (any names: `watermark`, `_parent`).

    A value that cannot be written raises ConfigError when the expression reads only what
    the file decides (`watermark`), TemplateValueError when it reads another name.
    """
    if not source.templates:
        return source
    url, params, headers = source.url, dict(source.params), dict(source.headers)
    body = copy.deepcopy(source.json)
    for template in source.templates:
        value = template.render(context, file=file)
        block, *rest = template.where
        if block in URL_BLOCKS:  # a `path` template holds the base_url before it: the whole URL
            url = value
            continue
        if block == "json":
            body = _placed(body, rest, value)
            continue
        values = params if block == "params" else headers
        if value is _OMIT:
            values.pop(str(rest[0]), None)
        else:
            values[str(rest[0])] = _text(value)
    return replace(
        source, url=url, params=model.frozen_map(params), headers=model.frozen_map(headers), json=body,
        templates=(),
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


# JMESPath nodes whose later children are evaluated on the first one's result, not on the context
_LEFT_ONLY = frozenset({"subexpression", "index_expression", "projection", "value_projection",
                        "filter_projection", "pipe"})


def _roots(node: Any) -> set[str]:
    """The context names an expression reads: `a` of `a.b[0]`, `a` and `b` of `f(a, b)`;
    '@' when it reads the context whole (`@`, `*`). An `&expr` reads elements, not the context."""
    if not isinstance(node, dict):
        return set()
    kind = node.get("type")
    if kind == "field":
        return {str(node["value"])}
    if kind in ("current", "identity"):
        return {"@"}
    if kind in ("expref", "literal"):
        return set()
    children = node.get("children", [])
    names: set[str] = set()
    for child in children[:1] if kind in _LEFT_ONLY else children:
        names |= _roots(child)
    return names
