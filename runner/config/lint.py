"""Lint: JMESPath that parses but almost surely does not mean what it says.

`etl validate` reports these as warnings, each with its fix; they never fail a
file. Two shapes are caught:

- `!a.b` parses as `(!a).b`: `!a` is a boolean, a boolean has no field `b`, so
  the whole expression is always null ("did you mean `!(a.b)`?"). The same holds
  for a projection or filter applied to a negation (`!a[*].b`).
- a `stop_when` or `filter` that is a constant: a literal (`` `true` ``, `'x'`),
  or a bare `true` / `false` / `null`, which JMESPath reads as the field of that
  name (always null unless the record has one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# expressions whose value decides something each time: a constant there is a mistake
DECIDING = {("source", "pagination", "stop_when"): "stop_when", ("mapping", "filter"): "filter"}
_NAVIGATION = ("subexpression", "index_expression", "projection", "value_projection", "filter_projection")


def lint(path: tuple[Any, ...], text: str, ast: Mapping[str, Any]) -> list[str]:
    """The warnings for one compiled expression at `path` (its source `text`)."""
    found = []
    if _negation_navigated(ast):
        fix = f"!({text.strip()[1:].strip()})" if text.strip().startswith("!") else "!(...)"
        found.append(
            f"{text!r} parses as a negation followed by a field access, which is always null: "
            f"did you mean `{fix}`?"
        )
    key = DECIDING.get(tuple(path))
    if key is not None:
        constant = _constant(ast)
        if constant is not None:
            found.append(f"{key} {text!r} is a constant ({constant}): it decides the same way for every {_unit(key)}")
    return found


def _negation_navigated(ast: Mapping[str, Any]) -> bool:
    """Whether some navigation node starts from a `!x` (whose value is a boolean)."""
    stack: list[Mapping[str, Any]] = [ast]
    while stack:
        node = stack.pop()
        children = [c for c in node.get("children", []) if isinstance(c, dict)]
        if node.get("type") in _NAVIGATION and children and children[0].get("type") == "not_expression":
            return True
        stack.extend(children)
    return False


def _constant(ast: Mapping[str, Any]) -> str | None:
    kind = ast.get("type")
    if kind == "literal":
        return f"always {ast.get('value')!r}"
    if kind == "field" and ast.get("value") in ("true", "false", "null"):
        return f"the field named {ast['value']!r}, always null; write `{ast['value']}` in backquotes for the constant"
    return None  # (a navigated negation is always null too: the negation warning says so, with its fix)


def _unit(key: str) -> str:
    return "page" if key == "stop_when" else "record"
