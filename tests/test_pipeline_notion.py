"""pipelines/notion.yaml against a local server that behaves as Notion's "Query a database"
(`POST /v1/databases/{id}/query`) documents: the bearer token and a `Notion-Version` header
on every request (400 `missing_version` without it); `start_cursor` and `page_size` in the
JSON body, where a cursor sent in the query string is a 400 `validation_error`, as is a
`page_size` over 100 or a cursor the server never issued; `has_more` and `next_cursor` in
every answer; the body's `last_edited_time` timestamp filter and sort applied."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from runner.config import load_pipeline
from runner.dev.localserver import Handler, LocalServer
from runner.engine import run
from runner.errors import FetchError
from runner.model import JsonlTargetConfig, Pipeline, StateConfig

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "secret_notion_integration_4f9a1c"
DATABASE = "8e2c5d7a1b3f4e6a9c0d2e4f6a8b0c1d"
QUERY = f"/v1/databases/{DATABASE}/query"
VERSIONS = {"2022-02-22", "2022-06-28"}
START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


class _Handler(Handler):
    do_GET = do_POST = Handler.dispatch


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"object": "error", "status": status, "code": code, "message": message}


def _minute(n: int) -> str:
    return (START + dt.timedelta(minutes=n)).strftime("%Y-%m-%dT%H:%M:00.000Z")


class NotionDatabase(LocalServer):
    """250 pages, the n-th last edited n minutes into 2024 (Notion keeps minutes only)."""

    handler_class = _Handler
    thread_name = "notion"

    def __init__(self) -> None:
        super().__init__()
        self.pages = {f"{n:08d}-aaaa-4bbb-8ccc-dddddddddddd": self._page(n, f"Page {n}", n) for n in range(1, 251)}
        self.bodies: list[dict[str, Any]] = []

    @staticmethod
    def _page(n: int, title: str, edited: int) -> dict[str, Any]:
        page_id = f"{n:08d}-aaaa-4bbb-8ccc-dddddddddddd"
        return {
            "object": "page", "id": page_id, "created_time": _minute(0), "last_edited_time": _minute(edited),
            "archived": False, "url": f"https://www.notion.so/{page_id.replace('-', '')}",
            "properties": {
                "Name": {"id": "title", "type": "title",
                         "title": [{"type": "text", "plain_text": part} for part in title.split("|")]},
                "Status": {"id": "s%3Ax", "type": "status", "status": {"name": "Done" if n % 2 else "In progress"}},
            },
        }

    def edit(self, n: int, title: str, minute: int) -> None:
        page = self._page(n, title, minute)
        self.pages[page["id"]] = page

    def handle(self, handler: Handler) -> None:
        status, body = self.answer(handler)
        handler.send_reply(status, json.dumps(body).encode())

    def answer(self, handler: Handler) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(handler.path)
        raw = handler.read_body()
        if handler.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _error(401, "unauthorized", "API token is invalid.")
        if handler.headers.get("Notion-Version") is None:
            return _error(400, "missing_version", "Notion-Version header failed validation: "
                          "Notion-Version should be defined, instead was `undefined`.")
        if handler.headers.get("Notion-Version") not in VERSIONS:
            return _error(400, "validation_error", "Notion-Version header failed validation.")
        if handler.command != "POST" or parts.path != QUERY:
            return _error(400, "invalid_request_url", "Invalid request URL.")
        query = parse_qs(parts.query)
        for name in ("start_cursor", "page_size"):
            if name in query:  # a POST endpoint: paging goes in the body
                return _error(400, "validation_error", f"body failed validation: {name} should be in the body.")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return _error(400, "invalid_json", "Error parsing JSON body.")
        self.bodies.append(body)
        return self.query(body)

    def query(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        size = body.get("page_size", 100)
        if not isinstance(size, int) or not 1 <= size <= 100:
            return _error(400, "validation_error",
                          f"body failed validation: body.page_size should be ≤ `100`, instead was `{size}`.")
        since = ((body.get("filter") or {}).get("last_edited_time") or {}).get("on_or_after", "")
        pages = sorted((p for p in self.pages.values() if p["last_edited_time"] >= since),
                       key=lambda p: (p["last_edited_time"], p["id"]))
        ids = [p["id"] for p in pages]
        cursor = body.get("start_cursor")
        if cursor is not None and cursor not in ids:
            return _error(400, "validation_error", "body failed validation: body.start_cursor is not a valid cursor.")
        start = ids.index(cursor) if cursor is not None else 0
        chunk = pages[start : start + size]
        more = start + size < len(pages)
        return 200, {"object": "list", "results": chunk, "next_cursor": ids[start + size] if more else None,
                     "has_more": more, "type": "page_or_database", "page_or_database": {}}


@pytest.fixture
def notion() -> Any:
    with NotionDatabase() as server:
        yield server


def _shipped(tmp_path: Path, server: NotionDatabase, edit: tuple[str, str] | None = None) -> Pipeline:
    """The file as shipped (or with one text `edit`), with the server's URL, into JSON lines."""
    text = (ROOT / "pipelines" / "notion.yaml").read_text().replace("https://api.notion.com", server.base_url)
    if edit is not None:
        assert edit[0] in text
        text = text.replace(*edit)
    path = tmp_path / "notion.yaml"
    path.write_text(text)
    pipeline = load_pipeline(path, env={"NOTION_TOKEN": TOKEN, "NOTION_DATABASE_ID": DATABASE})
    return dataclasses.replace(
        pipeline, target=JsonlTargetConfig(str(tmp_path / "pages.jsonl")), state=StateConfig(path=tmp_path / "state.db")
    )


def _lines(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "pages.jsonl").read_text().splitlines()]


def test_every_page_is_read_with_the_cursor_in_the_body(tmp_path: Path, notion: NotionDatabase) -> None:
    """Three POSTs of at most 100 pages; the first body as written (the watermark's initial value,
    less the minute of lookback, in the filter), the later ones with start_cursor set."""
    result = run(_shipped(tmp_path, notion))
    assert (result.status, result.counts.created, result.requests) == ("success", 250, 3)
    first, second, third = notion.bodies
    assert "start_cursor" not in first and first["page_size"] == 100
    assert first["filter"] == {"timestamp": "last_edited_time",
                               "last_edited_time": {"on_or_after": "2019-12-31T23:59:00.000Z"}}
    assert (second["start_cursor"], third["start_cursor"]) == (f"{101:08d}-aaaa-4bbb-8ccc-dddddddddddd",
                                                               f"{201:08d}-aaaa-4bbb-8ccc-dddddddddddd")
    assert {k: v for k, v in second.items() if k != "start_cursor"} == first
    record = next(r["record"] for r in _lines(tmp_path) if r["external_id"].startswith("00000007-"))
    assert (record["title"], record["status"], record["archived"]) == ("Page 7", "Done", False)


def test_the_next_run_filters_on_the_saved_watermark(tmp_path: Path, notion: NotionDatabase) -> None:
    """The greatest last_edited_time, less the minute of lookback, goes into the filter: the next
    run reads only the pages edited since (and the last minute again), and writes the one that changed."""
    pipeline = _shipped(tmp_path, notion)
    run(pipeline)
    notion.bodies.clear()
    notion.edit(3, "Page|three", 300)
    again = run(pipeline)
    assert notion.bodies[0]["filter"]["last_edited_time"] == {"on_or_after": _minute(249)}
    assert (again.counts.processed, again.counts.created, again.counts.updated, again.requests) == (3, 0, 1, 1)
    assert _lines(tmp_path)[-1]["record"]["title"] == "Pagethree"


def test_a_cursor_in_the_query_string_is_refused_as_notion_refuses_it(tmp_path: Path, notion: NotionDatabase) -> None:
    """The same file with `in: query` gets the second page refused (400 validation_error): the
    stand-in cannot be satisfied by a cursor in the wrong place."""
    pipeline = _shipped(tmp_path, notion, ("in: body", "in: query"))
    with pytest.raises(FetchError) as caught:
        run(pipeline)
    assert caught.value.status == 400 and "validation_error" in caught.value.detail
    assert caught.value.result is not None and caught.value.result.counts.created == 100


def test_without_the_version_header_notion_answers_missing_version(tmp_path: Path, notion: NotionDatabase) -> None:
    """The file's Notion-Version header is what makes the first request pass."""
    pipeline = _shipped(tmp_path, notion, ('headers: {Notion-Version: "2022-06-28"}', "headers: {}"))
    with pytest.raises(FetchError) as caught:
        run(pipeline)
    assert caught.value.status == 400 and "missing_version" in caught.value.detail
    assert notion.bodies == []


def test_the_stand_in_refuses_what_notion_refuses(notion: NotionDatabase) -> None:
    """Query-string paging, page_size over 100, an unknown cursor, GET, and a missing token."""
    url = notion.base_url + QUERY
    headers = {"Authorization": f"Bearer {TOKEN}", "Notion-Version": "2022-06-28"}

    def code(response: httpx.Response) -> tuple[int, str]:
        return response.status_code, response.json().get("code", "")

    with httpx.Client() as http:
        assert code(http.post(url + "?start_cursor=x", headers=headers, json={})) == (400, "validation_error")
        assert code(http.post(url, headers=headers, json={"page_size": 101})) == (400, "validation_error")
        assert code(http.post(url, headers=headers, json={"start_cursor": "nope"})) == (400, "validation_error")
        assert code(http.get(url, headers=headers)) == (400, "invalid_request_url")
        assert code(http.post(url, headers={"Notion-Version": "2022-06-28"}, json={})) == (401, "unauthorized")
        assert http.post(url, headers=headers, json={"page_size": 100}).json()["has_more"] is True


def test_the_token_never_reaches_a_log_line(
    tmp_path: Path, notion: NotionDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG (request headers logged), the integration's secret appears nowhere."""
    with caplog.at_level(logging.DEBUG, logger="runner"):
        run(_shipped(tmp_path, notion))
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "http.request.headers" in text and TOKEN not in text
    assert TOKEN not in (tmp_path / "pages.jsonl").read_text()


@pytest.fixture(autouse=True)
def _no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
