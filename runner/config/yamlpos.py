"""Position-tracking YAML: plain Python values plus the line and column of every node.

PyYAML composes the node tree; the values are built here, so that each key
path maps to where its key and its value are written (1-based), a key
written twice in one mapping is reported at its second occurrence, and
timestamps stay strings (JSON has no dates). Anchors, aliases and `<<`
merge keys work as in YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.errors import Problem

Key = Union[str, int]
KeyPath = tuple[Key, ...]
Position = tuple[int, int]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str")
)


class _Loader(yaml.SafeLoader):
    """SafeLoader without the timestamp resolver: dates stay the strings written."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass
class Document:
    """The parsed values of one YAML file and where each of them is written."""

    data: Any = None
    keys: dict[KeyPath, Position] = field(default_factory=dict)
    values: dict[KeyPath, Position] = field(default_factory=dict)
    plain: set[KeyPath] = field(default_factory=set)  # unquoted scalars

    def where(self, path: KeyPath, *, key: bool = False) -> Position:
        """The position of `path` (its key when `key`), else of its nearest written ancestor."""
        table = self.keys if key else self.values
        while path:
            if path in table:
                return table[path]
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (1, 1))


def parse(text: str, file: str) -> tuple[Document | None, list[Problem]]:
    """Parse one YAML document; on a syntax error return None and that one problem."""
    try:
        loader = _Loader(text)
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        return None, [_syntax_problem(exc, file)]
    if root is None:
        return Document(), [Problem(file, 1, 1, "", "the file is empty; expected a pipeline mapping")]
    builder = _Builder(file, loader)
    builder.doc.data = builder.build(root, ())
    loader.dispose()
    return builder.doc, builder.problems


def resolve_plain(text: str) -> Any:
    """Read `text` as YAML reads an unquoted scalar: `100` is 100, `true` is True."""
    loader = _Loader("")
    try:
        tag = loader.resolve(ScalarNode, text, (True, False))
        if tag not in _PLAIN_TAGS:
            return text
        return loader.construct_object(ScalarNode(tag, text))
    finally:
        loader.dispose()


def _syntax_problem(exc: yaml.YAMLError, file: str) -> Problem:
    if not isinstance(exc, yaml.MarkedYAMLError):  # a reader error: bad characters
        return Problem(file, 1, 1, "", f"invalid YAML: {getattr(exc, 'reason', 'unreadable text')}")
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return Problem(file, line, column, "", f"invalid YAML: {_yaml_message(exc)}")


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's problem and context as one phrase: "... (while parsing a flow mapping started at line 5)"."""
    problem, context = exc.problem or "", exc.context or ""
    if not (problem and context):
        return problem or context
    if problem.startswith("but "):  # "expected a single document in the stream, but found another document"
        return f"{context}, {problem}"
    start, end = exc.context_mark, exc.problem_mark
    if start and end and start.line != end.line:
        context += f" started at line {start.line + 1}"
    return f"{problem} ({context})"


def _pos(node: Node) -> Position:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    """Builds values from nodes, recording positions and duplicate keys."""

    def __init__(self, file: str, loader: _Loader) -> None:
        self.file = file
        self.loader = loader
        self.doc = Document()
        self.problems: list[Problem] = []
        self._open: set[int] = set()  # nodes being built: an alias to one is a cycle

    def build(self, node: Node, path: KeyPath) -> Any:
        self.doc.values[path] = _pos(node)
        if id(node) in self._open:
            self._report(node, path, "an alias refers to itself")
            return None
        self._open.add(id(node))
        try:
            return self._build(node, path)
        finally:
            self._open.discard(id(node))

    def _build(self, node: Node, path: KeyPath) -> Any:
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: Node, path: KeyPath) -> Any:
        if isinstance(node, ScalarNode) and node.style is None:
            self.doc.plain.add(path)
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            self._report(node, path, f"cannot read this value: {exc.problem}")
            return None

    def _mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        self._check_duplicates(node, path)
        try:
            self.loader.flatten_mapping(node)  # resolves `<<` merge keys
        except yaml.MarkedYAMLError as exc:
            self._report(node, path, f"invalid merge key: {exc.problem}")
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            if key is not None:
                self.doc.keys[(*path, key)] = _pos(key_node)
                result[key] = self.build(value_node, (*path, key))
        return result

    def _key(self, node: Node, path: KeyPath) -> str | None:
        if isinstance(node, ScalarNode):
            return str(node.value)
        self._report(node, path, "a mapping key must be a plain string")
        return None

    def _check_duplicates(self, node: MappingNode, path: KeyPath) -> None:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            if key_node.value in seen:
                self._report(key_node, (*path, key_node.value),
                             f"duplicate key '{key_node.value}'; it is already set above in this mapping")
            seen.add(key_node.value)

    def _report(self, node: Node, path: KeyPath, message: str) -> None:
        line, column = _pos(node)
        self.problems.append(Problem(self.file, line, column, dotted(path), message))


def dotted(path: KeyPath) -> str:
    """`('mapping', 'fields', 'title')` -> `mapping.fields.title`; list items as `[0]`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
