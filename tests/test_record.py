"""`etl run --record DIR`: one readable JSON file per source exchange, env.json, recording.json,
and no secret in any byte of them, for every auth style; the token exchange is never recorded.

The stand-in API refuses a request without the right credential (401, as most APIs do), so a
recording cannot pass by a run that sent none; and it echoes the credential where real APIs do
(the api key in the next URL it returns, a session cookie), so the scrubbing is exercised."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import httpx
import pytest
from click.testing import CliRunner

from runner.authoring.fixtures import Scrubber, encode_body
from runner.authoring.record import file_variables, record_run
from runner.cli import main
from runner.config import load_pipeline
from runner.dev.localserver import Handler, LocalServer
from conftest import whole, write_pipeline_file

TOKEN = "tok-Sup3r+Secret/Value=="
API_KEY = "key with spaces&and=signs?"
USER, PASSWORD = "reporting", "p@ss:w0rd/+%"
CLIENT_ID, CLIENT_SECRET = "etl-client", "cs-9f8e7d6c+/=ZZ"
ACCESS = "at-issued-by-the-token-endpoint-77"
ITEMS = [{"id": n, "name": f"item {n}", "kind": "widget"} for n in range(1, 8)]


class _Handler(Handler):
    do_GET = Handler.dispatch
    do_POST = Handler.dispatch


class AuthApi(LocalServer):
    """`GET /items?page=N&kind=widget`: 3 items a page, `next` an absolute URL; one auth style.

    An api key in the query comes back inside `next` (as APIs that sign their links do);
    every answer sets a session cookie that holds the credential. `POST /oauth/token` is an
    RFC 6749 client-credentials endpoint."""

    handler_class = _Handler

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style
        self.seen: list[str] = []
        self.token_requests = 0

    def handle(self, handler: Handler) -> None:
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        if parts.path == "/oauth/token":
            self.token(handler)
            return
        if not self.authorized(handler, query):
            self.reply(handler, 401, {"error": "unauthorized"})
            return
        self.seen.append(handler.path)
        if query.get("kind") != ["widget"]:
            self.reply(handler, 400, {"error": "kind must be widget"})
            return
        page = int(query.get("page", ["1"])[0])
        chunk = ITEMS[(page - 1) * 3 : page * 3]
        next_url = None
        if page * 3 < len(ITEMS):
            next_url = f"{self.base_url}/items?page={page + 1}&kind=widget"
            if self.style == "api_key":
                next_url += f"&api_key={quote_plus(API_KEY)}"
        self.reply(handler, 200, {"items": chunk, "next": next_url})

    def authorized(self, handler: Handler, query: dict[str, list[str]]) -> bool:
        header = handler.headers.get("Authorization", "")
        if self.style == "bearer":
            return header == f"Bearer {TOKEN}"
        if self.style == "basic":
            return header == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.style == "api_key":
            return bool(query.get("api_key")) and all(v == API_KEY for v in query["api_key"])
        return header == f"Bearer {ACCESS}"

    def token(self, handler: Handler) -> None:
        form = parse_qs(handler.read_body().decode())
        self.token_requests += 1
        if form.get("grant_type") != ["client_credentials"] or form.get("client_secret") != [CLIENT_SECRET]:
            self.reply(handler, 401, {"error": "invalid_client"})
            return
        self.reply(handler, 200, {"access_token": ACCESS, "token_type": "Bearer", "expires_in": 3600})

    def reply(self, handler: Handler, status: int, body: dict[str, Any]) -> None:
        secret = {"bearer": TOKEN, "basic": PASSWORD, "api_key": API_KEY}.get(self.style, ACCESS)
        cookie = ("Set-Cookie", f"session={quote(secret, safe='')}; HttpOnly")
        handler.send_reply(status, json.dumps(body).encode(), headers=[cookie])


AUTH = {
    "bearer": {"type": "bearer", "token": "${API_TOKEN}"},
    "api_key": {"type": "api_key", "name": "api_key", "value": "${API_KEY}", "in": "query"},
    "basic": {"type": "basic", "username": "${API_USER}", "password": "${API_PASSWORD}"},
    "oauth2": {
        "type": "oauth2_client_credentials", "token_url": "{base_url}/oauth/token",
        "client_id": "${CLIENT_ID}", "client_secret": "${CLIENT_SECRET}",
    },
}
ENV = {
    "API_TOKEN": TOKEN, "API_KEY": API_KEY, "API_USER": USER, "API_PASSWORD": PASSWORD,
    "CLIENT_ID": CLIENT_ID, "CLIENT_SECRET": CLIENT_SECRET, "ITEM_KIND": "widget",
}


def _pipeline(tmp_path: Path, base_url: str, style: str) -> Path:
    return write_pipeline_file(
        tmp_path, base_url, file=f"{style}.yaml", name=f"auth-{style.replace('_', '-')}",
        source=whole({
            "url": "{base_url}/items", "params": {"kind": "${ITEM_KIND}"}, "auth": AUTH[style],
            "records": "items", "pagination": {"type": "next_url", "path": "next"},
        }),
        mapping=whole({"external_id": "to_string(id)", "fields": {"name": "name", "kind": "kind"}}),
        target=whole({"type": "jsonl", "path": "{tmp}/out.jsonl"}),
    )


def _spellings(secret: str) -> set[str]:
    raw = secret.encode()
    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}
    for b64 in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        forms |= {b64, b64.rstrip("=")}
    return forms


SECRETS = [TOKEN, API_KEY, PASSWORD, f"{USER}:{PASSWORD}", CLIENT_SECRET, ACCESS]


def _assert_no_secret(directory: Path) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    assert files
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            for form in _spellings(secret):
                assert form.encode() not in data, f"{path.name} holds {secret!r} as {form!r}"


@pytest.mark.parametrize("style", ["bearer", "api_key", "basic", "oauth2"])
def test_no_secret_in_any_recorded_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, style: str) -> None:
    """A recorded run with each auth style writes every exchange, and no secret in any spelling."""
    monkeypatch.chdir(tmp_path)
    with AuthApi(style) as api:
        file = _pipeline(tmp_path, api.base_url, style)
        pipeline = load_pipeline(file, env=ENV)
        result = record_run(pipeline, tmp_path / "rec", env=ENV)
    assert result.counts.created == len(ITEMS)
    assert len(api.seen) == 3  # every page was authorized, so the credential was sent
    recorded = sorted((tmp_path / "rec").glob("0*.json"))
    assert [p.name for p in recorded] == ["0001.json", "0002.json", "0003.json"]  # no token exchange among them
    first = json.loads(recorded[0].read_text())
    assert first["request"]["method"] == "GET"
    assert first["response"]["status"] == 200
    assert first["response"]["body"]["items"][0] == ITEMS[0]
    assert first["response"]["headers"]["set-cookie"] == "***"
    assert "authorization" not in json.dumps(first).lower()
    if style == "api_key":
        assert first["request"]["url"].endswith("api_key=***")
        assert "api_key=***" in first["response"]["body"]["next"]
    if style == "oauth2":
        assert api.token_requests == 1
    _assert_no_secret(tmp_path / "rec")


def test_env_json_holds_the_variables_outside_auth_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """env.json has ITEM_KIND (used in params) and none of the auth block's variables."""
    monkeypatch.chdir(tmp_path)
    with AuthApi("basic") as api:
        file = _pipeline(tmp_path, api.base_url, "basic")
        record_run(load_pipeline(file, env=ENV), tmp_path / "rec", env=ENV)
    assert file_variables(file) == (["ITEM_KIND"], ["API_USER", "API_PASSWORD"])
    assert json.loads((tmp_path / "rec" / "env.json").read_text()) == {"ITEM_KIND": "widget"}
    meta = json.loads((tmp_path / "rec" / "recording.json").read_text())
    assert meta["pipeline"] == "auth-basic"
    assert meta["state"] == {"auth-basic": {"watermark": None, "checkpoint": None}}


def test_recorded_files_are_stable_and_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recording the same run twice gives the same exchange files, byte for byte (a reviewer diffs them)."""
    monkeypatch.chdir(tmp_path)
    with AuthApi("bearer") as api:
        file = _pipeline(tmp_path, api.base_url, "bearer")
        texts = []
        for _ in range(2):
            record_run(load_pipeline(file, env=ENV), tmp_path / "rec", env=ENV, full_refresh=True)
            texts.append([p.read_text() for p in sorted((tmp_path / "rec").glob("0*.json"))])
    assert texts[0] == texts[1]
    assert texts[0][0].startswith('{\n  "request": {\n    "method": "GET",')


@pytest.mark.parametrize("style", ["bearer", "api_key", "basic", "oauth2"])
def test_cli_record_round_trip_needs_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, style: str) -> None:
    """`etl run --record` with the credentials set, then `etl test` with no variable set at all: exit 0
    (the api key echoed in each next URL is `***` in the recording, and replays as such)."""
    monkeypatch.chdir(tmp_path)
    with AuthApi(style) as api:
        file = _pipeline(tmp_path, api.base_url, style)
        for name, value in ENV.items():
            monkeypatch.setenv(name, value)
        recorded = CliRunner().invoke(main, ["run", str(file), "--record", "rec"])
        assert recorded.exit_code == 0, recorded.output
    for name in ENV:
        monkeypatch.delenv(name)
    update = CliRunner().invoke(main, ["test", str(file), "--fixtures", "rec", "--update"])
    assert update.exit_code == 0, update.output
    assert update.stdout == f"{file}: wrote 7 lines to rec/expected.jsonl\n"
    checked = CliRunner().invoke(main, ["test", str(file), "--fixtures", "rec"])
    assert (checked.exit_code, checked.stdout) == (0, f"{file}: ok, 7 lines equal rec/expected.jsonl\n")
    _assert_no_secret(tmp_path / "rec")


def test_record_takes_one_file(tmp_path: Path) -> None:
    """--record with two pipeline files is a usage error (exit 2): one recording directory per file."""
    first = _pipeline(tmp_path, "http://127.0.0.1:9", "bearer")
    second = _pipeline(tmp_path, "http://127.0.0.1:9", "basic")
    result = CliRunner().invoke(main, ["run", str(first), str(second), "--record", "rec"])
    assert result.exit_code == 2
    assert "--record records one pipeline file" in result.output


def test_scrubber_masks_every_spelling_inside_json_strings() -> None:
    """A secret inside a JSON string is masked in every spelling; numbers and structure are kept."""
    scrub = Scrubber(["s3cr3t/+="])
    b64 = base64.b64encode(b"s3cr3t/+=").decode()
    value = {"a": "x s3cr3t/+= y", "b": quote("s3cr3t/+=", safe=""), "c": b64, "n": 5}
    assert scrub.value(value) == {"a": "x *** y", "b": "***", "c": "***", "n": 5}


def test_bodies_are_kept_as_json_only_when_they_read_back_the_same() -> None:
    """A JSON body whose numbers would be rewritten (1.10, 1e3) is kept as its text; bytes as base64."""
    assert encode_body(b'{"a": [1, 2.5]}', "application/json") == {"body": {"a": [1, 2.5]}}
    assert encode_body(b'{"price": 1.10}', "application/json") == {"body_text": '{"price": 1.10}'}
    assert encode_body(b"<html>", "text/html") == {"body_text": "<html>"}
    assert encode_body(b"\xff\x00", "application/octet-stream") == {"body_base64": "/wA="}
    assert encode_body(b"", "") == {"body": None}


def test_gzip_bodies_are_recorded_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip-encoded answer is written decoded, without its content-encoding header."""
    import gzip

    from runner.authoring.record import Recorder, RecordingTransport

    monkeypatch.chdir(tmp_path)
    body = json.dumps({"items": [{"id": 1}]}).encode()

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-encoding": "gzip", "content-type": "application/json"},
                              content=gzip.compress(body))

    file = _pipeline(tmp_path, "http://api.test", "bearer")
    (tmp_path / "rec").mkdir()
    recorder = Recorder(tmp_path / "rec", load_pipeline(file, env=ENV))
    with httpx.Client(transport=RecordingTransport(recorder, httpx.MockTransport(answer))) as client:
        assert client.get("http://api.test/items").json() == {"items": [{"id": 1}]}
    written = json.loads((tmp_path / "rec" / "0001.json").read_text())
    assert written["response"]["body"] == {"items": [{"id": 1}]}
    assert "content-encoding" not in written["response"]["headers"]


def test_the_http_targets_writes_are_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_api: Any
) -> None:
    """pipelines/demo-sync.yaml into the fake CRM: the 2 source pages are recorded, none of the 150 writes."""
    from runner.dev.fake_crm import FakeCrm

    monkeypatch.chdir(tmp_path)
    api = demo_api(records=150)
    with FakeCrm() as crm:
        env = {"DEMO_PORT": str(api.port), "CRM_PORT": str(crm.port)}
        pipeline = load_pipeline(Path(__file__).parents[1] / "pipelines" / "demo-sync.yaml", env=env)
        result = record_run(pipeline, tmp_path / "rec", env=env)
        assert result.counts.created == 150
    recorded = [json.loads(p.read_text()) for p in sorted((tmp_path / "rec").glob("0*.json"))]
    assert [r["request"]["url"].split(":", 2)[2] for r in recorded] == [
        f"{api.port}/items/page?page=1&per_page=100", f"{api.port}/items/page?page=2&per_page=100",
    ]
    assert json.loads((tmp_path / "rec" / "env.json").read_text()) == env
