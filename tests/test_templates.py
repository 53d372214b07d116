"""Request templates: `{{ EXPR }}` in source.params, source.headers and source.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import jmespath
import pytest

from runner.config import check_file, load_pipeline, templates
from runner.engine import run
from runner import model
from runner.errors import ConfigError
from runner.model import Source
from runner.state import open_store

PIPELINE = """\
version: 1
name: tickets
source:
  url: https://jira.test/rest/api/2/search
{source}
mapping:
  external_id: key
  fields:
    updated: updated
target:
  type: sqlite
  path: {tmp}/out.db
  table: tickets
state:
  path: {tmp}/state.db
"""

JQL = """\
  records: issues
  params:
    jql: "project = OPS AND updated >= '{{ watermark }}'"
  incremental: {cursor_field: updated, initial_value: '2024-01-01T00:00:00Z'}"""


def write(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.format(source=source, tmp=tmp_path))
    return path


class Api:
    """A search API that records every request and answers with `issues`."""

    def __init__(self, issues: list[dict[str, Any]] | None = None) -> None:
        self.issues = issues or []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json={"issues": self.issues})

    def body(self, index: int = 0) -> Any:
        return json.loads(self.requests[index].content)


def test_jql_param_carries_the_initial_value_then_the_saved_watermark(tmp_path: Path) -> None:
    """A template inside a JQL string sends initial_value on the first run and the saved watermark on the next."""
    path = write(tmp_path, JQL)
    api = Api([{"key": "OPS-1", "updated": "2024-03-01T10:00:00Z"}])
    first = run(path, transport=httpx.MockTransport(api))
    assert first.status == "success"
    assert api.requests[0].url.params["jql"] == "project = OPS AND updated >= '2024-01-01T00:00:00Z'"
    store = open_store(load_pipeline(path).state, read_only=True)
    try:
        assert store.watermark("tickets") == "2024-03-01T10:00:00Z"
    finally:
        store.close()
    run(path, transport=httpx.MockTransport(api))
    assert api.requests[1].url.params["jql"] == "project = OPS AND updated >= '2024-03-01T10:00:00Z'"


def test_exact_template_in_json_keeps_a_number_a_number(tmp_path: Path) -> None:
    """A JSON string that is exactly one template takes the value's JSON type; a longer one writes it as text."""
    path = write(tmp_path, """\
  method: POST
  records: issues
  json: {filter: {since: '{{ watermark }}', label: 'after {{ watermark }}'}, size: 10}
  incremental: {cursor_field: updated, initial_value: 1700000000}""")
    api = Api()
    run(path, transport=httpx.MockTransport(api))
    assert api.body() == {"filter": {"since": 1700000000, "label": "after 1700000000"}, "size": 10}


def test_exact_template_that_is_null_leaves_the_key_out(tmp_path: Path) -> None:
    """With no watermark and no initial value, an exact template's param, header and JSON key are not sent."""
    path = write(tmp_path, """\
  method: POST
  records: issues
  params: {since: '{{ watermark }}', state: all}
  headers: {X-Since: '{{ watermark }}'}
  json: {since: '{{ watermark }}', size: 10}
  incremental: {cursor_field: updated}""")
    api = Api()
    run(path, transport=httpx.MockTransport(api))
    request = api.requests[0]
    assert dict(request.url.params) == {"state": "all"}
    assert "x-since" not in request.headers
    assert api.body() == {"size": 10}


def test_exact_template_in_a_header_is_written_as_text(tmp_path: Path) -> None:
    """A number from an exact template goes in a header as its JSON text."""
    path = write(tmp_path, """\
  records: issues
  headers: {X-Since: '{{ watermark }}'}
  incremental: {cursor_field: updated, initial_value: 42}""")
    api = Api()
    run(path, transport=httpx.MockTransport(api))
    assert api.requests[0].headers["x-since"] == "42"


def test_null_inside_a_longer_string_fails_before_any_request(tmp_path: Path) -> None:
    """A null watermark inside a JQL string is a configuration error (exit 2), and nothing is requested."""
    path = write(tmp_path, JQL.replace(", initial_value: '2024-01-01T00:00:00Z'", ""))
    api = Api()
    with pytest.raises(ConfigError) as caught:
        run(path, transport=httpx.MockTransport(api))
    assert caught.value.exit_code == 2
    assert "give incremental.initial_value or a default with ||" in str(caught.value)
    assert f"{path}:7:10: source.params.jql:" in str(caught.value)
    assert api.requests == []


def test_a_default_with_or_fills_a_null_watermark(tmp_path: Path) -> None:
    """`watermark || '...'` gives a longer string a value when there is no watermark yet."""
    path = write(tmp_path, JQL.replace("{{ watermark }}", "{{ watermark || '1970-01-01' }}").replace(
        ", initial_value: '2024-01-01T00:00:00Z'", ""))
    api = Api()
    run(path, transport=httpx.MockTransport(api))
    assert api.requests[0].url.params["jql"] == "project = OPS AND updated >= '1970-01-01'"


def test_format_date_works_inside_a_template(tmp_path: Path) -> None:
    """Functions work in templates: format_date writes the watermark as JQL's date."""
    path = write(tmp_path, JQL.replace("{{ watermark }}", "{{ format_date(watermark, '%Y-%m-%d') }}"))
    api = Api()
    run(path, transport=httpx.MockTransport(api))
    assert api.requests[0].url.params["jql"] == "project = OPS AND updated >= '2024-01-01'"


def test_a_template_without_param_is_how_the_watermark_is_sent(tmp_path: Path) -> None:
    """`incremental.param` may be left out when a template reads the watermark."""
    assert check_file(write(tmp_path, JQL), env={}) == []


INVALID = [
    ("unclosed", "  records: issues\n  params: {jql: 'updated >= {{ watermark'}\n"
     "  incremental: {cursor_field: updated, param: since}",
     "has no closing '}}'", 6, 17),
    ("bad-expression", "  records: issues\n  headers: {X-Since: '{{ watermark[ }}'}\n"
     "  incremental: {cursor_field: updated, param: since}",
     "invalid JMESPath 'watermark['", 6, 22),
    ("unknown-function", "  records: issues\n  json: {q: ['{{ fmt(watermark) }}']}\n"
     "  incremental: {cursor_field: updated, param: since}",
     "unknown JMESPath function 'fmt()'", 6, 14),
    ("elsewhere", "  records: issues\n  pagination: {type: cursor, path: next, param: 'p{{ watermark }}'}",
     "templates are filled only in url, path, params, headers and json", 6, 49),
    ("never-sent", "  records: issues\n  params: {jql: 'project = OPS'}\n  incremental: {cursor_field: updated}",
     "the watermark is never sent", 7, 3),
]


@pytest.mark.parametrize(("source", "message", "line", "column"), [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_template_is_reported_at_its_line(
    tmp_path: Path, source: str, message: str, line: int, column: int
) -> None:
    """Each broken template is one validation error at the key's line and column."""
    found = [p for p in check_file(write(tmp_path, source), env={}) if p.severity == "error"]
    assert len(found) == 1, [str(p) for p in found]
    assert message in found[0].message
    assert (found[0].line, found[0].column) == (line, column)


# --- templates in the URL, on any context, and what a template is not --------------------------


def write_url(tmp_path: Path, url_lines: str, source: str) -> Path:
    """A pipeline whose `url:` line is replaced by `url_lines` (a url, or base_url + path)."""
    path = write(tmp_path, source)
    path.write_text(path.read_text().replace("  url: https://jira.test/rest/api/2/search\n", url_lines))
    return path


def test_a_watermark_in_the_url_path_is_one_percent_encoded_segment(tmp_path: Path) -> None:
    """`/`, space and `?` in a value that lands in the URL's path are escaped: it stays one segment."""
    path = write_url(tmp_path, "  url: 'https://jira.test/boards/{{ watermark }}/issues?x=1'\n", """\
  records: issues
  incremental: {cursor_field: updated, initial_value: 'a/b c?d'}""")
    api = Api()
    assert run(path, transport=httpx.MockTransport(api)).status == "success"
    assert api.requests[0].url.raw_path == b"/boards/a%2Fb%20c%3Fd/issues?x=1"


@pytest.mark.parametrize("written", ["/v2/{{ watermark }}/issues", "{{ watermark }}/issues"])
def test_a_template_in_path_is_joined_to_base_url(tmp_path: Path, written: str) -> None:
    """base_url + path with a template: joined with one slash, the value encoded, the number as text."""
    path = write_url(tmp_path, f"  base_url: https://jira.test/api/\n  path: '{written}'\n", """\
  records: issues
  incremental: {cursor_field: updated, initial_value: 7}""")
    api = Api()
    run(path, transport=httpx.MockTransport(api))
    expected = b"/api/v2/7/issues" if written.startswith("/v2") else b"/api/7/issues"
    assert api.requests[0].url.raw_path == expected


def test_a_null_watermark_in_the_url_is_a_configuration_error(tmp_path: Path) -> None:
    """Even an exact template cannot leave a URL segment out: null there is exit 2, before any request."""
    path = write_url(tmp_path, "  url: 'https://jira.test/boards/{{ watermark }}'\n", """\
  records: issues
  incremental: {cursor_field: updated}""")
    api = Api()
    with pytest.raises(ConfigError) as caught:
        run(path, transport=httpx.MockTransport(api))
    assert caught.value.exit_code == 2 and api.requests == []
    assert "source.url: '{{ watermark }}' is null, and a value in the URL needs a string or a number" in str(
        caught.value)


def with_templates(source: Source, *texts: tuple[tuple[str | int, ...], str]) -> Source:
    """`source` with templates built from (where, text) as the loader builds them: on `_parent`,
    which only a child resource may read (a simple-form file using it is refused at load)."""
    built = []
    for where, text in texts:
        pieces = templates.split(text)
        parts = [model.Expr(t, jmespath.compile(t)) if is_expression else t for is_expression, t in pieces]
        built.append(templates.Template(where, tuple(parts)))
    return dataclasses.replace(source, templates=tuple(built))


def test_fill_takes_any_context_name(tmp_path: Path) -> None:
    """`_parent` (a child resource's context) fills url, params and json as `watermark` does."""
    loaded = load_pipeline(write(tmp_path, "  records: issues\n  method: POST\n  json: {ids: [], keep: 1}")).source
    source = with_templates(
        loaded, (("url",), "https://jira.test/issues/{{ _parent.key }}/comments"),
        (("params", "q"), "issue = {{ _parent.key }}"), (("params", "since"), "{{ _parent.since }}"),
        (("json", "ids"), "{{ _parent.ids }}"),
    )
    filled = templates.fill(source, {"_parent": {"key": "OPS/1", "ids": [1, 2]}})
    assert filled.url == "https://jira.test/issues/OPS%2F1/comments"
    assert dict(filled.params) == {"q": "issue = OPS/1"}  # the exact null left `since` out
    assert filled.json == {"ids": [1, 2], "keep": 1} and filled.templates == ()


@pytest.mark.parametrize(("parent", "key", "kind"), [
    ({"key": None}, "source.url", "null"),
    ({"key": "OPS-1", "extra": 1}, "source.params.q", "an object"),
])
def test_a_parent_value_that_cannot_be_written_is_a_template_value_error(
    tmp_path: Path, parent: dict[str, Any], key: str, kind: str
) -> None:
    """Not a ConfigError: a TemplateValueError naming the key and the template, so that only
    that parent's children fail."""
    source = with_templates(load_pipeline(write(tmp_path, "  records: issues")).source,
                            (("url",), "https://jira.test/issues/{{ _parent.key }}"),
                            (("params", "q"), "in {{ _parent }}"))
    with pytest.raises(templates.TemplateValueError) as caught:
        templates.fill(source, {"_parent": parent})
    assert not isinstance(caught.value, ConfigError)
    assert (caught.value.key, caught.value.exit_code) == (key, 1)
    template = "{{ _parent.key }}" if key == "source.url" else "{{ _parent }}"
    assert caught.value.template == template
    assert str(caught.value).startswith(f"{key}: '{template}' is {kind}, and ")


def test_a_template_reading_watermark_and_parent_is_the_parents_fault(tmp_path: Path) -> None:
    """An expression that reads a run-time name is that context's error even beside `watermark`;
    one that reads only `watermark` is the file's (ConfigError)."""
    path = write(tmp_path, "  records: issues\n  incremental: {cursor_field: updated, param: s}")
    source = load_pipeline(path).source
    with pytest.raises(templates.TemplateValueError):
        templates.fill(with_templates(source, (("params", "q"), "x {{ _parent.a || watermark }}")),
                       {"watermark": None, "_parent": {}})
    with pytest.raises(ConfigError):
        templates.fill(with_templates(source, (("params", "q"), "x {{ watermark }}")), {"watermark": None})


@pytest.mark.parametrize(("text", "pieces"), [
    ("a {{ join('}}', x) }} b", [(False, "a "), (True, "join('}}', x)"), (False, " b")]),
    ('{{ "}}" }}', [(True, '"}}"')]),
    ("{{ `\"}}\"` }}!", [(True, '`"}}"`'), (False, "!")]),
    ("{{ 'it\\'s }}' }}", [(True, "'it\\'s }}'")]),
    ("{{ {a: b}}}", [(True, "{a: b}")]),
    ("x {{ a }}}", [(False, "x "), (True, "a"), (False, "}")]),
])
def test_split_ends_a_template_at_its_own_closing_braces(text: str, pieces: list[tuple[bool, str]]) -> None:
    """A `}}` in a quoted literal, or closing the expression's own braces, does not end the template."""
    assert templates.split(text) == pieces


def test_an_unclosed_quote_leaves_the_template_unclosed() -> None:
    """`{{ 'a }}` has no `}}` outside its quote: a syntax error, not a half template."""
    with pytest.raises(templates.TemplateSyntaxError, match=r"'\{\{' at character 3 has no closing"):
        templates.split("x {{ 'a }}")


def test_a_closing_brace_in_a_quoted_literal_is_sent_whole(tmp_path: Path) -> None:
    """End to end: `join('}}', ...)` inside a JQL template writes the literal `}}`."""
    path = write(tmp_path, JQL.replace("{{ watermark }}", "{{ join('}}', [watermark, 'z']) }}"))
    api = Api()
    run(path, transport=httpx.MockTransport(api))
    assert api.requests[0].url.params["jql"] == "project = OPS AND updated >= '2024-01-01T00:00:00Z}}z'"


def test_an_environment_value_is_never_a_template(tmp_path: Path) -> None:
    """`${VAR}` whose value holds `{{ ... }}` is sent as written, beside a real template, and is no
    validation error where templates are not allowed (env values are data, not code)."""
    path = write(tmp_path, """\
  records: issues
  params: {q: '${Q} and {{ watermark }}', raw: '${Q}'}
  headers: {X-Note: '${NOTE}'}
  incremental: {cursor_field: updated, initial_value: 'w'}""")
    text = path.read_text().replace("name: tickets", "name: tickets\ndescription: '${NOTE}'")
    path.write_text(text)
    env = {"Q": "{{ watermark }}", "NOTE": "{{ unclosed"}
    assert check_file(path, env=env) == []
    api = Api()
    run(path, env=env, transport=httpx.MockTransport(api))
    request = api.requests[0]
    assert dict(request.url.params) == {"q": "{{ watermark }} and w", "raw": "{{ watermark }}"}
    assert request.headers["x-note"] == "{{ unclosed"


def test_an_environment_value_fills_an_expression_as_text(tmp_path: Path) -> None:
    """`${VAR}` inside `{{ }}` is filled before the expression compiles (as in every JMESPath key)."""
    path = write(tmp_path, JQL.replace("{{ watermark }}", "{{ watermark || '${SINCE}' }}").replace(
        ", initial_value: '2024-01-01T00:00:00Z'", ""))
    api = Api()
    run(path, env={"SINCE": "2023-06-01"}, transport=httpx.MockTransport(api))
    assert api.requests[0].url.params["jql"] == "project = OPS AND updated >= '2023-06-01'"


def test_a_template_in_base_url_is_a_validation_error(tmp_path: Path) -> None:
    """Only url, path, params, headers and json take templates: base_url is refused at its line."""
    path = write_url(tmp_path, "  base_url: 'https://{{ watermark }}.jira.test'\n  path: /search\n",
                     "  records: issues\n  incremental: {cursor_field: updated, param: since}")
    found = [p for p in check_file(path, env={}) if p.severity == "error"]
    assert [(p.path, p.line, p.message) for p in found] == [
        ("source.base_url", 4, "templates are filled only in url, path, params, headers and json")]
