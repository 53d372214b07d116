"""pipelines/jira.yaml against a local server that behaves as Jira Cloud's enhanced search:
`GET /rest/api/3/search/jql` pages by `nextPageToken` and says `isLast`; the old
`/rest/api/3/search` answers 410 Gone (Atlassian removed it); every request needs Basic auth;
the JQL's `updated >= 'yyyy-MM-dd HH:mm'` filters (a JQL it cannot parse is a 400, as Jira's)."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from runner.config import load_pipeline
from runner.dev.localserver import Handler, LocalServer
from runner.engine import run
from runner.model import JsonlTargetConfig, StateConfig

ROOT = Path(__file__).resolve().parents[1]
EMAIL, TOKEN = "dev@example.com", "jira-api-token-123"
JQL = re.compile(r"project = OPS AND updated >= '(\d{4}-\d{2}-\d{2} \d{2}:\d{2})' ORDER BY updated ASC")


class _Handler(Handler):
    do_GET = Handler.dispatch


class JiraSearch(LocalServer):
    """250 issues of project OPS, at most `maxResults` (<= 100) a page."""

    handler_class = _Handler
    thread_name = "jira"

    def __init__(self) -> None:
        super().__init__()
        self.issues = [
            {"id": str(10000 + n), "key": f"OPS-{n}",
             "fields": {"summary": f"issue {n}", "status": {"name": "Open"}, "assignee": None,
                        "priority": {"name": "High"}, "created": "2024-01-01T00:00:00.000+0000",
                        "updated": f"2024-{1 if n <= 100 else 2:02d}-01T00:00:{n % 60:02d}.000+0000"}}
            for n in range(1, 251)
        ]
        self.requests: list[str] = []
        self.jql: list[str] = []

    def handle(self, handler: Handler) -> None:
        self.requests.append(handler.path)
        parts = urlsplit(handler.path)
        expected = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
        if handler.headers.get("Authorization") != expected:
            handler.send_reply(401, b'{"errorMessages": ["Client must be authenticated"]}')
            return
        if parts.path == "/rest/api/3/search":
            handler.send_reply(410, b'{"errorMessages": ["The requested API has been removed."]}')
            return
        if parts.path != "/rest/api/3/search/jql":
            handler.send_reply(404, b"{}")
            return
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if "startAt" in query:  # the enhanced search pages by token only
            handler.send_reply(400, b'{"errorMessages": ["startAt is not supported; use nextPageToken"]}')
            return
        match = JQL.fullmatch(query.get("jql", ""))
        if match is None:
            handler.send_reply(400, b'{"errorMessages": ["Error in the JQL Query"]}')
            return
        self.jql.append(query["jql"])
        since = match.group(1).replace(" ", "T") + ":00.000+0000"
        issues = [i for i in self.issues if i["fields"]["updated"] >= since]
        size = min(int(query.get("maxResults", "50")), 100)
        start = int(query.get("nextPageToken", "0"))
        chunk = issues[start : start + size]
        last = start + size >= len(issues)
        body: dict[str, Any] = {"issues": chunk, "isLast": last}
        if not last:
            body["nextPageToken"] = str(start + size)
        handler.send_reply(200, json.dumps(body).encode())


def test_the_shipped_jira_pipeline_reads_every_issue_through_the_enhanced_search(tmp_path: Path) -> None:
    """Every issue lands once through /search/jql with nextPageToken; nothing calls the removed endpoint."""
    with JiraSearch() as server:
        text = (ROOT / "pipelines" / "jira.yaml").read_text()
        text = text.replace("https://${JIRA_SITE}.atlassian.net", server.base_url)
        path = tmp_path / "jira.yaml"
        path.write_text(text)
        env = {"JIRA_EMAIL": EMAIL, "JIRA_API_TOKEN": TOKEN, "DATABASE_URL": "postgresql://unused"}
        pipeline = load_pipeline(path, env=env)
        out = tmp_path / "issues.jsonl"
        local = dataclasses.replace(  # the file as shipped, writing JSON lines instead of PostgreSQL
            pipeline, target=JsonlTargetConfig(str(out)), state=StateConfig(path=tmp_path / "state.db")
        )
        result = run(local)
        assert (result.status, result.counts.created, result.requests) == ("success", 250, 3)
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(int(line["record"]["key"].split("-")[1]) for line in lines) == list(range(1, 251))
        assert all(r.startswith("/rest/api/3/search/jql?") for r in server.requests)
        # initial_value less the 60 s lookback
        assert server.jql[0] == "project = OPS AND updated >= '1999-12-31 23:59' ORDER BY updated ASC"
        server.issues[6]["fields"]["updated"] = "2024-02-01T00:05:00.000+0000"  # OPS-7 changes
        again = run(local)
    # the saved watermark (the greatest updated, 2024-02-01 00:00:59) less the 60 s lookback went into
    # the JQL: the 100 issues of January are not read again, and of the 151 read only OPS-7 is written
    assert server.jql[-1] == "project = OPS AND updated >= '2024-01-31 23:59' ORDER BY updated ASC"
    assert (again.counts.processed, again.counts.created, again.counts.updated) == (151, 0, 1)


def test_the_removed_search_endpoint_is_gone() -> None:
    """The stand-in refuses what Jira refuses, so the test above cannot pass on the old endpoint."""
    import httpx

    with JiraSearch() as server:
        auth = (EMAIL, TOKEN)
        assert httpx.get(f"{server.base_url}/rest/api/3/search", auth=auth).status_code == 410
        assert httpx.get(f"{server.base_url}/rest/api/3/search/jql?startAt=100", auth=auth).status_code == 400
        assert httpx.get(f"{server.base_url}/rest/api/3/search/jql").status_code == 401


@pytest.fixture(autouse=True)
def _no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
