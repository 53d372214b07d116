"""Record selection and field mapping: one source record -> a keyed output record.

The mapping's expressions were compiled at load (`config.py`); a `Mapper`
turns the whole mapping into one generated Python function, so a record is
mapped by one call instead of one interpreter walk per field: plain paths
(`a.b.c`, `to_string(id)`) become inline dict reads, any other expression
calls its compiled evaluator. A record either maps (`Mapped`), is filtered
out (`None`), or fails (`Failed`, kept with its raw record and the reason so
the run can go on).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jmespath.exceptions import JMESPathError

from runner.transform.expressions import evaluator, inline_source, to_string, truthy
from runner.transform.types import CONVERTERS, UNCHANGED, ConversionError
from runner.model import Expr, MappingSpec

# what makes a record fail instead of the run: an expression's type or value error
RECORD_ERRORS = (JMESPathError, ValueError, TypeError, ArithmeticError)


@dataclass(frozen=True, slots=True)
class Mapped:
    external_id: str
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Deleted:
    """A record that `mapping.deleted` marks: a deletion of its key, not a write."""

    external_id: str


@dataclass(frozen=True, slots=True)
class Failed:
    external_id: str | None
    raw: Any
    error: str


# (key value, record) or None when the filter skips; a deletion's record is None
_Outcome = tuple[Any, dict[str, Any] | None] | None


class Mapper:
    """One mapping, made into one function of the raw record; build once per run."""

    def __init__(self, spec: MappingSpec) -> None:
        self.spec = spec
        self._search_key = _key_searcher(spec.external_id)
        self._fast = _generate(spec)
        self._converters = _converters(spec)  # the slow path's; the fast one inlines them

    def map(self, raw: Any) -> Mapped | Deleted | Failed | None:
        """Map one source record; None means the filter skipped it."""
        try:
            outcome = self._fast(raw) if type(raw) is dict else self._slow(raw)
            if outcome is None:
                return None
            key_value, record = outcome
            key = key_string(key_value)
        except ConversionError as exc:  # its message names the field, the type and the value
            return Failed(self.key(raw), raw, str(exc))
        except RECORD_ERRORS as exc:
            return Failed(self.key(raw), raw, f"{type(exc).__name__}: {exc}")
        if key is None:
            return Failed(None, raw, f"external_id ({self.spec.external_id.text}) is null or empty")
        return Deleted(key) if record is None else Mapped(key, record)

    def key(self, raw: Any) -> str | None:
        """The record's key, or None when it has none (a filtered record still has one)."""
        try:
            return key_string(self._search_key(raw))
        except RECORD_ERRORS:
            return None

    def _slow(self, raw: Any) -> _Outcome:
        """The same outcome through each expression's own evaluator (a record that is no object)."""
        spec = self.spec
        if spec.filter is not None and not truthy(spec.filter.search(raw)):
            return None
        key = self._search_key(raw)
        if spec.deleted is not None and truthy(spec.deleted.search(raw)):
            return key, None
        record = {name: expr.search(raw) for name, expr in spec.fields}
        for name, convert in self._converters.items():
            record[name] = convert(record[name])
        return key, record


def key_string(value: Any) -> str | None:
    """The external_id made a string: strings as they are, other values as compact JSON."""
    if value is None or value == "":
        return None
    if type(value) is str:
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# --- the generated function ------------------------------------------------------------------


def _generate(spec: MappingSpec) -> Callable[[dict[str, Any]], _Outcome]:
    """Python source for the whole mapping over a dict record `r`, compiled once."""
    counter = itertools.count()
    names: dict[str, Any] = {"_to_string": to_string, "_truthy": truthy}

    def source(expr: Expr) -> str:
        inline = inline_source(expr.parsed.parsed, "r", lambda: f"_t{next(counter)}")
        if inline is not None:
            return inline
        name = f"_e{next(counter)}"
        names[name] = expr.search
        return f"{name}(r)"

    def key_source() -> str:
        argument = _to_string_argument(spec.external_id)
        if argument is None:
            return source(spec.external_id)
        inline = inline_source(argument, "r", lambda: f"_t{next(counter)}")
        if inline is None:
            inline = f"_e{next(counter)}(r)"
            names[inline[:-3]] = evaluator(argument)
        return f"_key_of({inline})"

    names["_key_of"] = _key_of
    lines = ["def _map(r):"]
    if spec.filter is not None:
        lines.append(f"    if not _truthy({source(spec.filter)}):\n        return None")
    if spec.deleted is not None:
        lines.append(f"    if _truthy({source(spec.deleted)}):\n        return {key_source()}, None")
    locals_ = {name: f"_f{i}" for i, (name, _) in enumerate(spec.fields)}
    for name, expr in spec.fields:
        lines.append(f"    {locals_[name]} = {source(expr)}")
        if line := _conversion(name, locals_[name], spec, names):  # typed or required fields only
            lines.append(line)
    record = ", ".join(f"{name!r}: {locals_[name]}" for name, _ in spec.fields)
    lines.append(f"    return {key_source()}, {{{record}}}")
    code = "\n".join(lines)
    # the source is made of repr()s of field names and of inline_source()'s output, never raw config text
    exec(compile(code, f"<mapping {spec.external_id.key or 'mapping'}>", "exec"), names)
    return names["_map"]  # type: ignore[no-any-return]


def _converters(spec: MappingSpec) -> dict[str, Callable[[Any], Any]]:
    """One function per typed or required field: its value (null included) converted, or
    ConversionError naming the field, the type and the value."""
    converters: dict[str, Callable[[Any], Any]] = {}
    types = spec.column_types
    for name in spec.names:
        if name in types or name in spec.required:
            converters[name] = _field_converter(name, types.get(name), name in spec.required)
    return converters


def _field_converter(name: str, type_: str | None, required: bool) -> Callable[[Any], Any]:
    convert = CONVERTERS[type_] if type_ is not None else None
    shown_type = type_ or "untyped"

    def converted(value: Any) -> Any:
        if value is None:
            if required:
                raise ConversionError(name, shown_type, None, "required")
            return None
        if convert is None:
            return value
        try:
            return convert(value)
        except ValueError as exc:
            raise ConversionError(name, shown_type, value, str(exc)) from None

    return converted


def _conversion(name: str, local: str, spec: MappingSpec, names: dict[str, Any]) -> str:
    """The generated lines that convert one field's local in place: the converter runs only
    for a value not already of the type's own class (and not null), inline, with no call
    between; a failure raises ConversionError naming the field, the type and the value."""
    index = local[2:]
    type_, required = spec.column_types.get(name), name in spec.required
    names[f"_n{index}"] = (name, type_ or "untyped")
    names["_ConversionError"] = ConversionError
    lines = []
    if required:
        lines.append(f"    if {local} is None:\n        raise _ConversionError(*_n{index}, None, 'required')")
    if type_ is not None and type_ != "json":  # json (and untyped) values stay as they are
        names[f"_c{index}"] = CONVERTERS[type_]
        tests = [f"{local} is not None"]
        unchanged = UNCHANGED[type_]
        if unchanged is not None:
            names[f"_k{index}"] = unchanged
            tests.insert(0, f"type({local}) is not _k{index}")
        lines.append(
            f"    if {' and '.join(tests)}:\n        try:\n            {local} = _c{index}({local})\n"
            f"        except ValueError as _x:\n"
            f"            raise _ConversionError(*_n{index}, {local}, str(_x)) from None"
        )
    return "\n".join(lines)


def _key_of(value: Any) -> str | None:
    """`to_string` for a key: a null stays null (JMESPath's gives "null"), so the record fails."""
    return None if value is None else to_string(value)


def _to_string_argument(expr: Expr) -> Any:
    """The argument's AST when the expression is `to_string(X)`, else None."""
    node = expr.parsed.parsed
    if node.get("type") == "function_expression" and node.get("value") == "to_string":
        children = node.get("children") or []
        return children[0] if len(children) == 1 else None
    return None


def _key_searcher(expr: Expr) -> Callable[[Any], Any]:
    """The external_id's value; `to_string(id)` of a record without `id` is null, not "null":
    every record without a key would otherwise share the key "null"."""
    argument = _to_string_argument(expr)
    if argument is None:
        return expr.search
    inner = evaluator(argument)
    return lambda raw: _key_of(inner(raw))
