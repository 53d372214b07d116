"""`etl init NAME --url URL`: one GET, a commented pipeline file that validates and, run,
lands every record; credentials become variables; what it cannot tell, it says."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from click.testing import CliRunner

from runner import log
from runner.authoring.infer import infer
from runner.authoring.init import init_pipeline
from runner.cli import main
from runner.config import check_file, load_pipeline
from runner.dev.demo_api import DemoApi
from runner.dev.localserver import Handler, LocalServer
from runner.engine import run

StartApi = Callable[..., DemoApi]
TOKEN = "init-secret-token-4242"


class _Handler(Handler):
    do_GET = Handler.dispatch


class CursorApi(LocalServer):
    """`GET /v2/events?cursor=`: 40 events, 15 a page, `{"results", "meta": {"next_cursor", "has_more"}}`;
    the last page's cursor is a non-empty string (only has_more says it is the last), and a request
    without the bearer token is a 401."""

    handler_class = _Handler

    def __init__(self) -> None:
        super().__init__()
        self.events = [
            {"event_id": f"ev_{n:03d}", "kind": "click" if n % 2 else "view",
             "at": f"2024-05-{1 + n % 28:02d}T10:00:00Z", "value": n * 1.5, "day": f"2024-05-{1 + n % 28:02d}",
             "ok": n % 3 == 0, "extra": None}
            for n in range(40)
        ]

    def handle(self, handler: Handler) -> None:
        if handler.headers.get("Authorization") != f"Bearer {TOKEN}":
            handler.send_reply(401, b'{"error": "unauthorized"}')
            return
        query = parse_qs(urlsplit(handler.path).query)
        start = int(query["cursor"][0].removeprefix("c")) if "cursor" in query else 0
        chunk = self.events[start : start + 15]
        more = start + 15 < len(self.events)
        body = {"results": chunk, "meta": {"next_cursor": f"c{start + 15}", "has_more": more}}
        handler.send_reply(200, json.dumps(body).encode())


def _init(tmp_path: Path, name: str, url: str, **options: Any) -> tuple[Path, str]:
    written = init_pipeline(name, url, out=tmp_path / f"{name}.yaml", **options)
    assert written.problems == ()
    return written.path, written.path.read_text()


def _lands_every_record(path: Path, expected: int, env: dict[str, str] | None = None) -> None:
    problems = [p for p in check_file(path, env=env or {}) if p.severity == "error"]
    assert problems == []
    result = run(path, env=env or {})
    assert (result.status, result.counts.created, result.counts.failed) == ("success", expected, 0)


@pytest.mark.parametrize(
    ("style", "pagination"),
    [
        ("link_header", {"type": "link_header"}),
        ("next_url", {"type": "next_url", "path": "next"}),
        ("page", {"type": "page", "param": "page", "size_param": "per_page", "size": 100,
                  "total_pages": "total_pages"}),
        ("offset", {"type": "offset", "param": "offset", "limit_param": "limit", "limit": 100, "total": "total"}),
    ],
)
def test_demo_shapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_api: StartApi, style: str, pagination: dict[str, Any]
) -> None:
    """Each paging shape of the demo API is recognised; the file validates and its run lands all 250 records."""
    monkeypatch.chdir(tmp_path)
    api = demo_api(records=250)
    path, text = _init(tmp_path, f"demo-{style.replace('_', '-')}", f"{api.base_url}/items/{style}")
    document = yaml.safe_load(text)
    assert document["source"]["pagination"] == pagination
    assert document["source"]["records"] == ("@" if style == "link_header" else "data")
    assert document["mapping"]["external_id"] == "to_string(id)"
    assert "  pagination: {type: " in text and "# guess: " in text
    _lands_every_record(path, 250)


def test_cursor_with_has_more_and_a_bearer_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cursor and a nested has_more flag: `cursor` with `stop_when: "!(meta.has_more)"`; the token is a
    variable, never written; the run with the variable set lands all 40 records."""
    monkeypatch.chdir(tmp_path)
    with CursorApi() as api:
        path, text = _init(tmp_path, "events", f"{api.base_url}/v2/events", headers=[f"Authorization: Bearer {TOKEN}"])
        document = yaml.safe_load(text)
        assert document["source"]["pagination"] == {
            "type": "cursor", "path": "meta.next_cursor", "param": "cursor", "stop_when": "!(meta.has_more)",
        }
        assert document["source"]["auth"] == {"type": "bearer", "token": "${EVENTS_TOKEN}"}
        assert TOKEN not in text
        assert document["mapping"]["external_id"] == "event_id"
        fields = document["mapping"]["fields"]
        assert fields["event_id"] == {"path": "event_id", "type": "string"}
        assert fields["at"] == {"path": "at", "type": "timestamp"}
        assert fields["day"] == {"path": "day", "type": "date"}
        assert fields["value"] == {"path": "value", "type": "number"}
        assert fields["ok"] == {"path": "ok", "type": "boolean"}
        assert fields["extra"] == {"path": "extra", "type": "json"}
        assert "extra: {path: extra, type: json}   # could not tell the type: always null on this page" in text
        _lands_every_record(path, 40, env={"EVENTS_TOKEN": TOKEN})


def test_cannot_tell_the_paging_so_it_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_api: StartApi
) -> None:
    """A body with no paging sign: `pagination: {type: none}`, a comment saying why, and the CLI says it too."""
    monkeypatch.chdir(tmp_path)
    api = demo_api(records=20)
    result = CliRunner().invoke(main, ["init", "flat", "--url", f"{api.base_url}/items/none", "--out", "flat.yaml"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "flat.yaml").read_text()
    assert "  pagination: {type: none}   # could not tell how this API pages" in text
    assert result.output.splitlines()[0] == "flat.yaml: written from 20 records; check each line marked 'guess'"
    assert "could not tell how this API pages" in result.output
    _lands_every_record(tmp_path / "flat.yaml", 20)


def test_key_headers_and_query_keys_become_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     demo_api: StartApi) -> None:
    """An X-Api-Key header and an api_key in the query become `api_key` auth with a variable; the
    values are nowhere in the file; a plain header stays as given."""
    monkeypatch.chdir(tmp_path)
    api = demo_api(records=5)
    headers = ["X-Api-Key: hdr-secret-777", "Accept: application/json"]
    _, text = _init(tmp_path, "keyed", f"{api.base_url}/items/none", headers=headers)
    source = yaml.safe_load(text)["source"]
    assert source["auth"] == {"type": "api_key", "name": "X-Api-Key", "value": "${KEYED_API_KEY}"}
    assert source["headers"] == {"Accept": "application/json"}
    assert "hdr-secret-777" not in text
    # the key is masked from now on in this process; a plain header's value is not a secret
    assert log.redact("hdr-secret-777 application/json") == "*** application/json"
    _, text = _init(tmp_path, "queried", f"{api.base_url}/items/none?api_key=q-secret-888&sort=updated_at")
    source = yaml.safe_load(text)["source"]
    assert source["auth"] == {"type": "api_key", "name": "api_key", "value": "${QUERIED_API_KEY}", "in": "query"}
    assert source["params"] == {"sort": "updated_at"}
    assert "q-secret-888" not in text


def test_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad NAME, a relative URL, an existing file, a malformed header: exit 2 with the reason."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "there.yaml").write_text("keep me")
    cases = [
        (["init", "Bad Name", "--url", "http://127.0.0.1:9/x"], "a pipeline name is lowercase letters"),
        (["init", "ok", "--url", "/x"], "give an absolute http:// or https:// URL"),
        (["init", "ok", "--url", "http://127.0.0.1:9/x", "--out", "there.yaml"], "there.yaml exists; give another"),
        (["init", "ok", "--url", "http://127.0.0.1:9/x", "--header", "no colon"], "write it as 'Name: value'"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr
    assert (tmp_path / "there.yaml").read_text() == "keep me"


def test_types_and_ids_from_every_record() -> None:
    """A type holds for every record or it is json; an id that repeats is no external id."""
    records = [
        {"id": 1, "n": 1, "x": 1, "when": "2024-01-01T00:00:00", "mixed": "a", "tags": ["a"]},
        {"id": 1, "n": 2.5, "x": "one", "when": "2024-01-02T00:00:00+02:00", "mixed": 3, "tags": []},
    ]
    found = infer({"items": records, "count": 2}, {}, "https://api.test/things")
    types = {f.name: f.type for f in found.fields}
    assert types == {"id": "integer", "n": "number", "x": "json", "when": "timestamp", "mixed": "json", "tags": "json"}
    assert found.external_id.value == "id"
    assert found.external_id.why.startswith("could not tell the external id")
    assert found.pagination.value == {"type": "none"}
    assert found.records.value == "items"


def test_odd_keys_are_quoted_paths_and_valid_names() -> None:
    """`@odata.etag` is read as `"@odata.etag"` into a field named `odata_etag`; `external_id` is renamed."""
    found = infer({"value": [{"@odata.etag": "W/1", "external_id": "e", "Id": "x"}]}, {}, "https://api.test/x")
    assert [(f.name, f.path) for f in found.fields] == [
        ("odata_etag", '"@odata.etag"'), ("source_external_id", "external_id"), ("Id", "Id"),
    ]
    assert found.external_id.value == "Id"


def test_the_written_file_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_api: StartApi) -> None:
    """The file is a pipeline the loader builds: its name, table and typed fields as written."""
    monkeypatch.chdir(tmp_path)
    api = demo_api(records=3)
    path, _ = _init(tmp_path, "my-items", f"{api.base_url}/items/none")
    pipeline = load_pipeline(path, env={})
    assert pipeline.name == "my-items"
    assert pipeline.target.table == "my_items"  # type: ignore[union-attr]
    assert [name for name, _ in pipeline.mapping.fields][:3] == ["id", "name", "email"]
