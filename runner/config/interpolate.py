"""`${VAR}` and `${VAR:-default}` in every string value of a parsed pipeline.

`$${` writes a literal `${`. `${VAR:-default}` uses the default when VAR is
unset or empty, as the shell does. Variables come from a mapping the caller
builds (the environment over a `.env` file); nothing here reads os.environ.
An unquoted scalar that was interpolated is read again as YAML would read
the result, so `limit: ${PAGE_SIZE:-100}` is the integer 100.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.config.yamlpos import KeyPath, resolve_plain

# `${` takes everything up to the next `}` (or the end, when unclosed) in one match: an
# alternative that backtracked from the end for each unclosed `${` was quadratic.
_TOKEN = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)(?P<close>\}?)")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


@dataclass
class Result:
    """The interpolated values and what happened where."""

    data: Any = None
    used: dict[KeyPath, list[str]] = field(default_factory=dict)  # env values substituted
    missing: dict[KeyPath, list[str]] = field(default_factory=dict)  # unset variable names
    malformed: dict[KeyPath, list[str]] = field(default_factory=dict)  # messages


def interpolate(data: Any, env: Mapping[str, str], *, plain: Container[KeyPath] = ()) -> Result:
    """Replace variables in every string of `data`; `plain` lists the unquoted scalars."""
    result = Result()
    result.data = _walk(data, (), env, plain, result)
    return result


def variable_names(data: Any) -> dict[KeyPath, list[str]]:
    """The names of the variables each string of `data` refers to (`${A}`, `${B:-x}`), by key path,
    whether set or not: what `--record` saves and `etl test` must fill (`runner.authoring`)."""
    found: dict[KeyPath, list[str]] = {}
    stack: list[tuple[KeyPath, Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):  # reversed onto the stack: found in file order
            stack.extend(reversed([((*path, k), v) for k, v in value.items()]))
        elif isinstance(value, list):
            stack.extend(reversed([((*path, i), v) for i, v in enumerate(value)]))
        elif isinstance(value, str) and "${" in value:
            names = [m.group("name") for t in _TOKEN.finditer(value) if t.group("close")
                     and (m := _BODY.fullmatch(t.group("body") or "")) is not None]
            if names:
                found[path] = names
    return found


def _walk(
    value: Any, path: KeyPath, env: Mapping[str, str], plain: Container[KeyPath], result: Result
) -> Any:
    if isinstance(value, dict):
        return {k: _walk(v, (*path, k), env, plain, result) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, (*path, i), env, plain, result) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    text = _Expansion(env).run(value)
    _record(result, path, text)
    retype = path in plain and (text.used or text.defaults) and not (text.missing or text.malformed)
    return resolve_plain(text.value) if retype else text.value


def _record(result: Result, path: KeyPath, text: _Expansion) -> None:
    if text.used:
        result.used[path] = text.used
    if text.missing:
        result.missing[path] = text.missing
    if text.malformed:
        result.malformed[path] = text.malformed


class _Expansion:
    """One string's substitution: the result plus the variables it used or missed."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.value = ""
        self.used: list[str] = []
        self.defaults = False
        self.missing: list[str] = []
        self.malformed: list[str] = []

    def run(self, text: str) -> _Expansion:
        self.value = _TOKEN.sub(self._replace, text)
        return self

    def _replace(self, match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        if not match.group("close"):
            self.malformed.append(_malformed("${"))
            return token
        parsed = _BODY.fullmatch(match.group("body"))
        if parsed is None:
            self.malformed.append(_malformed(token))
            return token
        return self._lookup(parsed.group("name"), parsed.group("default"))

    def _lookup(self, name: str, default: str | None) -> str:
        value = self.env.get(name)
        if default is not None and not value:
            self.defaults = True
            return default
        if value is None:
            self.missing.append(name)
            return ""
        self.used.append(value)
        return value


def _malformed(token: str) -> str:
    if token == "${":
        return "'${' is not closed; write ${NAME} or ${NAME:-default}, or $${ for a literal '${'"
    return f"'{token}' is not a variable; write ${{NAME}} or ${{NAME:-default}}, or $${{ for a literal '${{'"
