"""pipelines/msgraph-users.yaml against a local server that behaves as Microsoft Graph's
`GET /v1.0/users/delta` documents: pages linked by an absolute `@odata.nextLink`, the last
page ending with an `@odata.deltaLink`; a request to that link lists only the users changed
(or `@removed`) since; an expired link is answered 410 `syncStateNotFound`. Every request
needs the bearer token."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from runner.config import load_pipeline
from runner.dev.localserver import Handler, LocalServer
from runner.engine import run
from runner.errors import EtlError
from runner.model import JsonlTargetConfig, Pipeline, StateConfig
from runner.result import RunResult
from runner.state import open_store

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "graph-access-token-123"
DELTA = "/v1.0/users/delta"
PAGE = 2  # Graph picks its own page size; small here, so that paging shows


class _Handler(Handler):
    do_GET = Handler.dispatch


class GraphUsers(LocalServer):
    """Users whose every change bumps a version; `$deltatoken` names the version it was issued at."""

    handler_class = _Handler
    thread_name = "graph"

    def __init__(self) -> None:
        super().__init__()
        self.version = 0
        self.users: dict[str, dict[str, Any]] = {}
        self.changed_at: dict[str, int] = {}
        self.expired: set[str] = set()
        self.requests: list[str] = []
        for n in range(1, 6):
            self.change(f"u{n}", displayName=f"User {n}")

    def change(self, user_id: str, **fields: Any) -> None:
        self.version += 1
        self.users[user_id] = {"id": user_id, "userPrincipalName": f"{user_id}@contoso.com", **fields}
        self.changed_at[user_id] = self.version

    def remove(self, user_id: str) -> None:
        self.version += 1
        self.users[user_id] = {"id": user_id, "@removed": {"reason": "changed"}}
        self.changed_at[user_id] = self.version

    def handle(self, handler: Handler) -> None:
        self.requests.append(handler.path)
        if handler.headers.get("Authorization") != f"Bearer {TOKEN}":
            handler.send_reply(401, b'{"error": {"code": "InvalidAuthenticationToken"}}')
            return
        parts = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path != DELTA:
            handler.send_reply(404, b'{"error": {"code": "Request_ResourceNotFound"}}')
            return
        token = query.get("$deltatoken")
        if token in self.expired:
            body = {"error": {"code": "syncStateNotFound", "message": "The sync state generation is not found.",
                              "innerError": {"date": "2024-05-01T12:00:00", "request-id": "0" * 36}}}
            handler.send_reply(410, json.dumps(body).encode())
            return
        # the skiptoken carries where the round started and how far it got, as Graph's opaque one does
        since, start = (int(x) for x in query["$skiptoken"].split("-")) if "$skiptoken" in query else (
            int(token or 0), 0)
        ids = [i for i in self.users if self.changed_at[i] > since and (since or "@removed" not in self.users[i])]
        body = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users",
                "value": [self.users[i] for i in ids[start : start + PAGE]]}
        if start + PAGE < len(ids):
            body["@odata.nextLink"] = f"{self.base_url}{DELTA}?$skiptoken={since}-{start + PAGE}"
        else:
            body["@odata.deltaLink"] = f"{self.base_url}{DELTA}?$deltatoken={self.version}"
        handler.send_reply(200, json.dumps(body).encode())


@pytest.fixture
def graph() -> Any:
    with GraphUsers() as server:
        yield server


def _shipped(tmp_path: Path, server: GraphUsers) -> Pipeline:
    """The file as shipped, with the server's URL, writing JSON lines and state in tmp_path."""
    text = (ROOT / "pipelines" / "msgraph-users.yaml").read_text()
    path = tmp_path / "msgraph-users.yaml"
    path.write_text(text.replace("https://graph.microsoft.com", server.base_url))
    pipeline = load_pipeline(path, env={"GRAPH_TOKEN": TOKEN})
    return dataclasses.replace(
        pipeline, target=JsonlTargetConfig(str(tmp_path / "users.jsonl")), state=StateConfig(path=tmp_path / "state.db")
    )


def _saved(tmp_path: Path) -> Any:
    store = open_store(StateConfig(path=tmp_path / "state.db"), read_only=True)
    try:
        return store.watermark("msgraph-users")
    finally:
        store.close()


def _counts(result: RunResult) -> tuple[str, int, int, int]:
    return result.status, result.counts.processed, result.counts.created, result.counts.updated


def test_first_run_reads_every_user_and_saves_the_delta_link(tmp_path: Path, graph: GraphUsers) -> None:
    """Three pages by nextLink, every user once; the last page's deltaLink is the saved token."""
    result = run(_shipped(tmp_path, graph))
    assert _counts(result) == ("success", 5, 5, 0) and result.pages == 3
    assert _saved(tmp_path) == f"{graph.base_url}{DELTA}?$deltatoken=5"
    assert graph.requests[0].startswith(f"{DELTA}?%24select=") or graph.requests[0].startswith(f"{DELTA}?$select=")


def test_the_next_run_requests_the_delta_link_as_given_and_reads_only_changes(
    tmp_path: Path, graph: GraphUsers
) -> None:
    """The second run's first request is the deltaLink exactly; it reads a changed, a new and a
    removed user, and saves the newer deltaLink."""
    pipeline = _shipped(tmp_path, graph)
    run(pipeline)
    graph.requests.clear()
    graph.change("u2", displayName="User 2", jobTitle="Engineer")
    graph.change("u6", displayName="User 6")
    graph.remove("u4")
    result = run(pipeline)
    assert graph.requests[0] == f"{DELTA}?$deltatoken=5"
    assert _counts(result) == ("success", 3, 1, 2)
    assert _saved(tmp_path) == f"{graph.base_url}{DELTA}?$deltatoken=8"
    last = [json.loads(line) for line in (tmp_path / "users.jsonl").read_text().splitlines()][-3:]
    assert {r["external_id"]: r["record"]["removed"] for r in last} == {"u2": None, "u6": None, "u4": "changed"}


def test_an_expired_delta_link_is_reset_and_every_user_read_again(
    tmp_path: Path, graph: GraphUsers, caplog: pytest.LogCaptureFixture
) -> None:
    """410 syncStateNotFound to the deltaLink: incremental.token_reset, a full read from the
    source's URL in the same run (exit 0), and a fresh deltaLink saved."""
    pipeline = _shipped(tmp_path, graph)
    run(pipeline)
    graph.expired.add("5")
    graph.change("u1", displayName="User 1, renamed")
    graph.requests.clear()
    with caplog.at_level(logging.WARNING, logger="runner"):
        result = run(pipeline)
    assert [r.getMessage() for r in caplog.records].count("incremental.token_reset") == 1
    assert (result.exit_code, result.counts.processed, result.counts.updated) == (0, 5, 1)
    assert graph.requests[0] == f"{DELTA}?$deltatoken=5" and "$deltatoken" not in graph.requests[1]
    assert _saved(tmp_path) == f"{graph.base_url}{DELTA}?$deltatoken=6"


def test_a_failed_run_keeps_the_saved_delta_link(tmp_path: Path, graph: GraphUsers) -> None:
    """A run whose second page fails saves nothing: the next run requests the old link again."""
    pipeline = _shipped(tmp_path, graph)
    once = dataclasses.replace(pipeline.source.retry, max_attempts=1)
    pipeline = dataclasses.replace(pipeline, source=dataclasses.replace(pipeline.source, retry=once))
    run(pipeline)
    for n in (6, 7, 8):
        graph.change(f"u{n}", displayName=f"User {n}")
    original = graph.handle

    def fail_next_links(handler: Handler) -> None:
        if "$skiptoken" in handler.path:
            handler.send_reply(503, b'{"error": {"code": "serviceNotAvailable"}}')
            return
        original(handler)

    graph.handle = fail_next_links  # type: ignore[method-assign]
    with pytest.raises(EtlError) as caught:
        run(pipeline)
    assert caught.value.result is not None and caught.value.result.status == "failed"
    assert _saved(tmp_path) == f"{graph.base_url}{DELTA}?$deltatoken=5"


@pytest.fixture(autouse=True)
def _no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
