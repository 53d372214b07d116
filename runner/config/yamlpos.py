"""Position-tracking YAML: plain Python values plus the line and column of every node.

PyYAML composes the node tree; the values are built here, so that each key
path maps to where its key and its value are written (1-based), a key
written twice in one mapping is reported at its second occurrence, and
timestamps stay strings (JSON has no dates). Anchors, aliases and `<<`
merge keys work as in YAML.

Whatever the text, parsing is bounded: a file nested deeper than
MAX_DEPTH levels, or whose aliases expand to more than MAX_ALIAS_NODES
nodes (a "billion laughs" file of a few hundred bytes), is one problem at
the place it goes wrong, found before more than the limit is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import AliasEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runner.errors import Problem

Key = str | int
KeyPath = tuple[Key, ...]
Position = tuple[int, int]

MAX_DEPTH = 100  # mappings and lists inside each other, the top-level mapping being the first
MAX_ALIAS_NODES = 10_000  # nodes built again because an alias refers to them
MAX_NUMBER_DIGITS = 4_300  # Python's limit for int(str) and str(int)

_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str")
)
_TAG_NAMES = {
    "tag:yaml.org,2002:int": "integer",
    "tag:yaml.org,2002:float": "number",
    "tag:yaml.org,2002:bool": "boolean",
}
_NUMBER_TAGS = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})
_TOO_BIG = 10**MAX_NUMBER_DIGITS
_TOO_LONG = f"a number of more than {MAX_NUMBER_DIGITS:,} digits"
_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels; a pipeline file needs far fewer"
_TOO_MANY = (
    f"YAML aliases expand past {MAX_ALIAS_NODES:,} nodes here; "
    "a pipeline file needs far fewer: write fewer or smaller aliases"
)


class _Limit(Exception):
    """A bound of the parse was passed: one problem for the whole file, where it happened."""

    def __init__(self, position: Position, path: KeyPath, message: str) -> None:
        super().__init__(message)
        self.position, self.path, self.message = position, path, message


class _Loader(yaml.SafeLoader):
    """SafeLoader without the timestamp resolver: dates stay the strings written.

    Composing counts its depth, so deep nesting stops at MAX_DEPTH rather
    than in a RecursionError, and notes where each alias is written (the
    node an alias stands for only knows where its anchor is).
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0
        self.aliases: dict[tuple[int, Any], Position] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            self.aliases[_slot(parent, index)] = _at(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH and not self.check_event(ScalarEvent):
                raise _Limit(_at(self.peek_event().start_mark), (), _TOO_DEEP)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _slot(parent: Node | None, index: Any) -> tuple[int, Any]:
    """Names the place of a child: its parent and its list index or mapping key node."""
    return id(parent), id(index) if isinstance(index, Node) else index


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
    unreadable: set[KeyPath] = field(default_factory=set)  # reported here, built as None

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
    """Parse one YAML document; on a syntax error or a passed limit return None and the problems."""
    try:
        loader = _Loader(text)  # the reader checks the characters here
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        return None, [_syntax_problem(exc, file)]
    except _Limit as limit:
        return None, [_limit_problem(limit, file)]
    except RecursionError:  # only if called with most of the stack already used
        return None, [Problem(file, 1, 1, "", _TOO_DEEP)]
    if root is None:
        return Document(), [Problem(file, 1, 1, "", "the file is empty; expected a pipeline mapping")]
    builder = _Builder(file, loader)
    try:
        builder.doc.data = builder.build(root, ())
    except _Limit as limit:
        return None, [*builder.problems, _limit_problem(limit, file)]
    finally:
        loader.dispose()
    if builder.doc.data is None and not builder.problems:  # `null` or `~` alone: nothing to check
        return None, [Problem(file, *_pos(root), "", "the document is null; expected a pipeline mapping")]
    return builder.doc, builder.problems


def resolve_plain(text: str) -> Any:
    """Read `text` as YAML reads an unquoted scalar: `100` is 100, `true` is True."""
    loader = _Loader("")
    try:
        tag: str = loader.resolve(ScalarNode, text, (True, False))
        if tag not in _PLAIN_TAGS or _too_long(tag, text):
            return text
        value = loader.construct_object(ScalarNode(tag, text))
        return text if _too_big(value) else value
    except (ValueError, KeyError, IndexError):  # left as written: the schema says what it expected
        return text
    finally:
        loader.dispose()


def _too_long(tag: str, text: str) -> bool:
    """A number written with more than MAX_NUMBER_DIGITS characters, refused before it is read:
    int() refuses most, and PyYAML reads a sexagesimal `1:1:1:...` in quadratic time."""
    return tag in _NUMBER_TAGS and len(text) > MAX_NUMBER_DIGITS


def _too_big(value: Any) -> bool:
    """An integer of more than MAX_NUMBER_DIGITS decimal digits (`0xfff...` can be), which str() refuses."""
    return isinstance(value, int) and abs(value) >= _TOO_BIG


def _limit_problem(limit: _Limit, file: str) -> Problem:
    line, column = limit.position
    return Problem(file, line, column, dotted(limit.path), limit.message)


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
    return _at(node.start_mark)


def _at(mark: yaml.Mark) -> Position:
    return mark.line + 1, mark.column + 1


class _Builder:
    """Builds values from nodes, recording positions and duplicate keys.

    A node built a second time is an alias being expanded: each such node
    counts against MAX_ALIAS_NODES, and the depth of what is built (aliases
    can nest deeper than the text) against MAX_DEPTH. Either limit stops
    the build at the outermost alias being expanded.
    """

    def __init__(self, file: str, loader: _Loader) -> None:
        self.file = file
        self.loader = loader
        self.doc = Document()
        self.problems: list[Problem] = []
        self._open: set[int] = set()  # nodes being built: an alias to one is a cycle
        self._built: set[int] = set()
        self._repeats = 0
        self._merges = 0  # `<<` merges being expanded: a chain of them nests like values do
        self._alias: tuple[Position, KeyPath] | None = None  # the outermost alias being expanded

    def build(self, node: Node, path: KeyPath, slot: tuple[int, Any] | None = None) -> Any:
        self.doc.values[path] = _pos(node)
        return self._enter(node, path, slot, self._build)

    def _enter(self, node: Node, path: KeyPath, slot: tuple[int, Any] | None, make: Callable[..., Any]) -> Any:
        """Build `node` with `make`, within the limits; `slot` names where it is written."""
        if id(node) in self._open:
            self._report(node, path, "an alias refers to itself")
            self.doc.unreadable.add(path)
            return None
        outer = self._alias
        if outer is None and slot in self.loader.aliases:
            self._alias = (self.loader.aliases[slot], path)
        self._check_limits(node, path)
        self._open.add(id(node))
        try:
            return make(node, path)
        finally:
            self._open.discard(id(node))
            self._alias = outer

    def _check_limits(self, node: Node, path: KeyPath) -> None:
        if id(node) in self._built:
            self._repeats += 1
        self._built.add(id(node))
        if self._repeats > MAX_ALIAS_NODES:
            raise _Limit(*(self._alias or (_pos(node), path)), _TOO_MANY)
        if len(path) + self._merges >= MAX_DEPTH and not isinstance(node, ScalarNode):
            raise _Limit(*(self._alias or (_pos(node), path)), _TOO_DEEP)

    def _build(self, node: Node, path: KeyPath) -> Any:
        if isinstance(node, MappingNode):
            return self._mapping(node, path)
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i), _slot(node, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: Node, path: KeyPath) -> Any:
        if isinstance(node, ScalarNode) and node.style is None:
            self.doc.plain.add(path)
        value, problem = self._construct(node)
        if problem is None:
            return value
        self._report(node, path, f"cannot read this value: {problem}")
        self.doc.unreadable.add(path)
        return None

    def _construct(self, node: Node) -> tuple[Any, str | None]:
        """A scalar's value, or why it cannot be one: a tag that is not JSON's, bad text, too many digits."""
        if node.tag not in _PLAIN_TAGS:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            return None, f"the tag {tag!r} is not supported; a value is null, true or false, a number or a string"
        if _too_long(node.tag, str(node.value)):
            return None, _TOO_LONG
        try:
            value = self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            return None, str(exc.problem)
        except (ValueError, KeyError, IndexError):  # PyYAML's constructors on text like `!!int x`
            return None, f"not a valid {_TAG_NAMES.get(node.tag, 'value')}"
        return (None, _TOO_LONG) if _too_big(value) else (value, None)

    def _mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        self._check_duplicates(node, path)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:  # merged first, so that the keys written here win
                result.update(self._merged(value_node, path, _slot(node, key_node)))
        for key_node, value_node in node.value:
            key = None if key_node.tag == _MERGE_TAG else self._key(key_node, path)
            if key is not None:
                key_path = (*path, key)
                self.doc.keys[key_path] = _pos(key_node)
                result[key] = self.build(value_node, key_path, _slot(node, key_node))
        return result

    def _merged(self, node: Node, path: KeyPath, slot: tuple[int, Any]) -> dict[str, Any]:
        """What `<<: *a` or `<<: [*a, *b]` merges, an earlier mapping winning over a later one."""
        sources = list(enumerate(node.value)) if isinstance(node, SequenceNode) else [(None, node)]
        merged: dict[str, Any] = {}
        for index, source in reversed(sources):
            if not isinstance(source, MappingNode):
                found = "a list" if isinstance(source, SequenceNode) else "a scalar"
                message = f"invalid merge key: expected a mapping or a list of mappings, found {found}"
                self._report(source, path, message)
                continue
            where = slot if index is None else _slot(node, index)
            self._merges += 1
            try:
                merged.update(self._enter(source, path, where, self._mapping) or {})
            finally:
                self._merges -= 1
        return merged

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
                             f"duplicate key {key_node.value!r}; it is already set above in this mapping")
            seen.add(key_node.value)

    def _report(self, node: Node, path: KeyPath, message: str) -> None:
        line, column = _pos(node)
        self.problems.append(Problem(self.file, line, column, dotted(path), message))


def dotted(path: KeyPath) -> str:
    """`('mapping', 'fields', 'title')` -> `mapping.fields.title`; list items as `[0]`.

    A key holding a newline or another unprintable character is quoted, `fields['a\\n']`,
    so that a problem stays one line.
    """
    text = ""
    for part in path:
        if isinstance(part, int) or not part.isprintable():
            text += f"[{part!r}]"
        else:
            text += f".{part}" if text else part
    return text
