"""Fuzz tests: whatever the bytes, the pipeline loader gives problems and the response decoder a ResponseError.

The loader (`check_file`, `load_pipeline`) is fed random text and bytes,
random YAML documents, mutations of `pipelines/demo.yaml`, deep nesting,
alias graphs and odd scalars; it either succeeds or raises ConfigError,
within a time bound, and `etl validate` prints no traceback. The decoder
(`reader.decode`) is fed random bytes, random JSON and deep nesting.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import config
from runner.cli import main
from runner.errors import ConfigError, ResponseError
from runner.extract.reader import decode

ROOT = Path(__file__).resolve().parent.parent
DEMO = (ROOT / "pipelines" / "demo.yaml").read_text(encoding="utf-8")
DEMO_DATA = yaml.safe_load(DEMO)
SECONDS = 2.0  # per example, on a slow shared machine; a typical one takes milliseconds

FUZZ = settings(
    max_examples=200,
    deadline=timedelta(seconds=SECONDS),
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# A pipeline-shaped example costs some 10-30 ms (PyYAML is pure Python, and each is loaded twice):
# fewer of them keep the module within a few seconds.
SHAPED = settings(FUZZ, max_examples=60)
FEWER = settings(FUZZ, max_examples=30)


@pytest.fixture(scope="module", autouse=True)
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One empty working directory for the module (no ./.env), shared by every example."""
    path = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(path)
        yield path


# --- what every example must do -------------------------------------------------------------


def loads_or_config_error(content: str | bytes) -> None:
    """check_file returns problems and load_pipeline a pipeline or a ConfigError, both in time."""
    path = Path.cwd() / "fuzz.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    started = time.perf_counter()
    problems = config.check_file(path, env={})
    assert all("\n" not in str(p) for p in problems), problems  # each problem prints as one line
    errors = [p for p in problems if p.severity == "error"]
    try:
        config.load_pipeline(path, env={})
    except ConfigError as exc:
        assert exc.problems and exc.exit_code == 2
    else:
        assert not errors, errors
    assert time.perf_counter() - started < SECONDS


def decodes_or_response_error(body: bytes) -> Any:
    """decode returns a value or raises ResponseError; the sentinel ResponseError stands for the latter."""
    response = httpx.Response(200, content=body, request=httpx.Request("GET", "http://api.test/items"))
    try:
        return decode(response)
    except ResponseError as exc:
        assert "\n" not in str(exc)
        return ResponseError


# --- strategies -------------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities included
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=25,
)
WEIRD = st.sampled_from([
    ".inf", "-.inf", ".nan", ".NaN", "1.0e+400", "9" * 5000, "0x" + "f" * 5000, "1" + ":1" * 5000,
    "0o777", "0b101", "1_000", "190:20:30", "~", "null", "yes", "no", "on", "2024-01-01",
    "!!binary aGk=", "!!timestamp 2024-01-01", "!!int x", "!!int ''", "!!bool x", "!!float x",
    "!!set {a, b}", "!!omap [a: 1]", "!!python/object:os.system x", "!custom x", "&x 1", "*x",
    "'\\x00'", '"\\0"', '"\\uffff"', '"a\\nb"', "|\n  a\n  b", "'${A'", "${", "$${x}", "${1 x}",
    "'" + "${" * 5000 + "'", "[]", "{}", "[[[[]]]]", "{<<: 1}", "-", "? a", "@", "`x`", "%TAG",
])
SPLICES = [  # (text of demo.yaml to replace, template of its replacement with {w} for the weird value)
    ("name: demo", "name: {w}"),
    ("description: The local demo API's items into data/demo.db", "description: {w}"),
    ("size: 100,", "size: {w},"),
    ("  records: data", "  records: {w}"),
    ("  records: data", "  records: data\n  concurrency: {w}"),
    ("  records: data", "  records: data\n  timeout: {{read: {w}}}"),
    ("  records: data", "  records: data\n  limits: {{max_pages: {w}, max_seconds: {w}}}"),
    ("  records: data", "  records: data\n  rate_limit: {{requests_per_second: {w}}}"),
    ("  records: data", "  records: data\n  retry: {{max_attempts: {w}, also_on: [{w}]}}"),
    ("  records: data", "  records: data\n  params: {{q: {w}}}\n  json: {{a: {w}}}"),
    ("  records: data", "  records: data\n  auth: {{type: bearer, token: {w}}}"),
    ("    name: name", "    {w}: name"),
    ("    name: name", "    name: {w}"),
    ("  external_id: to_string(id)", "  external_id: {w}"),
    ("  table: items", "  table: {w}"),
    ("  path: data/demo.db", "  path: {w}"),
]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a parsed document, its root included."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


DEMO_PATHS = [path for path in _paths(DEMO_DATA) if all(isinstance(key, str) for key in path)]


@st.composite
def mutated_demo(draw: st.DrawFn) -> str:
    """demo.yaml with a few values replaced, keys removed or keys added, dumped as YAML again."""
    data = copy.deepcopy(DEMO_DATA)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(DEMO_PATHS))
        if not path:
            data = draw(VALUES)
            continue
        parent = _get(data, path[:-1])
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue  # an earlier mutation removed it
        operation = draw(st.sampled_from(["replace", "delete", "add"]))
        if operation == "replace":
            parent[path[-1]] = draw(VALUES)
        elif operation == "delete":
            del parent[path[-1]]
        else:
            parent[draw(st.text(max_size=10))] = draw(VALUES)
    return yaml.safe_dump(data, allow_unicode=draw(st.booleans()), default_flow_style=draw(st.booleans()))


@st.composite
def edited_demo(draw: st.DrawFn) -> str:
    """demo.yaml with a span of its text replaced by random text."""
    start = draw(st.integers(0, len(DEMO)))
    end = draw(st.integers(start, min(len(DEMO), start + 20)))
    return DEMO[:start] + draw(st.text(max_size=12)) + DEMO[end:]


@st.composite
def spliced_demo(draw: st.DrawFn) -> str:
    """demo.yaml with an odd scalar (.inf, 5,000 digits, a tag, an unclosed variable) at a typed place."""
    old, template = draw(st.sampled_from(SPLICES))
    weird = draw(WEIRD | st.text(max_size=8))
    return DEMO.replace(old, template.format(w=weird), 1)


@st.composite
def deep_document(draw: st.DrawFn) -> str:
    """A pipeline whose `description` (or `source.json`) nests lists or mappings up to 250 or 1,500 levels."""
    kind = draw(st.sampled_from(["flow-list", "flow-map", "block-map", "block-list"]))
    depth = draw(st.integers(1, 250 if kind.startswith("flow") else 1500))  # flow: PyYAML scans it in O(depth²)
    if kind == "flow-list":
        value = "[" * depth + "1" + "]" * depth
    elif kind == "flow-map":
        value = "{a: " * depth + "1" + "}" * depth
    elif kind == "block-map":
        value = "\n" + "".join(" " * (i + 2) + f"k{i}:\n" for i in range(depth))
    else:
        value = "- " * depth + "1"
    if draw(st.booleans()):
        return DEMO.replace("description: The local demo API's items into data/demo.db", f"description: {value}")
    return DEMO.replace("  records: data", f"  records: data\n  json: {value.replace(chr(10), chr(10) + '  ')}")


@st.composite
def alias_graph(draw: st.DrawFn) -> str:
    """Anchored lists or mappings referring to earlier ones (a "billion laughs" among them), then a pipeline."""
    lines = []
    for i in range(draw(st.integers(1, 12))):
        refs = [f"*a{draw(st.integers(0, i - 1))}" if i and draw(st.booleans()) else '"lol"'
                for _ in range(draw(st.integers(0, 12)))]
        if draw(st.booleans()) and i:  # merge keys: `<<: [*a0, *a1]` into a mapping
            merged = [r for r in refs if r.startswith("*")] or [f"*a{i - 1}"]
            lines.append(f"a{i}: &a{i} {{<<: [{', '.join(merged)}], k{i}: v}}")
        elif draw(st.booleans()):
            lines.append(f"a{i}: &a{i} {{k{i}: [{', '.join(refs)}]}}")
        else:
            lines.append(f"a{i}: &a{i} [{', '.join(refs)}]")
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["loop: &z [*z]", "self: &s {<<: *s}", "undefined: *nope", "dup: &a0 1"])))
    return "\n".join(lines) + "\n" + DEMO


def laughs(levels: int, width: int) -> str:
    lines = ["a0: &a0 [" + ",".join(['"lol"'] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# --- the pipeline loader ------------------------------------------------------------------------------


@FUZZ
@given(st.text())
def test_random_text(text: str) -> None:
    """Any text is a pipeline or a ConfigError."""
    loads_or_config_error(text)


@FUZZ
@given(st.binary(max_size=300) | st.builds(lambda b, i: DEMO.encode()[:i] + b + DEMO.encode()[i:],
                                           st.binary(min_size=1, max_size=4), st.integers(0, len(DEMO))))
def test_random_bytes(content: bytes) -> None:
    """Any bytes, UTF-8 or not, are a pipeline or a ConfigError."""
    loads_or_config_error(content)


@SHAPED
@given(VALUES)
def test_random_yaml_documents(value: Any) -> None:
    """Any document YAML can dump (NaN and infinities included) is a pipeline or a ConfigError."""
    loads_or_config_error(yaml.safe_dump(value))


@SHAPED
@given(mutated_demo() | edited_demo() | spliced_demo())
def test_mutations_of_the_demo_pipeline(text: str) -> None:
    """demo.yaml with values, keys or text changed is a pipeline or a ConfigError."""
    loads_or_config_error(text)


@FEWER
@given(deep_document())
def test_deep_nesting(text: str) -> None:
    """Nesting of any depth is a pipeline or a ConfigError, never a RecursionError."""
    loads_or_config_error(text)


@FEWER
@given(alias_graph() | st.builds(laughs, st.integers(1, 12), st.integers(1, 12)))
def test_aliases(text: str) -> None:
    """Alias graphs, bombs included, are a pipeline or a ConfigError in bounded time."""
    loads_or_config_error(text)


def test_the_demo_pipeline_loads() -> None:
    """The starting point of the mutations is valid, so that the mutations test more than the YAML reader."""
    assert config.check_file(ROOT / "pipelines" / "demo.yaml", env={}) == []


# --- etl validate on adversarial files ------------------------------------------------------------------


ADVERSARIAL: dict[str, str | bytes] = {
    "laughs.yaml": laughs(9, 10),
    "merge-laughs.yaml": "m0: &m0 {k: v}\n" + "".join(
        f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}\n" for i in range(1, 9)),
    "deep-flow.yaml": "version: 1\ndescription: " + "[" * 20_000 + "]" * 20_000 + "\n",
    "deep-block.yaml": "version: 1\ndescription:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 3001)),
    "huge-int.yaml": DEMO.replace("size: 100,", "size: " + "9" * 5000 + ","),
    "sexagesimal.yaml": DEMO.replace("size: 100,", "size: 1" + ":1" * 5000 + ","),
    "nan.yaml": DEMO.replace("  records: data", "  records: data\n  timeout: {read: .nan, connect: .inf}"),
    "binary-tag.yaml": DEMO.replace("  records: data", "  records: data\n  json: !!binary aGk="),
    "unclosed-variables.yaml": DEMO.replace("name: demo", "name: demo\ndescription: '" + "${" * 50_000 + "'"),
    "latin-1.yaml": DEMO.replace("local", "l\u00f6cal").encode("latin-1"),
    "nul.yaml": b"version: 1\x00\nname: x\n",
    "newline-key.yaml": DEMO.replace("    name: name", '    "name\\n": name'),
    "self-alias.yaml": DEMO + "x: &x [*x]\n",
    "empty.yaml": "",
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_validate_prints_no_traceback(workdir: Path, name: str) -> None:
    """`etl validate` on an adversarial file prints only lines about that file, no traceback, and exits 0 or 1."""
    content = ADVERSARIAL[name]
    path = workdir / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["validate", name])
    assert time.perf_counter() - started < 5
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1) and isinstance(result.exception, (SystemExit, type(None)))
    assert all(line.startswith(f"{name}:") for line in result.stdout.splitlines()), result.stdout[-300:]


# --- the response decoder --------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=40,
)


@FUZZ
@given(st.binary(max_size=500))
def test_decode_random_bytes(body: bytes) -> None:
    """Any body is a value or a ResponseError."""
    decodes_or_response_error(body)


@SHAPED
@given(JSON_VALUES)
def test_decode_random_json(value: Any) -> None:
    """Any JSON document of modest depth decodes to the value it encodes (infinities as written by json)."""
    assert decodes_or_response_error(json.dumps(value).encode()) == value


@FEWER
@given(st.integers(1, 60_000), st.sampled_from(["list", "object", "record"]))
def test_decode_deep_nesting(depth: int, kind: str) -> None:
    """Lists or objects nested more than 200 levels are one ResponseError, never a RecursionError."""
    if kind == "list":
        body = "[" * depth + "]" * depth
    elif kind == "object":
        body = '{"a":' * depth + "1" + "}" * depth
    else:  # a record's field: {"data": [{"v": [...]}]} is 3 levels before the field's own
        body = '{"data":[{"id":1,"v":' + "[" * depth + "]" * depth + "}]}"
        depth += 3
    assert (decodes_or_response_error(body.encode()) is ResponseError) == (depth > 200)


@pytest.mark.parametrize(("depth", "too_deep"), [(200, False), (201, True), (50_000, True)])
def test_decode_limits_nesting_to_200_levels(depth: int, too_deep: bool) -> None:
    """200 levels of nesting decode; 201, or 50,000 (past json's own recursion limit), are one clean ResponseError."""
    body = ('{"data":[' + "[" * (depth - 2) + "]" * (depth - 2) + "]}").encode()
    response = httpx.Response(200, content=body, request=httpx.Request("GET", "http://api.test/items"))
    if not too_deep:
        assert isinstance(decode(response)["data"], list)
        return
    with pytest.raises(ResponseError) as caught:
        decode(response)
    assert str(caught.value) == "GET /items: response nested deeper than 200 levels"
    assert caught.value.__cause__ is None and caught.value.__context__ is None  # no RecursionError chained


def test_decode_keeps_nan_as_json_reads_it() -> None:
    """NaN and Infinity literals still decode as json's floats: what a target does with them is not decode's concern."""
    response = httpx.Response(200, content=b'[NaN, Infinity, 1e400]')
    assert [math.isnan(v) or math.isinf(v) for v in decode(response)] == [True, True, True]
