"""The HTTP keys of a pipeline file: `auth.hosts`, finite numbers, and bounded timeouts and rates."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import config, model
from runner.errors import Problem

BASE = """\
version: 1
name: demo
source:
  url: https://api.example.com/items
  auth: {type: bearer, token: tok-123456}
  records: data
mapping:
  external_id: to_string(id)
  fields:
    name: name
target:
  type: jsonl
  path: out.jsonl
"""


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty working directory, so no ./.env leaks in."""
    monkeypatch.chdir(tmp_path)


def problems(tmp_path: Path, old: str, new: str, env: dict[str, str] | None = None) -> list[Problem]:
    assert old in BASE
    path = tmp_path / "pipeline.yaml"
    path.write_text(BASE.replace(old, new, 1), encoding="utf-8")
    return [p for p in config.check_file(path, env=env or {}) if p.severity == "error"]


# (id, text to replace, replacement, expected message, line, column)
INVALID = [
    ("connect-inf", "  records: data", "  records: data\n  timeout: {connect: .inf}",
     "numbers must be finite, got .inf", 7, 22),
    ("read-nan", "  records: data", "  records: data\n  timeout: {read: .nan}",
     "numbers must be finite, got .nan", 7, 19),
    ("body-minus-inf", "  records: data", "  records: data\n  json: {a: [1, -.inf]}",
     "numbers must be finite, got -.inf", 7, 17),
    ("rate-inf", "  records: data", "  records: data\n  rate_limit: {requests_per_second: .inf}",
     "numbers must be finite, got .inf", 7, 37),
    ("read-absurd", "  records: data", "  records: data\n  timeout: {read: 1.0e+300}",
     "must be at most 3600, got 1e+300", 7, 19),
    ("connect-over-an-hour", "  records: data", "  records: data\n  timeout: {connect: 3601}",
     "must be at most 3600, got 3601", 7, 22),
    ("rate-too-slow", "  records: data", "  records: data\n  rate_limit: {requests_per_second: 1.0e-9}",
     "must be at least 0.001, got 1e-09", 7, 37),
    ("rate-too-fast", "  records: data", "  records: data\n  rate_limit: {requests_per_second: 1.0e+300}",
     "must be at most 100000, got 1e+300", 7, 37),
    ("hosts-with-path", "token: tok-123456}", "token: tok-123456, hosts: ['https://cdn.example.com/files']}",
     "invalid value 'https://cdn.example.com/files'", 5, 51),
    ("hosts-not-a-list", "token: tok-123456}", "token: tok-123456, hosts: https://cdn.example.com}",
     "expected a list, got a string", 5, 50),
]


@pytest.mark.parametrize(("old", "new", "message", "line", "column"), [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_http_numbers_and_hosts(
    tmp_path: Path, old: str, new: str, message: str, line: int, column: int
) -> None:
    """Each case is exactly one error, at the value, with a readable message."""
    found = problems(tmp_path, old, new)
    assert len(found) == 1, [str(p) for p in found]
    assert message in found[0].message
    assert (found[0].line, found[0].column) == (line, column)


def test_an_infinite_number_from_the_environment_is_refused(tmp_path: Path) -> None:
    """An unquoted `${VAR}` read as `.inf` is as wrong as one written in the file."""
    text = "  records: data\n  timeout:\n    read: ${READ}"
    found = problems(tmp_path, "  records: data", text, env={"READ": ".inf"})
    assert [p.message for p in found] == ["numbers must be finite, got .inf"]


def test_the_bounds_themselves_are_allowed(tmp_path: Path) -> None:
    """timeout 3600 and rates 0.001 and 100000 are valid."""
    assert problems(tmp_path, "  records: data", "  records: data\n  timeout: {connect: 3600, read: 3600}") == []
    assert problems(tmp_path, "  records: data", "  records: data\n  rate_limit: {requests_per_second: 0.001}") == []
    assert problems(tmp_path, "  records: data", "  records: data\n  rate_limit: {requests_per_second: 100000}") == []


@pytest.mark.parametrize(
    "auth",
    [
        "{type: bearer, token: t-123456, hosts: [%s]}",
        "{type: basic, username: u, password: p-123456, hosts: [%s]}",
        "{type: api_key, name: key, value: k-123456, in: query, hosts: [%s]}",
        "{type: oauth2_client_credentials, token_url: 'https://a.example.com/t', client_id: c,"
        " client_secret: s-123456, hosts: [%s]}",
    ],
    ids=["bearer", "basic", "api_key", "oauth2"],
)
def test_every_auth_type_takes_hosts(tmp_path: Path, auth: str) -> None:
    """`auth.hosts` is a key of every auth type and reaches the model as a tuple of origins."""
    hosts = "'https://cdn.example.com', 'http://127.0.0.1:8080/'"
    path = tmp_path / "p.yaml"
    path.write_text(BASE.replace("{type: bearer, token: tok-123456}", auth % hosts), encoding="utf-8")
    pipeline = config.load_pipeline(path, env={})
    assert pipeline.source.auth is not None
    assert pipeline.source.auth.hosts == ("https://cdn.example.com", "http://127.0.0.1:8080/")


def test_hosts_default_to_none(tmp_path: Path) -> None:
    """Without `hosts` only the first request's origin gets the credentials."""
    path = tmp_path / "p.yaml"
    path.write_text(BASE, encoding="utf-8")
    auth = config.load_pipeline(path, env={}).source.auth
    assert isinstance(auth, model.BearerAuth) and auth.hosts == ()


def test_schema_documents_hosts_for_every_auth_type() -> None:
    """Each auth type's schema has `hosts`, with a description and the default []."""
    defs = config.load_schema()["$defs"]
    for name in ("auth_bearer", "auth_basic", "auth_api_key", "auth_oauth2_client_credentials"):
        hosts = defs[name]["properties"]["hosts"]
        assert hosts["default"] == [] and "Default: []" in hosts["description"]
