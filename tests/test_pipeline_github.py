"""pipelines/github.yaml against a local server that behaves as GitHub's REST API documents
`GET /repos/{owner}/{repo}/issues` and `.../issues/{number}/comments`: a bearer token on
every request (401 without), `per_page` at most 100, pages linked by a `Link` header,
`since` keeping issues updated at or after it, pull requests listed among the issues
(with a `pull_request` key), and 404 for an issue that does not exist."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from runner.config import load_pipeline
from runner.dev.localserver import Handler, LocalServer
from runner.engine import run
from runner.model import SqliteTargetConfig, StateConfig

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "ghp_test_token_0123456789"
REPO = "octo/hello"


class _Handler(Handler):
    do_GET = Handler.dispatch


class GitHub(LocalServer):
    handler_class = _Handler
    thread_name = "github"

    def __init__(self) -> None:
        super().__init__()
        self.issues: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.requests: list[str] = []
        self.clock = 0
        for number in range(1, 6):
            self.add_issue(number, comments=number - 1 if number != 3 else 120)
        self.add_issue(6, pull_request=True)

    def tick(self) -> str:
        self.clock += 1
        return f"2024-05-01T10:{self.clock // 60:02d}:{self.clock % 60:02d}Z"

    def add_issue(self, number: int, *, comments: int = 0, pull_request: bool = False) -> None:
        issue: dict[str, Any] = {
            "id": 1000 + number, "number": number, "title": f"Issue {number}", "state": "open",
            "user": {"login": f"user{number}"}, "comments": comments, "html_url": f"https://github.com/{REPO}/issues/{number}",
            "labels": [{"name": "bug", "color": "d73a4a"}, *([{"name": "p1", "color": "0"}] if number % 2 else [])],
            "created_at": self.tick(), "updated_at": self.tick(),
        }
        if pull_request:
            issue["pull_request"] = {"url": "..."}
        self.issues[number] = issue
        self.comments[number] = []
        for _ in range(comments):
            self.comment(number)

    def comment(self, number: int) -> None:
        n = len(self.comments[number]) + 1
        stamp = self.tick()
        self.comments[number].append({"id": number * 10_000 + n, "user": {"login": f"c{n}"}, "body": f"comment {n}",
                                      "created_at": stamp, "updated_at": stamp})
        issue = self.issues[number]
        issue["comments"], issue["updated_at"] = len(self.comments[number]), stamp

    def handle(self, handler: Handler) -> None:
        self.requests.append(handler.path)
        if handler.headers.get("Authorization") != f"Bearer {TOKEN}":
            handler.send_reply(401, b'{"message": "Requires authentication"}')
            return
        parts = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        per_page = int(query.get("per_page", 30))
        if per_page > 100:
            handler.send_reply(422, b'{"message": "per_page must be at most 100"}')
            return
        segments = parts.path.strip("/").split("/")
        if segments[:3] != ["repos", *REPO.split("/")][:3] or len(segments) < 4 or segments[3] != "issues":
            handler.send_reply(404, b'{"message": "Not Found"}')
            return
        if len(segments) == 4:
            items = sorted(self.issues.values(), key=lambda i: i["updated_at"])
            if "since" in query:
                items = [i for i in items if i["updated_at"] >= query["since"]]
        elif len(segments) == 6 and segments[5] == "comments" and int(segments[4]) in self.comments:
            items = self.comments[int(segments[4])]
        else:
            handler.send_reply(404, b'{"message": "Not Found"}')
            return
        page = int(query.get("page", 1))
        chunk = items[(page - 1) * per_page: page * per_page]
        headers = {}
        if page * per_page < len(items):
            following = urlencode({**query, "page": page + 1})
            headers["Link"] = f'<{self.base_url}{parts.path}?{following}>; rel="next"'
        handler.send_reply(200, json.dumps(chunk).encode(), headers=headers.items())


@pytest.fixture
def github() -> Any:
    with GitHub() as server:
        yield server


def pipeline_for(server: GitHub, tmp_path: Path) -> Any:
    text = (ROOT / "pipelines" / "github.yaml").read_text().replace("https://api.github.com", server.base_url)
    path = tmp_path / "github.yaml"
    path.write_text(text)
    pipeline = load_pipeline(path, env={"GITHUB_TOKEN": TOKEN, "GITHUB_REPO": REPO})
    target = SqliteTargetConfig(path=tmp_path / "github.db", table="unused")
    resources = tuple(dataclasses.replace(r, target=dataclasses.replace(target, table=r.name))
                      for r in pipeline.resources)
    return dataclasses.replace(pipeline, resources=resources, state=StateConfig(path=tmp_path / "state.db"))


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


def test_issues_their_comments_and_labels_then_only_what_changed(
    tmp_path: Path, github: GitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETL_WRITER", "inline")  # the writer process is tested elsewhere; here it costs seconds
    pipeline = pipeline_for(github, tmp_path)
    first = run(pipeline)
    db = tmp_path / "github.db"
    assert first.exit_code == 0
    assert rows(db, "SELECT number FROM issues ORDER BY number") == [(n,) for n in range(1, 6)]  # no pull request
    expected = {c["id"] for n in range(1, 6) for c in github.comments[n]}
    assert {r[0] for r in rows(db, "SELECT external_id FROM comments")} == {str(i) for i in expected}
    assert rows(db, "SELECT count(*) FROM comments WHERE issue_number=3") == [(120,)]  # two pages of 100
    assert rows(db, "SELECT issue_number, name FROM labels WHERE issue_number=1 ORDER BY name") == [
        (1, "bug"), (1, "p1")]
    # one request per issue for its comments (two for #3), none for labels; the pull request got none
    comment_paths = [urlsplit(p).path for p in github.requests if p.split("?")[0].endswith("/comments")]
    assert sorted(set(comment_paths)) == [f"/repos/{REPO}/issues/{n}/comments" for n in range(1, 6)]
    assert len(comment_paths) == 6
    github.requests.clear()
    github.comment(2)  # a new comment moves issue 2's updated_at
    second = run(pipeline)
    assert second.exit_code == 0
    comment_paths = [urlsplit(p).path for p in github.requests if p.split("?")[0].endswith("/comments")]
    assert comment_paths == [f"/repos/{REPO}/issues/2/comments"]  # the incremental parent read issue 2 only
    assert second.resources["comments"].counts.created == 1
    assert rows(db, "SELECT comments FROM issues WHERE number=2") == [(2,)]
