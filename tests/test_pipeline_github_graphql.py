"""pipelines/github-graphql.yaml against a local server that behaves as GitHub's GraphQL
endpoint: `POST /graphql` with a bearer token (401 without), the cursor only in the body's
`variables.after` (a cursor in the query string is a 400 here, so a test cannot pass by
sending it there), `pageInfo {endCursor hasNextPage}`, and errors answered with a 200."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from runner.config import load_pipeline
from runner.dev.localserver import Handler, LocalServer
from runner.engine import run
from runner.errors import FetchError
from runner.model import JsonlTargetConfig, StateConfig

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "ghp_graphql_test_token_1234"


class _Handler(Handler):
    do_POST = Handler.dispatch


class GitHubGraphql(LocalServer):
    """Repository o/r with 230 issues, 100 a page at most (`first`)."""

    handler_class = _Handler
    thread_name = "github-graphql"

    def __init__(self) -> None:
        super().__init__()
        self.issues = [
            {"id": f"I_kw{n:04d}", "number": n, "title": f"issue {n}", "state": "OPEN",
             "updatedAt": f"2024-03-01T00:{n // 60:02d}:{n % 60:02d}Z", "author": {"login": "octocat"}}
            for n in range(1, 231)
        ]
        self.bodies: list[dict[str, Any]] = []

    def handle(self, handler: Handler) -> None:
        if handler.headers.get("Authorization") != f"Bearer {TOKEN}":
            handler.send_reply(401, b'{"message": "Bad credentials"}')
            return
        if "?" in handler.path:
            handler.send_reply(400, b'{"message": "Problems parsing JSON"}')
            return
        body = json.loads(handler.read_body())
        self.bodies.append(body)
        variables = body.get("variables") or {}
        if (variables.get("owner"), variables.get("name")) != ("o", "r"):
            errors = [{"type": "NOT_FOUND", "path": ["repository"],
                       "message": f"Could not resolve to a Repository with the name '{variables.get('name')}'."}]
            handler.send_reply(200, json.dumps({"data": {"repository": None}, "errors": errors}).encode())
            return
        start = int(variables["after"][1:]) if variables.get("after") else 0
        chunk = self.issues[start : start + 100]
        end = start + len(chunk)
        page = {"nodes": chunk, "pageInfo": {"endCursor": f"Y{end}", "hasNextPage": end < len(self.issues)}}
        handler.send_reply(200, json.dumps({"data": {"repository": {"issues": page}}}).encode())


def shipped(server: GitHubGraphql, tmp_path: Path, name: str = "r") -> Any:
    """The shipped file with its URL on the stand-in, writing JSON lines."""
    text = (ROOT / "pipelines" / "github-graphql.yaml").read_text()
    path = tmp_path / "github-graphql.yaml"
    path.write_text(text.replace("https://api.github.com/graphql", f"{server.base_url}/graphql"))
    env = {"GITHUB_TOKEN": TOKEN, "GITHUB_OWNER": "o", "GITHUB_NAME": name}
    pipeline = load_pipeline(path, env=env)
    out = tmp_path / "issues.jsonl"
    return dataclasses.replace(
        pipeline, target=JsonlTargetConfig(str(out)), state=StateConfig(path=tmp_path / "state.db"),
        source=dataclasses.replace(pipeline.source, rate_limit=None),  # no real waiting in a test
    ), out


@pytest.fixture(autouse=True)
def _cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


def test_every_issue_lands_once_with_the_cursor_in_variables_after(tmp_path: Path) -> None:
    """230 issues in 3 POSTs; the first body has after: null, the next ones the endCursor."""
    with GitHubGraphql() as server:
        pipeline, out = shipped(server, tmp_path)
        result = run(pipeline)
    assert (result.status, result.counts.created, result.requests) == ("success", 230, 3)
    assert [b["variables"]["after"] for b in server.bodies] == [None, "Y100", "Y200"]
    numbers = sorted(json.loads(line)["record"]["number"] for line in out.read_text().splitlines())
    assert numbers == list(range(1, 231))


def test_a_graphql_error_in_a_200_fails_the_run(tmp_path: Path) -> None:
    """A repository that does not exist is a 200 with `errors`: exit 1 naming it, not 0 records."""
    with GitHubGraphql() as server:
        pipeline, out = shipped(server, tmp_path, name="nope")
        with pytest.raises(FetchError, match=r"error_when 'errors' matched:.*NOT_FOUND") as caught:
            run(pipeline)
    assert caught.value.exit_code == 1
    assert not out.exists() or out.read_text() == ""  # nothing written


def test_the_stand_in_refuses_a_cursor_in_the_query_string() -> None:
    """So the first test cannot pass by sending the cursor where GitHub does not read it."""
    import httpx

    with GitHubGraphql() as server:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        answer = httpx.post(f"{server.base_url}/graphql?after=Y100", json={}, headers=auth)
        assert answer.status_code == 400
        assert httpx.post(f"{server.base_url}/graphql", json={}).status_code == 401
