"""The pipeline JSON Schema: loading it, and turning its errors into readable findings.

A jsonschema error's `str()` dumps the schema; here each error becomes one
short message about the key the user wrote: an unknown key with the close
match, a bad value with the valid ones, a missing key at its parent. Typed
blocks (`auth`, `pagination`, `target`) are an enum of types plus one
`if`/`then` per type in the schema, so only the written type's rules apply
and no `oneOf` wall of errors can arise. A `not` rule (keys that exclude
each other, a reserved name) carries its message in its `description`.

`pattern` is matched as JSON Schema means it, in ECMA-262's dialect, where
`$` is the end of the text: Python's `$` also matches before a final
newline, which let `name: "bad\n"` pass `^[a-z0-9][a-z0-9_-]*$`.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from runner.config.yamlpos import KeyPath, dotted

SCHEMA_FILE = "pipeline.schema.json"
SECRET_KEYS = frozenset({"token", "password", "value", "client_secret", "refresh_token", "private_key", "dsn"})
PATTERN_HINTS = {
    "^[a-z0-9][a-z0-9_-]*$": "use lowercase letters, digits, '_' and '-', starting with a letter or digit",
    "^[A-Za-z_][A-Za-z0-9_]*$": "use letters, digits and '_', not starting with a digit",
    "^https?://": "expected an absolute http(s) URL",
}

Finding = tuple[KeyPath, str, bool]  # (key path, message, point at the key rather than the value)


def load_schema() -> dict[str, Any]:
    """The pipeline JSON Schema shipped inside the package."""
    text = resources.files("runner.config").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def schema_findings(data: Any, *, skip: Container[KeyPath] = ()) -> Iterator[Finding]:
    """Every schema error of `data` as findings; errors at paths in `skip` are left out."""
    for error in _validator().iter_errors(data):
        if tuple(error.absolute_path) not in skip:
            yield from _translate(error)


def suggest(word: str, choices: list[str], listing: str) -> str:
    """'; did you mean 'x'?' for a close match, else '; {listing}: a, b, c' (nothing if no listing)."""
    close = difflib.get_close_matches(word, choices, n=1)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; {listing}: {', '.join(choices)}" if listing else ""


@functools.lru_cache(maxsize=1)
def _validator() -> Validator:
    return _EcmaValidator(load_schema())


def _ecma_pattern(
    validator: Validator, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """The `pattern` keyword with `$` read as ECMA-262 reads it (jsonschema uses Python's `re.search`)."""
    if validator.is_type(instance, "string") and not _ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    """`pattern` with each `$` outside a character class written `\\Z`: the end of the text only."""
    out: list[str] = []
    escaped = in_class = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = r"\Z"
        out.append(char)
    return re.compile("".join(out))


_EcmaValidator: type[Validator] = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


@dataclass(frozen=True, slots=True)
class _Violation:
    """The parts of a jsonschema error that the messages are made of, under jsonschema's names.

    `iter_errors` sets them all on each error it yields; jsonschema's types allow each
    to be unset (an error made by hand), so they are taken once here, typed."""

    validator: str  # the keyword broken: "required", "enum", ... ("None" for a `false` schema)
    validator_value: Any  # that keyword's value in the schema
    instance: Any  # the value written in the document
    schema: Mapping[str, Any]  # the schema object holding the keyword (empty for a `false` schema)

    @classmethod
    def of(cls, error: ValidationError) -> _Violation:
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        return cls(str(error.validator), error.validator_value, error.instance, schema)


def _translate(error: ValidationError) -> list[Finding]:
    path = tuple(error.absolute_path)
    violation = _Violation.of(error)
    if "propertyNames" in error.absolute_schema_path:
        return [((*path, violation.instance), _property_name_message(violation), True)]
    return _HANDLERS.get(violation.validator, _generic)(violation, path)


def _unknown_keys(error: _Violation, path: KeyPath) -> list[Finding]:
    allowed = list(error.schema.get("properties", {}))
    extra = [k for k in error.instance if k not in allowed]
    return [
        ((*path, k), f"unknown key {k!r} {_in(path)}{suggest(k, allowed, 'valid keys')}", True) for k in extra
    ]


def _missing_keys(error: _Violation, path: KeyPath) -> list[Finding]:
    missing = [k for k in error.validator_value if k not in error.instance]
    typos = _misspelled(error, missing)
    findings: list[Finding] = [
        ((*path, typo), f"unknown key {typo!r} {_in(path)}; did you mean {meant!r}?", True)
        for meant, typo in typos.items()
    ]
    missing = [k for k in missing if k not in typos]
    if not missing:
        return findings
    noun = "keys" if len(missing) > 1 else "key"
    message = f"missing required {noun} {_and(missing)} {_in(path)}{_for_type(error)}"
    type_enum = error.schema.get("properties", {}).get("type", {}).get("enum")
    if "type" in missing and type_enum:
        message += f"; valid types: {', '.join(type_enum)}"
    elif "properties" not in error.schema and "description" in error.schema:
        message += f"; {error.schema['description']}"  # a bare rule's hint, e.g. "or use 'upsert'"
    return [*findings, (path, message, True)]


def _misspelled(error: _Violation, missing: list[str]) -> dict[str, str]:
    """For each missing key, a key of the instance that is no known key and looks like it
    (`typ` for `type`): the misspelling is reported at its own line, not the block's."""
    known = set(error.schema.get("properties", {}))
    strangers = [k for k in error.instance if isinstance(k, str) and k not in known and k not in missing]
    found: dict[str, str] = {}
    for key in missing:
        close = difflib.get_close_matches(key, [k for k in strangers if k not in found.values()], n=1, cutoff=0.75)
        if close:
            found[key] = close[0]
    return found


def _bad_enum(error: _Violation, path: KeyPath) -> list[Finding]:
    allowed = [str(v) for v in error.validator_value]
    if path[-1:] == ("type",) and len(path) > 1:
        what = "field" if "fields" in path[:-2] else path[-2]  # mapping.fields.NAME.type: a field's type
        text = f"unknown {what} type {_show(path, error.instance)}; valid types: {', '.join(allowed)}"
        return [(path, text + suggest(str(error.instance), allowed, ""), False)]
    message = f"invalid value {_show(path, error.instance)}; expected one of: {', '.join(allowed)}"
    return [(path, message, False)]


def _bad_type(error: _Violation, path: KeyPath) -> list[Finding]:
    wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    names = [_TYPE_NAMES[t] for t in wanted]
    expected = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return [(path, f"expected {expected}, got {_kind(error.instance)}", False)]


def _bad_pattern(error: _Violation, path: KeyPath) -> list[Finding]:
    hint = PATTERN_HINTS.get(error.validator_value, f"expected a match of {error.validator_value}")
    return [(path, f"invalid value {_show(path, error.instance)}: {hint}", False)]


def _exclusive(error: _Violation, path: KeyPath) -> list[Finding]:
    """A `not` rule forbids a combination of keys; its description says which, in the user's words."""
    rule = error.validator_value
    message = rule.get("description") if isinstance(rule, dict) else None
    return [(path, str(message or "this combination of keys is not allowed"), True)]


def _dependent(error: _Violation, path: KeyPath) -> list[Finding]:
    return [
        (path, f"'{key}' needs '{need}' {_in(path)}", True)
        for key, needs in error.validator_value.items()
        if key in error.instance
        for need in needs
        if need not in error.instance
    ]


def _bound(text: str) -> Callable[[_Violation, KeyPath], list[Finding]]:
    def handler(error: _Violation, path: KeyPath) -> list[Finding]:
        return [(path, f"{text.format(error.validator_value)}, got {_show(path, error.instance)}", False)]

    return handler


def _generic(error: _Violation, path: KeyPath) -> list[Finding]:
    return [(path, f"invalid value: the schema rule '{error.validator}' is not met", False)]


_HANDLERS: dict[str, Callable[[_Violation, KeyPath], list[Finding]]] = {
    "additionalProperties": _unknown_keys,
    "required": _missing_keys,
    "enum": _bad_enum,
    "type": _bad_type,
    "pattern": _bad_pattern,
    "not": _exclusive,
    "dependentRequired": _dependent,
    "const": _bound("expected {!r}"),
    "minimum": _bound("must be at least {}"),
    "exclusiveMinimum": _bound("must be greater than {}"),
    "maximum": _bound("must be at most {}"),
    "exclusiveMaximum": _bound("must be less than {}"),
    "minLength": lambda e, p: [(p, "must not be empty", False)],
    "uniqueItems": lambda e, p: [(p, "the list holds the same item twice", False)],
}
_KIND_NAMES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
}
_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def _property_name_message(error: _Violation) -> str:
    if error.validator == "not":  # a reserved name: the rule's description says why
        hint = str(error.validator_value.get("description", "this name is reserved"))
    else:
        hint = PATTERN_HINTS.get(error.validator_value, f"expected a match of {error.validator_value}")
    return f"invalid name {error.instance!r}: {hint}"


def _for_type(error: _Violation) -> str:
    """' for type 'cursor'' when the rule belongs to one type of a typed block."""
    const = error.schema.get("properties", {}).get("type", {}).get("const")
    return f" for type '{const}'" if const else ""


def _in(path: KeyPath) -> str:
    return f"in {dotted(path)}" if path else "at the top level"


def _and(names: list[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return _KIND_NAMES.get(type(value), type(value).__name__)


def _show(path: KeyPath, value: Any) -> str:
    """A short rendering of a wrong value; never the value of a secret key."""
    if path and path[-1] in SECRET_KEYS:
        return "(hidden)"
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


