"""End to end against a local server that pages like the vendors: GraphQL (the cursor only in
`variables.after` of a POST body), Notion (`start_cursor` in the body), Sentry (`results="false"`
on the Link header) and a cursor in a response header."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import whole, write_pipeline_file
from runner.dev.localserver import Handler, LocalServer
from runner.engine import run
from runner.extract.pagination import PageRequest
from runner.load.plan import Checkpoint
from runner.state.sqlite import SqliteStateStore

RECORDS = [{"id": i, "name": f"n{i}"} for i in range(1, 6)]
PAGE = 2
NO_WAIT: dict[str, Any] = {"sleep": lambda seconds: None}


class _VendorHandler(Handler):
    do_GET = do_POST = Handler.dispatch


class VendorApi(LocalServer):
    """Five records, two a page, behind four vendor-style endpoints; `requests` logs each one."""

    handler_class: ClassVar[type[Handler]] = _VendorHandler
    thread_name = "vendor-api"

    def __init__(self, *, fail_first: int = 0) -> None:
        super().__init__()
        self.requests: list[tuple[str, str, Any]] = []  # method, path with query, JSON body
        self.fail_first = fail_first  # answer this many requests 503 first

    def handle(self, handler: Handler) -> None:
        raw = handler.read_body()
        body = json.loads(raw) if raw else None
        self.requests.append((handler.command, handler.path, body))
        if self.fail_first:
            self.fail_first -= 1
            handler.send_reply(503, b'{"error": "busy"}')
            return
        url = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/graphql" and handler.command == "POST":
            self._graphql(handler, url.query, body)
        elif url.path.startswith("/v1/databases/") and url.path.endswith("/query") and handler.command == "POST":
            start = int(body.get("start_cursor") or 0)
            rows, more = RECORDS[start:start + body["page_size"]], start + body["page_size"] < len(RECORDS)
            self._json(handler, {"results": rows, "has_more": more,
                                 "next_cursor": str(start + body["page_size"]) if more else None})
        elif url.path == "/sentry/issues":
            self._sentry(handler, int(query.get("cursor", "0")))
        elif url.path == "/header-cursor":
            start = int(query.get("after", "0"))
            more = start + PAGE < len(RECORDS)
            headers = [("X-Next-Cursor", str(start + PAGE))] if more else []
            self._json(handler, RECORDS[start:start + PAGE], headers)
        else:
            handler.send_reply(404, b'{"error": "no such endpoint"}')

    def _graphql(self, handler: Handler, query: str, body: Any) -> None:
        """Like GitHub's: the cursor goes in `variables.after` only; anything in the query is a 400."""
        if query:
            handler.send_reply(400, b'{"message": "the query string is not read: put variables in the body"}')
            return
        after = (body.get("variables") or {}).get("after")
        start = 0 if after is None else int(after.removeprefix("c"))
        nodes = RECORDS[start:start + PAGE]
        end = start + len(nodes)
        info = {"endCursor": f"c{end}", "hasNextPage": end < len(RECORDS)}
        self._json(handler, {"data": {"items": {"nodes": nodes, "pageInfo": info}}})

    def _sentry(self, handler: Handler, start: int) -> None:
        """Sentry always sends a next link; on the last page it carries `results="false"`."""
        more = start + PAGE < len(RECORDS)
        base, before = f"{self.base_url}/sentry/issues", str(start > 0).lower()
        link = (f'<{base}?cursor={start - PAGE}>; rel="previous"; results="{before}", '
                f'<{base}?cursor={start + PAGE}>; rel="next"; results="{str(more).lower()}"')
        self._json(handler, RECORDS[start:start + PAGE], [("Link", link)])

    @staticmethod
    def _json(handler: Handler, value: Any, headers: list[tuple[str, str]] | None = None) -> None:
        handler.send_reply(200, json.dumps(value).encode(), headers=headers or [])


@pytest.fixture
def api() -> Any:
    with VendorApi() as server:
        yield server


GRAPHQL = {
    "url": "{base_url}/graphql",
    "method": "POST",
    "json": {"query": "query($after: String) { items(first: 2, after: $after) { nodes { id } } }",
             "variables": {"after": None}},
    "records": "data.items.nodes",
    "pagination": {"type": "cursor", "path": "data.items.pageInfo.endCursor", "param": "variables.after",
                   "in": "body", "stop_when": "!(data.items.pageInfo.hasNextPage)"},
}


def pipeline(tmp_path: Path, base_url: str, source: dict[str, Any]) -> Path:
    return write_pipeline_file(
        tmp_path, base_url, source=whole(source), mapping={"fields": whole({"name": "name"})},
    )


def ids(tmp_path: Path) -> list[int]:
    db = sqlite3.connect(tmp_path / "out.db")
    try:
        rows = db.execute("SELECT external_id FROM items ORDER BY CAST(external_id AS INTEGER)")
        return [int(row[0]) for row in rows]
    finally:
        db.close()


def test_graphql_cursor_goes_only_in_variables_after(tmp_path: Path, api: VendorApi) -> None:
    """A GitHub-like GraphQL endpoint that refuses query parameters is read to the end via the body."""
    result = run(pipeline(tmp_path, api.base_url, GRAPHQL), **NO_WAIT)
    assert result.status == "success", result.error
    assert ids(tmp_path) == [1, 2, 3, 4, 5] and result.pages == 3
    sent = [body["variables"]["after"] for _, _, body in api.requests]
    assert sent == [None, "c2", "c4"]
    assert all(path == "/graphql" for _, path, _ in api.requests)


def test_a_post_source_is_retried_like_a_get(tmp_path: Path) -> None:
    """A 503 on the GraphQL POST is retried (a source request is a read), and the run succeeds."""
    with VendorApi(fail_first=2) as server:
        result = run(pipeline(tmp_path, server.base_url, GRAPHQL), **NO_WAIT)
        assert result.status == "success", result.error
        assert ids(tmp_path) == [1, 2, 3, 4, 5] and len(server.requests) == 5


def test_graphql_resumes_from_a_checkpoint_with_the_body_cursor(tmp_path: Path, api: VendorApi) -> None:
    """A run stopped by max_pages saves the body cursor; the next run sends it in the body, exactly."""
    source = {**GRAPHQL, "limits": {"max_pages": 1}}
    first = run(pipeline(tmp_path, api.base_url, source), **NO_WAIT)
    assert first.stopped_by == "max_pages" and ids(tmp_path) == [1, 2]
    store = SqliteStateStore(tmp_path / "state.db")
    try:
        saved = store.checkpoint("test")
    finally:
        store.close()
    assert saved is not None and Checkpoint.loads(saved).next == PageRequest(
        f"{api.base_url}/graphql", None, body={"variables.after": "c2"}
    )
    api.requests.clear()
    second = run(pipeline(tmp_path, api.base_url, {**GRAPHQL, "limits": {"max_pages": 10}}), **NO_WAIT)
    assert second.status == "success", second.error
    assert [body["variables"]["after"] for _, _, body in api.requests] == ["c2", "c4"]
    assert ids(tmp_path) == [1, 2, 3, 4, 5]


def test_notion_query_with_start_cursor_in_the_body_and_base_url_plus_path(tmp_path: Path, api: VendorApi) -> None:
    """Notion's `POST /v1/databases/{id}/query`: `start_cursor` in the body, `has_more` stops."""
    source = {
        "base_url": "{base_url}/", "path": "/v1/databases/db1/query", "method": "POST",
        "json": {"page_size": 2}, "records": "results",
        "pagination": {"type": "cursor", "path": "next_cursor", "param": "start_cursor", "in": "body",
                       "stop_when": "!has_more"},
    }
    result = run(pipeline(tmp_path, api.base_url, source), **NO_WAIT)
    assert result.status == "success", result.error
    assert ids(tmp_path) == [1, 2, 3, 4, 5]
    assert [body for _, _, body in api.requests] == [
        {"page_size": 2}, {"page_size": 2, "start_cursor": "2"}, {"page_size": 2, "start_cursor": "4"},
    ]
    assert {path for _, path, _ in api.requests} == {"/v1/databases/db1/query"}


def test_sentry_link_header_stops_on_results_false(tmp_path: Path, api: VendorApi) -> None:
    """Sentry always sends a next link; the one with `results="false"` is not followed."""
    source = {"url": "{base_url}/sentry/issues", "records": "@", "pagination": {"type": "link_header"}}
    result = run(pipeline(tmp_path, api.base_url, source), **NO_WAIT)
    assert result.status == "success", result.error
    assert ids(tmp_path) == [1, 2, 3, 4, 5] and len(api.requests) == 3


def test_cursor_from_a_response_header(tmp_path: Path, api: VendorApi) -> None:
    """`header: X-Next-Cursor` reads each token from the response; no header ends paging."""
    source = {"url": "{base_url}/header-cursor", "records": "@",
              "pagination": {"type": "cursor", "header": "X-Next-Cursor", "param": "after"}}
    result = run(pipeline(tmp_path, api.base_url, source), **NO_WAIT)
    assert result.status == "success", result.error
    assert ids(tmp_path) == [1, 2, 3, 4, 5]
    paths = [path for _, path, _ in api.requests]
    assert paths == ["/header-cursor", "/header-cursor?after=2", "/header-cursor?after=4"]
