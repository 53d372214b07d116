"""Tests of runner.config: loading, checking and building pipeline files."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from runner import config, model
from runner.config import yamlpos
from runner.errors import ConfigError, Problem

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "config"
VALID = sorted((FIXTURES / "valid").glob("*.yaml"))
PIPELINES = sorted((ROOT / "pipelines").glob("*.yaml"))

# Every variable the valid fixtures use, so that they load.
FIXTURE_ENV = {
    "ETL_TEST_TOKEN": "tok-123",
    "ETL_TEST_USER": "me@example.com",
    "ETL_TEST_PASSWORD": "pw-456",
    "ETL_TEST_DSN": "postgresql://u:p@db/etl",
    "ETL_TEST_STATE_DSN": "postgresql://u:p@db/state",
    "ETL_TEST_KEY": "key-789",
    "ETL_TEST_CLIENT_SECRET": "cs-000",
    "ETL_TEST_TARGET_TOKEN": "tt-111",
}

# Line numbers below refer to this text; each invalid case replaces one piece of it.
BASE = """\
version: 1
name: demo
source:
  url: https://api.example.com/items
  records: data
  pagination: {type: page, size: 100}
mapping:
  external_id: to_string(id)
  fields:
    name: name
    city: address.city
target:
  type: sqlite
  path: data/out.db
  table: items
"""

# (id, text to replace, replacement, expected message part, line, column)
INVALID: list[tuple[str, str, str, str, int, int]] = [
    ("unknown-key", "  records: data", "  recods: data",
     "unknown key 'recods' in source; did you mean 'records'?", 5, 3),
    ("unknown-top-key", "name: demo", "name: demo\nnmae: x",
     "unknown key 'nmae' at the top level; did you mean 'name'?", 3, 1),
    ("unknown-key-lists-valid-keys", "  records: data", "  records: data\n  timeout: {connect: 1, zzz: 2}",
     "unknown key 'zzz' in source.timeout; valid keys: connect, read", 6, 25),
    ("version-const", "version: 1", "version: 2", "expected 1, got 2", 1, 10),
    ("version-missing", "version: 1\n", "", "missing required key 'version' at the top level", 1, 1),
    ("name-pattern", "name: demo", "name: Demo Pipeline",
     "invalid value 'Demo Pipeline': use lowercase letters, digits", 2, 7),
    ("url-not-http", "url: https://api.example.com/items", "url: ftp://example.com",
     "expected an absolute http(s) URL", 4, 8),
    ("url-missing", "  url: https://api.example.com/items\n", "",
     "missing required key 'url' in source", 3, 1),
    ("method-enum", "  records: data", "  method: FETCH",
     "invalid value 'FETCH'; expected one of: GET, POST", 5, 11),
    ("pagination-unknown-type", "{type: page, size: 100}", "{type: pages}",
     "unknown pagination type 'pages'; valid types: none, next_url, link_header, cursor, page, offset; "
     "did you mean 'page'?", 6, 22),
    ("pagination-missing-type", "{type: page, size: 100}", "{size: 100}",
     "missing required key 'type' in source.pagination; valid types: none, next_url", 6, 3),
    ("cursor-needs-path", "{type: page, size: 100}", "{type: cursor, param: after}",
     "missing required key 'path' in source.pagination for type 'cursor'", 6, 3),
    ("offset-needs-limit", "{type: page, size: 100}", "{type: offset}",
     "missing required key 'limit' in source.pagination for type 'offset'", 6, 3),
    ("key-of-another-type", "{type: page, size: 100}", "{type: link_header, size: 100}",
     "unknown key 'size' in source.pagination; valid keys: type", 6, 35),
    ("size-param-needs-size", "{type: page, size: 100}", "{type: page, size_param: per_page}",
     "'size_param' needs 'size' in source.pagination", 6, 3),
    ("pagination-not-mapping", "{type: page, size: 100}", "page", "expected a mapping, got a string", 6, 15),
    ("page-size-minimum", "size: 100}", "size: 0}", "must be at least 1, got 0", 6, 34),
    ("auth-unknown-type", "  records: data", "  auth: {type: oauth, token: x}",
     "unknown auth type 'oauth'; valid types: bearer, basic, api_key, oauth2_client_credentials", 5, 16),
    ("auth-bearer-needs-token", "  records: data", "  auth: {type: bearer}",
     "missing required key 'token' in source.auth for type 'bearer'", 5, 3),
    ("api-key-in-enum", "  records: data", "  auth: {type: api_key, name: k, value: v, in: body}",
     "invalid value 'body'; expected one of: header, query", 5, 48),
    ("timeout-type", "  records: data", "  timeout: {read: soon}", "expected a number, got a string", 5, 19),
    ("timeout-positive", "  records: data", "  timeout: {read: 0}", "must be greater than 0, got 0", 5, 19),
    ("retry-also-on", "  records: data", "  retry: {also_on: [500]}",
     "invalid value 500; expected one of: 408, 409", 5, 21),
    ("retry-also-on-unique", "  records: data", "  retry: {also_on: [408, 408]}",
     "the list holds the same item twice", 5, 20),
    ("concurrency-minimum", "  records: data", "  concurrency: 0", "must be at least 1, got 0", 5, 16),
    ("params-value-type", "  records: data", "  params: {a: [1, 2]}",
     "expected a string, a number or true or false, got a list", 5, 15),
    ("incremental-needs-param", "  records: data", "  incremental: {cursor_field: updated_at}",
     "missing required key 'param' in source.incremental", 5, 3),
    ("records-empty", "records: data", "records: ''", "must not be empty", 5, 12),
    ("field-name", "    city: address.city", "    city-name: address.city",
     "invalid name 'city-name': use letters, digits and '_', not starting with a digit", 11, 5),
    ("fields-missing", "  fields:\n    name: name\n    city: address.city\n", "",
     "missing required key 'fields' in mapping", 7, 1),
    ("bad-jmespath-field", "address.city", "address..city",
     "invalid JMESPath 'address..city': unexpected '.' at character 9", 11, 11),
    ("bad-jmespath-incomplete", "records: data", "records: 'data[?'",
     "invalid JMESPath 'data[?': the expression is incomplete", 5, 12),
    ("bad-jmespath-lexer", "records: data", "records: '`data'",
     "invalid JMESPath '`data': unclosed ` delimiter at character 1", 5, 12),
    ("bad-jmespath-total-pages", "{type: page, size: 100}", "{type: page, total_pages: 'a b'}",
     "invalid JMESPath 'a b': unexpected 'b' at character 3", 6, 41),
    ("bad-jmespath-filter", "  fields:", "  filter: '!'\n  fields:",
     "invalid JMESPath '!': the expression is incomplete", 9, 11),
    ("bad-jmespath-cursor-field", "  records: data", "  incremental: {cursor_field: 'a[', param: since}",
     "invalid JMESPath 'a[': the expression is incomplete", 5, 31),
    ("unknown-function", "to_string(id)", "to_strng(id)",
     "unknown JMESPath function 'to_strng()' in 'to_strng(id)'; did you mean 'to_string'?", 8, 16),
    ("unknown-nested-function", "address.city", "upper(nosuchfn(address))",
     "unknown JMESPath function 'nosuchfn()'", 11, 11),
    ("target-unknown-type", "  type: sqlite", "  type: mysql",
     "unknown target type 'mysql'; valid types: sqlite, postgres, jsonl, http", 13, 9),
    ("sqlite-needs-table", "  table: items\n", "", "missing required key 'table' in target for type 'sqlite'", 12, 1),
    ("table-identifier", "table: items", "table: my-items",
     "invalid value 'my-items': use letters, digits and '_'", 15, 10),
    ("jsonl-rejects-table", "  type: sqlite", "  type: jsonl",
     "unknown key 'table' in target; valid keys: type, path", 15, 3),
    ("http-needs-operation", "  type: sqlite\n  path: data/out.db\n  table: items\n",
     "  type: http\n  base_url: https://crm.example.com\n",
     "missing required keys 'create' and 'update' in target; or use 'upsert' (or 'batch') instead", 12, 1),
    ("http-upsert-and-create", "  type: sqlite\n  path: data/out.db\n  table: items\n",
     "  type: http\n  base_url: https://crm.example.com\n  upsert: {method: PUT, path: /a}\n"
     "  create: {method: POST, path: /a, id_path: id}\n  update: {method: PUT, path: /a}\n",
     "use either 'upsert' or 'create' with 'update', not both", 12, 1),
    ("http-method-enum", "  type: sqlite\n  path: data/out.db\n  table: items\n",
     "  type: http\n  base_url: https://crm.example.com\n  upsert: {method: GET, path: /a}\n",
     "invalid value 'GET'; expected one of: POST, PUT, PATCH", 15, 20),
    ("http-create-needs-id-path", "  type: sqlite\n  path: data/out.db\n  table: items\n",
     "  type: http\n  base_url: https://crm.example.com\n  create: {method: POST, path: /a}\n"
     "  update: {method: PUT, path: /a}\n",
     "missing required key 'id_path' in target.create", 15, 3),
    ("http-bad-id-path", "  type: sqlite\n  path: data/out.db\n  table: items\n",
     "  type: http\n  base_url: https://crm.example.com\n  create: {method: POST, path: /a, id_path: 'a..'}\n"
     "  update: {method: PUT, path: /a}\n",
     "invalid JMESPath 'a..'", 15, 45),
    ("http-placeholder", "  type: sqlite\n  path: data/out.db\n  table: items\n",
     "  type: http\n  base_url: https://crm.example.com\n  upsert: {method: PUT, path: '/a/{target_id}'}\n",
     "unknown placeholder '{target_id}' in upsert path; valid: {external_id}", 15, 31),
    ("idempotency-key-type", "  type: sqlite\n  path: data/out.db\n  table: items\n",
     "  type: http\n  base_url: https://crm.example.com\n  upsert: {method: PUT, path: /a}\n"
     "  idempotency_key: maybe\n",
     "expected true or false, got a string", 16, 20),
    ("state-path-and-dsn", "  table: items\n", "  table: items\nstate: {path: a.db, dsn: postgresql://x}\n",
     "use either 'path' or 'dsn', not both", 16, 1),
    ("state-unknown-key", "  table: items\n", "  table: items\nstate: {file: a.db}\n",
     "unknown key 'file' in state; valid keys: path, dsn", 16, 9),
    ("malformed-variable", "name: demo", "name: demo\ndescription: 'cost ${1 dollar}'",
     "'${1 dollar}' is not a variable; write ${NAME} or ${NAME:-default}, or $${ for a literal '${'", 3, 14),
    ("unclosed-variable", "name: demo", "name: demo\ndescription: 'a ${B'", "'${' is not closed", 3, 14),
    ("duplicate-key", "  table: items\n", "  table: items\n  table: other\n",
     "duplicate key 'table'; it is already set above in this mapping", 16, 3),
    # `$` of a schema pattern is the end of the text (ECMA-262), not also before a final newline
    ("name-trailing-newline", "name: demo", 'name: "demo\\n"',
     "invalid value 'demo\\n': use lowercase letters, digits", 2, 7),
    ("table-trailing-newline", "table: items", 'table: "items\\n"',
     "invalid value 'items\\n': use letters, digits and '_'", 15, 10),
    ("field-name-trailing-newline", "    name: name", '    "name\\n": name',
     "invalid name 'name\\n': use letters, digits and '_', not starting with a digit", 10, 5),
    ("field-named-external-id", "    name: name", "    external_id: name",
     "invalid name 'external_id': the target keeps the key of `mapping.external_id` under that name", 10, 5),
    ("concurrency-maximum", "  records: data", "  concurrency: 65", "must be at most 64, got 65", 5, 16),
    ("huge-integer", "size: 100}", "size: " + "9" * 5000 + "}",
     "cannot read this value: a number of more than 4,300 digits", 6, 34),
    ("huge-sexagesimal-integer", "size: 100}", "size: 1" + ":1" * 5000 + "}",
     "cannot read this value: a number of more than 4,300 digits", 6, 34),
    ("huge-hex-integer", "size: 100}", "size: 0x" + "f" * 4000 + "}",
     "cannot read this value: a number of more than 4,300 digits", 6, 34),
    ("binary-tag", "  records: data", "  records: data\n  json: {a: !!binary aGk=}",
     "cannot read this value: the tag '!!binary' is not supported", 6, 13),
]


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in an empty working directory, so no ./.env leaks in."""
    monkeypatch.chdir(tmp_path)


# --- the table of invalid configs --------------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "message", "line", "column"), [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_config_is_reported_with_its_position(
    tmp_path: Path, old: str, new: str, message: str, line: int, column: int
) -> None:
    """Each invalid config gives exactly one error, with a readable message at the right line and column."""
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    found = errors(config.check_file(path, env={}))
    assert len(found) == 1, [str(p) for p in found]
    assert message in found[0].message
    assert (found[0].line, found[0].column) == (line, column)


def test_base_of_the_invalid_table_is_valid(tmp_path: Path) -> None:
    """The text every invalid case starts from has no problem of its own."""
    assert config.check_file(write(tmp_path, BASE), env={}) == []


def test_load_pipeline_raises_every_error(tmp_path: Path) -> None:
    """load_pipeline raises one ConfigError that lists all the errors of the file."""
    path = write(tmp_path, BASE.replace("version: 1", "version: 3").replace("records: data", "recods: data"))
    with pytest.raises(ConfigError) as caught:
        config.load_pipeline(path, env={})
    assert [(p.line, p.path) for p in caught.value.problems] == [(1, "version"), (5, "source.recods")]
    assert caught.value.exit_code == 2


def test_three_separate_mistakes_are_three_problems() -> None:
    """An unknown key, a bad enum value and a bad JMESPath are all reported, in file order."""
    path = FIXTURES / "invalid" / "three_mistakes.yaml"
    found = config.check_file(path, env={})
    assert [(p.line, p.column, p.path) for p in found] == [
        (6, 11, "source.method"),
        (7, 3, "source.paginaton"),
        (11, 12, "mapping.fields.title"),
    ]
    assert all(p.file == str(path) for p in found)


def test_schema_messages_never_dump_the_schema(tmp_path: Path) -> None:
    """No message quotes the schema the way a raw jsonschema error would."""
    path = write(tmp_path, BASE.replace("{type: page, size: 100}", "{type: cursor, size: x}"))
    for problem in config.check_file(path, env={}):
        assert "{" not in problem.message and "schema" not in problem.message


def test_secret_values_are_not_echoed_in_messages(tmp_path: Path) -> None:
    """A wrong value under a secret key is described by its type, without quoting it."""
    text = BASE.replace("  records: data", "  auth: {type: bearer, token: [hunter2]}")
    found = config.check_file(write(tmp_path, text), env={})
    assert [p.message for p in found] == ["expected a string, got a list"]


# --- YAML ----------------------------------------------------------------------------


def test_duplicate_key_is_reported_at_its_second_occurrence() -> None:
    """A key written twice in one mapping points at the second one."""
    found = config.check_file(FIXTURES / "invalid" / "duplicate_key.yaml", env={})
    assert [(p.line, p.column, p.path, p.severity) for p in found] == [(6, 3, "source.records", "error")]
    assert "duplicate key 'records'" in found[0].message


def test_yaml_syntax_error_gives_line_and_column() -> None:
    """A YAML syntax error is one problem at the place PyYAML stopped, naming where the block began."""
    found = config.check_file(FIXTURES / "invalid" / "syntax_error.yaml", env={})
    assert len(found) == 1
    assert (found[0].line, found[0].column) == (6, 8)
    assert found[0].message.startswith("invalid YAML: expected ',' or '}'")
    assert "started at line 5" in found[0].message


@pytest.mark.parametrize(("text", "message"), [
    ("", "the file is empty"),
    ("# only a comment\n", "the file is empty"),
    ("null\n", "the document is null; expected a pipeline mapping"),
    ("# a comment\n~\n", "the document is null; expected a pipeline mapping"),
    ("- a\n- b\n", "expected a mapping, got a list"),
    ("a: 1\n---\nb: 2\n", "expected a single document in the stream"),
    ("a: !custom x\n", "cannot read this value"),
    ("a: &x [*x]\n", "an alias refers to itself"),
    ("? [a, b]\n: 1\n", "a mapping key must be a plain string"),
    ("a: \x07\n", "invalid YAML: special characters are not allowed"),
    ("a: !!timestamp 2024-01-01\n", "cannot read this value: the tag '!!timestamp' is not supported"),
    ("a: !!timestamp x\n", "cannot read this value: the tag '!!timestamp' is not supported"),
    ("a: !!int x\n", "cannot read this value: not a valid integer"),
    ("a: !!int ''\n", "cannot read this value: not a valid integer"),
    ("a: !!bool x\n", "cannot read this value: not a valid boolean"),
    ("a: !!float x\n", "cannot read this value: not a valid number"),
    ("a: {<<: 1}\n", "invalid merge key: expected a mapping or a list of mappings, found a scalar"),
    ("a: {<<: [[1]]}\n", "invalid merge key: expected a mapping or a list of mappings, found a list"),
    ("a: &a {<<: *a}\n", "an alias refers to itself"),
])
def test_unusable_documents_are_reported(tmp_path: Path, text: str, message: str) -> None:
    """Empty files, non-mappings, several documents and unknown tags are problems, not crashes."""
    found = config.check_file(write(tmp_path, text), env={})
    assert any(message in p.message for p in found), [str(p) for p in found]


def test_missing_file_is_a_problem(tmp_path: Path) -> None:
    """A file that cannot be read is reported rather than raised."""
    found = config.check_file(tmp_path / "nope.yaml", env={})
    assert [p.message for p in found] == ["cannot read the file: No such file or directory"]


def test_timestamps_stay_strings() -> None:
    """An unquoted ISO timestamp is the string written, not a datetime."""
    pipeline = config.load_pipeline(FIXTURES / "valid" / "everything.yaml", env=FIXTURE_ENV)
    assert pipeline.source.incremental is not None
    assert pipeline.source.incremental.initial_value == "2024-01-01T00:00:00Z"


def test_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    """YAML anchors, aliases and `<<` merge keys build the values they stand for."""
    text = BASE.replace("  records: data", "  records: data\n  timeout: &t {connect: 1, read: 2}\n"
                        "  retry: {<<: {max_attempts: 2}, backoff_max: 3}")
    pipeline = config.load_pipeline(write(tmp_path, text), env={})
    assert pipeline.source.timeout.connect == 1.0
    assert pipeline.source.retry.max_attempts == 2 and pipeline.source.retry.backoff_max == 3.0


def test_merge_keys_follow_yaml_precedence() -> None:
    """Keys written in the mapping win over merged ones, and an earlier merged mapping over a later one."""
    text = "p: &p {a: p, b: p}\nq: &q {a: q, b: q, c: q}\nm: {<<: [*p, *q], b: written}\n"
    doc, found = yamlpos.parse(text, "f.yaml")
    assert found == [] and doc is not None
    assert doc.data["m"] == {"a": "p", "b": "written", "c": "q"}


# --- limits of the parse: aliases, depth, numbers ----------------------------------------------


def laughs(levels: int = 9, width: int = 10) -> str:
    """The "billion laughs" file: `a0: &a0 ["lol", ...]`, then `a1: &a1 [*a0, ...]` ... (470 bytes)."""
    lol = ",".join(['"lol"'] * width)
    lines = [f"a0: &a0 [{lol}]"]
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def merge_laughs(levels: int = 9, width: int = 10) -> str:
    """The same bomb through `<<` merge keys (older PyYAML releases flattened it into 10^8 key pairs)."""
    lines = ["m0: &m0 {k: v}"]
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * width)}]}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def timed_errors(tmp_path: Path, text: str) -> tuple[list[Problem], float]:
    """The errors of `text` as a file and the seconds taken to find them."""
    path = write(tmp_path, text)
    started = time.perf_counter()
    found = errors(config.check_file(path, env={}))
    return found, time.perf_counter() - started


def peak_memory(tmp_path: Path, text: str) -> int:
    """The most memory (bytes) allocated at once while checking `text` as a file."""
    path = write(tmp_path, text)
    tracemalloc.start()
    try:
        config.check_file(path, env={})
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("text", "line", "column", "path"), [
    (laughs(), 4, 38, "a3[7]"),
    (merge_laughs(), 5, 45, "m4"),
], ids=["aliases", "merge-keys"])
def test_an_alias_bomb_is_one_error_at_the_alias(
    tmp_path: Path, text: str, line: int, column: int, path: str
) -> None:
    """Aliases expanding past 10,000 nodes give one error at the alias that crosses it, fast and in little memory."""
    found, seconds = timed_errors(tmp_path, text)
    assert [(p.line, p.column, p.path) for p in found] == [(line, column, path)]
    assert found[0].message.startswith("YAML aliases expand past 10,000 nodes here")
    assert seconds < 1
    assert peak_memory(tmp_path, text) < 20_000_000


def test_the_billion_laughs_file_is_470_bytes() -> None:
    """The bomb above is the review's file: a few hundred bytes that would expand to 10^9 strings."""
    assert len(laughs().encode()) == 470


def test_aliases_may_expand_to_10000_nodes(tmp_path: Path) -> None:
    """100 aliases to a list of 99 items build 10,000 nodes again, which is allowed; one more alias is not."""
    items = ", ".join(["1"] * 99)
    text = f"a: &a [{items}]\nb: [{', '.join(['*a'] * 100)}]\n"
    assert not any("aliases" in p.message for p in config.check_file(write(tmp_path, text), env={}))
    found = errors(config.check_file(write(tmp_path, text.replace("*a]", "*a, *a]")), env={}))
    assert [(p.line, p.column, p.path) for p in found] == [(2, 405, "b[100]")]


@pytest.mark.parametrize(("text", "line", "column"), [
    ("version: 1\ndescription: " + "[" * 20_000 + "]" * 20_000 + "\n", 2, 113),
    ("version: 1\ndescription:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 3001)), 102, 101),
    ("a: &a " + "[" * 60 + "]" * 60 + "\nb: " + "[" * 60 + "*a" + "]" * 60 + "\n", 2, 64),
], ids=["flow-20000", "block-3000", "through-aliases"])
def test_a_file_nested_deeper_than_100_levels_is_one_error(
    tmp_path: Path, text: str, line: int, column: int
) -> None:
    """Deep nesting, written or through aliases, is one error where it passes 100 levels; never a RecursionError."""
    found, seconds = timed_errors(tmp_path, text)
    assert [(p.line, p.column, p.message) for p in found] == [
        (line, column, "nested deeper than 100 levels; a pipeline file needs far fewer")
    ]
    assert seconds < 2
    with pytest.raises(ConfigError) as caught:
        config.load_pipeline(tmp_path / "pipeline.yaml", env={})
    assert len(caught.value.problems) == 1 and caught.value.exit_code == 2


@pytest.mark.parametrize(("depth", "deep_enough"), [(99, False), (100, True)])
def test_100_levels_are_allowed(tmp_path: Path, depth: int, deep_enough: bool) -> None:
    """The top-level mapping and 99 lists inside it are 100 levels, the most a file may nest."""
    text = BASE.replace("name: demo", f"name: demo\ndescription: {'[' * depth}{']' * depth}")
    messages = [p.message for p in errors(config.check_file(write(tmp_path, text), env={}))]
    assert any("nested deeper" in m for m in messages) is deep_enough
    assert messages == (messages[:1] if deep_enough else ["expected a string, got a list"])


def test_problems_stay_one_line_whatever_the_key(tmp_path: Path) -> None:
    """A key holding a newline is quoted in the key path and the message, so each problem prints as one line."""
    text = BASE.replace("  records: data", '  records: data\n  "rec\\nords": x').replace(
        "    name: name", '    "name\\n": name')
    found = config.check_file(write(tmp_path, text), env={})
    assert [p.path for p in found] == ["source['rec\\nords']", "mapping.fields['name\\n']"]
    assert all("\n" not in str(p) for p in found)


def test_an_interpolated_number_too_long_to_read_stays_text(tmp_path: Path) -> None:
    """`concurrency: ${N}` with N of 5,000 digits stays text (Python reads no such int):
    the schema says what is wrong."""
    text = BASE.replace("  records: data", "  records: data\n  concurrency: ${N}")
    found = config.check_file(write(tmp_path, text), env={"N": "9" * 5000})
    assert [(p.path, p.message) for p in found] == [("source.concurrency", "expected an integer, got a string")]


def test_many_unclosed_variables_are_checked_in_linear_time(tmp_path: Path) -> None:
    """A string of 100,000 unclosed `${` is one malformed-variable error, found at once (not in quadratic time)."""
    text = BASE.replace("name: demo", "name: demo\ndescription: '" + "${" * 100_000 + "'")
    started = time.perf_counter()
    found = config.check_file(write(tmp_path, text), env={})
    assert time.perf_counter() - started < 1
    assert [p.message[:20] for p in found] == ["'${' is not closed; "]


# --- interpolation and .env ---------------------------------------------------------------


def description_of(tmp_path: Path, value: str, env: dict[str, str] | None = None) -> Any:
    text = BASE.replace("name: demo", f"name: demo\ndescription: {value}")
    return config.load_pipeline(write(tmp_path, text), env=env if env is not None else {}).description


@pytest.mark.parametrize(("value", "env", "expected"), [
    ("'${A}'", {"A": "x"}, "x"),
    ("'pre-${A}-post'", {"A": "x"}, "pre-x-post"),
    ("'${A:-fallback}'", {}, "fallback"),
    ("'${A:-fallback}'", {"A": ""}, "fallback"),
    ("'${A:-fallback}'", {"A": "set"}, "set"),
    ("'${A}${B}'", {"A": "1", "B": "2"}, "12"),
    ("'$${A}'", {"A": "x"}, "${A}"),
    ("'cost: $5'", {}, "cost: $5"),
    ("'${A:-}'", {}, ""),
])
def test_variables_are_interpolated(tmp_path: Path, value: str, env: dict[str, str], expected: str) -> None:
    """`${VAR}`, `${VAR:-default}` and the `$${` escape give the documented string."""
    assert description_of(tmp_path, value, env) == expected


def test_unquoted_variable_is_read_as_yaml_reads_its_value(tmp_path: Path) -> None:
    """`concurrency: ${N}` becomes the integer N, while a quoted `'${N}'` stays a string."""
    text = BASE.replace("  records: data", "  records: data\n  concurrency: ${N}\n  limits: {max_seconds: '${N}'}")
    text = text.replace("name: demo", "name: demo\ndescription: '${N}'")
    path = write(tmp_path, text)
    found = config.check_file(path, env={"N": "25"})
    assert [(p.path, p.message) for p in found] == [("source.limits.max_seconds", "expected a number, got a string")]
    pipeline = config.load_pipeline(write(tmp_path, text.replace("'${N}'}", "7}")), env={"N": "25"})
    assert pipeline.source.concurrency == 25
    assert pipeline.description == "25"


def test_dotenv_fills_unset_variables(tmp_path: Path) -> None:
    """A ./.env file in the working directory supplies variables the environment lacks."""
    (tmp_path / ".env").write_text("DESC=from-dotenv\n", encoding="utf-8")
    assert description_of(tmp_path, "${DESC}") == "from-dotenv"


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    """A variable set in the environment is never overridden by .env."""
    (tmp_path / ".env").write_text("DESC=from-dotenv\n", encoding="utf-8")
    assert description_of(tmp_path, "${DESC}", {"DESC": "from-env"}) == "from-env"


def test_env_file_replaces_dotenv(tmp_path: Path) -> None:
    """With env_file, ./.env is not read at all."""
    (tmp_path / ".env").write_text("DESC=from-dotenv\nOTHER=x\n", encoding="utf-8")
    other = tmp_path / "other.env"
    other.write_text("DESC=from-env-file\n", encoding="utf-8")
    text = BASE.replace("name: demo", "name: demo\ndescription: ${DESC}-${OTHER:-none}")
    pipeline = config.load_pipeline(write(tmp_path, text), env={}, env_file=other)
    assert pipeline.description == "from-env-file-none"


def test_missing_env_file_is_an_error(tmp_path: Path) -> None:
    """An env_file that does not exist is reported under its own name."""
    found = config.check_file(write(tmp_path, BASE), env={}, env_file=tmp_path / "absent.env")
    assert [(p.file, p.message, p.severity) for p in found] == [
        (str(tmp_path / "absent.env"), "env file not found", "error")
    ]


def test_os_environ_is_the_default_and_is_not_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without env=, variables come from os.environ, and .env values are not written into it."""
    monkeypatch.setenv("ETL_TEST_DESC", "from-os")
    monkeypatch.delenv("ETL_TEST_DOTENV_ONLY", raising=False)
    (tmp_path / ".env").write_text("ETL_TEST_DOTENV_ONLY=x\n", encoding="utf-8")
    text = BASE.replace("name: demo", "name: demo\ndescription: ${ETL_TEST_DESC}-${ETL_TEST_DOTENV_ONLY}")
    assert config.load_pipeline(write(tmp_path, text)).description == "from-os-x"
    assert "ETL_TEST_DOTENV_ONLY" not in os.environ


def test_missing_variable_is_a_warning_when_checking() -> None:
    """check_file reports an unset variable as a warning and no error."""
    found = config.check_file(FIXTURES / "invalid" / "missing_env.yaml", env={})
    assert [(p.line, p.column, p.path, p.severity) for p in found] == [
        (4, 8, "source.url", "warning"),
        (5, 31, "source.auth.token", "warning"),
    ]
    assert found[0].message == "environment variable ETL_TEST_UNSET_PATH is not set"


def test_missing_variable_is_an_error_when_loading() -> None:
    """load_pipeline refuses a file whose variables are not all set."""
    with pytest.raises(ConfigError) as caught:
        config.load_pipeline(FIXTURES / "invalid" / "missing_env.yaml", env={})
    assert [(p.path, p.severity) for p in caught.value.problems] == [
        ("source.url", "error"),
        ("source.auth.token", "error"),
    ]
    assert "ETL_TEST_UNSET_TOKEN is not set (set it, or add it to .env)" in str(caught.value)


# --- building the model ----------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_fixture_has_no_problem(path: Path) -> None:
    """Each valid fixture checks clean when its variables are set."""
    assert config.check_file(path, env=FIXTURE_ENV) == []


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_fixture_loads(path: Path) -> None:
    """Each valid fixture builds a Pipeline whose file is the path as given."""
    pipeline = config.load_pipeline(str(path), env=FIXTURE_ENV)
    assert isinstance(pipeline, model.Pipeline)
    assert pipeline.file == str(path)


def test_everything_builds_the_documented_objects(tmp_path: Path) -> None:
    """Every source key lands in its typed field, with numbers, maps and sets of the right types."""
    pipeline = config.load_pipeline(FIXTURES / "valid" / "everything.yaml", env=FIXTURE_ENV)
    source = pipeline.source
    assert (pipeline.name, pipeline.description) == ("everything", "Every source key at once")
    assert source.method == "POST" and source.json == {"query": {"match": "all"}, "fields": ["a", "b"]}
    assert dict(source.params) == {"status": "open", "limit": 50, "archived": False}
    assert dict(source.headers) == {"Accept": "application/json", "X-Version": "2", "X-Flag": "true"}
    assert source.timeout == model.Timeout(connect=2.0, read=10.5)
    assert source.retry == model.Retry(3, 1.0, 8.0, 60.0, frozenset({408, 409}))
    assert source.rate_limit == model.RateLimit(2.0)
    assert source.limits == model.Limits(10, 500, 30.0)
    assert (source.concurrency, source.max_response_bytes) == (2, 1048576)
    assert isinstance(source.pagination, model.CursorPagination) and source.pagination.param == "cursor"
    assert source.pagination.stop_when is not None and source.pagination.stop_when.text == "!(meta.has_more)"
    assert pipeline.target == model.SqliteTargetConfig(path=tmp_path / "out" / "items.db", table="items")
    assert pipeline.state == model.StateConfig(path=tmp_path / "out" / "state.db")


def test_defaults_come_from_the_model() -> None:
    """Keys left out take the documented defaults of runner.model."""
    pipeline = config.load_pipeline(FIXTURES / "valid" / "none_pagination.yaml", env={})
    source = pipeline.source
    assert (source.method, source.records, source.auth, source.incremental) == ("GET", None, None, None)
    assert source.pagination == model.NoPagination()
    assert (source.timeout, source.retry, source.limits) == (model.Timeout(), model.Retry(), model.Limits())
    assert (source.concurrency, source.max_response_bytes) == (4, 52428800)
    assert pipeline.state.path == Path.cwd() / ".etl" / "state.db" and pipeline.state.dsn is None
    assert pipeline.mapping.fields == () and pipeline.mapping.filter is None


def test_expressions_are_compiled_with_their_key() -> None:
    """Every JMESPath becomes an Expr that knows its key and searches with the engine's functions."""
    pipeline = config.load_pipeline(FIXTURES / "valid" / "everything.yaml", env=FIXTURE_ENV)
    mapping = pipeline.mapping
    assert mapping.external_id.key == "mapping.external_id"
    assert mapping.external_id.search({"id": 7}) == "7"
    assert [(name, e.key) for name, e in mapping.fields][1] == ("author", "mapping.fields.author")
    assert dict(mapping.fields)["labels"].search({"labels": [{"name": "bug"}]}) == ["bug"]
    assert mapping.filter is not None and mapping.filter.search({"deleted": True}) is False
    assert pipeline.source.records is not None and pipeline.source.records.key == "source.records"


def test_page_and_offset_pagination_build() -> None:
    """page and offset blocks keep their parameters and compile their optional expressions."""
    page = config.load_pipeline(FIXTURES / "valid" / "api_key_page_jsonl.yaml", env=FIXTURE_ENV).source.pagination
    assert isinstance(page, model.PagePagination)
    assert (page.param, page.start, page.size_param, page.size) == ("p", 0, "per_page", 10)
    assert page.total_pages is not None and page.total_pages.search({"total_pages": 3}) == 3
    offset = config.load_pipeline(FIXTURES / "valid" / "basic_offset_postgres.yaml", env=FIXTURE_ENV).source.pagination
    assert isinstance(offset, model.OffsetPagination)
    assert (offset.param, offset.limit_param, offset.limit) == ("startAt", "maxResults", 50)
    assert offset.total is not None and offset.total.text == "total"


def test_credentials_are_secrets() -> None:
    """token, password, an api_key's value, client_secret and DSNs are Secret, shown as '***'."""
    basic = config.load_pipeline(FIXTURES / "valid" / "basic_offset_postgres.yaml", env=FIXTURE_ENV)
    assert isinstance(basic.source.auth, model.BasicAuth)
    assert basic.source.auth.password == model.Secret("pw-456")
    assert isinstance(basic.target, model.PostgresTargetConfig) and basic.target.dsn.reveal() == "postgresql://u:p@db/etl"
    assert basic.state.dsn == model.Secret("postgresql://u:p@db/state")
    assert "pw-456" not in repr(basic.source) and "postgresql://u:p@db" not in repr(basic.target)
    key = config.load_pipeline(FIXTURES / "valid" / "api_key_page_jsonl.yaml", env=FIXTURE_ENV)
    assert key.source.auth == model.ApiKeyAuth(name="key", value=model.Secret("key-789"), location="query")
    oauth = config.load_pipeline(FIXTURES / "valid" / "oauth_next_url_http_create.yaml", env=FIXTURE_ENV)
    assert isinstance(oauth.source.auth, model.OAuth2ClientCredentials)
    assert oauth.source.auth.client_secret.reveal() == "cs-000"
    assert oauth.source.auth.scopes == ("contacts.read",)


def test_pipeline_secrets_hold_credentials_and_env_values_of_auth_blocks() -> None:
    """Pipeline.secrets has every credential plus env values used in auth or a DSN, and nothing else."""
    basic = config.load_pipeline(FIXTURES / "valid" / "basic_offset_postgres.yaml", env=FIXTURE_ENV)
    assert basic.secrets == {"me@example.com", "pw-456", "postgresql://u:p@db/etl", "postgresql://u:p@db/state"}
    oauth = config.load_pipeline(FIXTURES / "valid" / "oauth_next_url_http_create.yaml", env=FIXTURE_ENV)
    assert oauth.secrets == {"cs-000", "tt-111"}


def test_secrets_written_literally_are_secrets_too(tmp_path: Path) -> None:
    """A token written in the file is still a secret; env values outside auth are not."""
    text = BASE.replace("  records: data", "  auth: {type: bearer, token: literal-token}\n  params: {q: '${Q}'}")
    pipeline = config.load_pipeline(write(tmp_path, text), env={"Q": "public-query"})
    assert pipeline.secrets == {"literal-token"}


def test_http_target_builds_operations() -> None:
    """An http target keeps create, update, auth, headers and its own HTTP behaviour."""
    target = config.load_pipeline(FIXTURES / "valid" / "oauth_next_url_http_create.yaml", env=FIXTURE_ENV).target
    assert isinstance(target, model.HttpTargetConfig)
    assert target.create is not None and target.create.id_path is not None
    assert (target.create.method, target.create.path, target.create.id_path.key) == (
        "POST", "/contacts", "target.create.id_path")
    assert target.update == model.HttpOperation("PATCH", "/contacts/{target_id}")
    assert target.upsert is None and target.idempotency_key is False
    assert target.auth == model.BearerAuth(model.Secret("tt-111"))
    assert dict(target.headers) == {"X-Source": "etl"}
    assert (target.timeout, target.retry.max_attempts, target.rate_limit) == (
        model.Timeout(3.0, 20.0), 2, model.RateLimit(0.5))
    upsert = config.load_pipeline(FIXTURES / "valid" / "link_header_http_upsert.yaml", env={}).target
    assert isinstance(upsert, model.HttpTargetConfig) and upsert.idempotency_key is True
    assert upsert.upsert == model.HttpOperation("PUT", "/issues/{external_id}")


def test_jsonl_stdout_stays_a_dash() -> None:
    """A jsonl path of '-' means stdout and is not resolved as a file."""
    target = config.load_pipeline(FIXTURES / "valid" / "api_key_page_jsonl.yaml", env=FIXTURE_ENV).target
    assert target == model.JsonlTargetConfig(path="-")


def test_relative_paths_resolve_against_the_working_directory(tmp_path: Path) -> None:
    """sqlite, jsonl and state paths are made absolute from the current directory, not the file's."""
    sub = tmp_path / "conf"
    sub.mkdir()
    text = BASE.replace("  type: sqlite\n  path: data/out.db\n  table: items\n", "  type: jsonl\n  path: out.jsonl\n")
    pipeline = config.load_pipeline(write(sub, text + "state: {path: st.db}\n"), env={})
    assert pipeline.target == model.JsonlTargetConfig(path=str(tmp_path / "out.jsonl"))
    assert pipeline.state.path == tmp_path / "st.db"


def test_functions_of_the_engine_are_known(tmp_path: Path) -> None:
    """Every function in the engine's FUNCTION_TABLE is accepted in an expression."""
    from runner.transform import functions

    names = sorted(functions.OPTIONS.custom_functions.FUNCTION_TABLE)
    fields = "\n".join(f"    f{i}: {name}(@)" for i, name in enumerate(names))
    text = BASE.replace("    name: name\n    city: address.city\n", fields + "\n")
    assert errors(config.check_file(write(tmp_path, text), env={})) == []


# --- paths ---------------------------------------------------------------------------------


def test_expand_paths_takes_files_directories_and_globs(tmp_path: Path) -> None:
    """Directories give their YAML files sorted, globs expand, and repeats are dropped."""
    for name in ("b.yaml", "a.yml", "notes.txt"):
        (tmp_path / "dir").mkdir(exist_ok=True)
        (tmp_path / "dir" / name).write_text("x: 1\n", encoding="utf-8")
    (tmp_path / "top.yaml").write_text("x: 1\n", encoding="utf-8")
    found = config.expand_paths(["top.yaml", "dir", "dir/*.yaml", "*.yaml"])
    assert found == [Path("top.yaml"), Path("dir/a.yml"), Path("dir/b.yaml")]


def test_expand_paths_reports_what_matches_nothing(tmp_path: Path) -> None:
    """Every path that matches nothing is reported together, raised or collected."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as caught:
        config.expand_paths(["missing.yaml", "*.yml", "empty"])
    assert [(p.file, p.message) for p in caught.value.problems] == [
        ("missing.yaml", "no such file"),
        ("*.yml", "no file matches this pattern"),
        ("empty", "no .yaml or .yml file in this directory"),
    ]
    collected: list[Problem] = []
    assert config.expand_paths(["missing.yaml"], problems=collected) == []
    assert len(collected) == 1


# --- the schema -------------------------------------------------------------------------------


def walk_schemas(node: Any, where: str = "#") -> list[tuple[str, dict[str, Any]]]:
    """Every subschema of the schema with its JSON pointer."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((where, node))
        for key, value in node.items():
            if key not in ("examples", "default", "const", "enum", "if"):  # an `if` only tests `type`
                found.extend(walk_schemas(value, f"{where}/{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(walk_schemas(value, f"{where}/{i}"))
    return found


def test_shipped_schema_is_the_schemas_directory_file() -> None:
    """schemas/pipeline.schema.json is a relative symlink to the file the package ships."""
    link = ROOT / "schemas" / "pipeline.schema.json"
    assert link.is_symlink() and os.readlink(link) == "../runner/config/pipeline.schema.json"
    assert json.loads(link.read_text(encoding="utf-8")) == config.load_schema()


def test_schema_is_valid_draft_2020_12() -> None:
    """The schema is itself valid under its metaschema and has an $id and examples."""
    from jsonschema import Draft202012Validator

    schema = config.load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and schema["$id"]
    for example in schema["examples"]:
        assert list(Draft202012Validator(schema).iter_errors(example)) == []


def test_every_key_in_the_schema_has_a_description() -> None:
    """Each property, definition and map value schema carries a description."""
    missing = []
    for where, node in walk_schemas(config.load_schema()):
        for group in ("properties", "$defs"):
            missing += [f"{where}/{group}/{k}" for k, v in node.get(group, {}).items() if "description" not in v]
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and "description" not in extra:
            missing.append(f"{where}/additionalProperties")
    assert missing == []


def test_every_default_is_written_in_its_description() -> None:
    """A key with a `default` says `Default:` in its description, for readers of the schema alone."""
    silent = [where for where, node in walk_schemas(config.load_schema())
              if "default" in node and "Default:" not in node.get("description", "")]
    assert silent == []


def test_every_object_schema_forbids_unknown_keys() -> None:
    """Each schema with properties says additionalProperties false, or dispatches on `type` to ones that do."""
    loose = []
    for where, node in walk_schemas(config.load_schema()):
        if "properties" not in node or node.get("additionalProperties") is False:
            continue
        if not all("then" in rule for rule in node.get("allOf", [{}])):
            loose.append(where)
    assert loose == []


@pytest.mark.parametrize(("kind", "union"), [
    ("pagination", model.Pagination), ("auth", model.Auth), ("target", model.TargetConfig),
])
def test_type_enums_match_the_model(kind: str, union: Any) -> None:
    """The schema's types of each typed block are the model's classes, one for one."""
    enum = config.load_schema()["$defs"][kind]["properties"]["type"]["enum"]
    model_types = {cls.__dataclass_fields__["type"].default for cls in union.__args__}
    assert set(enum) == model_types


# --- the example pipelines ------------------------------------------------------------------


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_example_pipeline_validates(path: Path) -> None:
    """Every file in pipelines/ has no error (unset variables are only warnings)."""
    assert errors(config.check_file(path, env={})) == []


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_example_pipeline_names_the_schema(path: Path) -> None:
    """Every file in pipelines/ points editors at the schema on its first line."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/pipeline.schema.json"
