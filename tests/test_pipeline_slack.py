"""pipelines/slack.yaml against a local server that behaves as Slack's Web API documents
conversations.history: every answer to a bad token is HTTP 200 with `{"ok": false, "error":
"invalid_auth"}`; pages follow `response_metadata.next_cursor`, an empty string on the last
page; a rate limit is HTTP 429 with Retry-After and `{"ok": false, "error": "ratelimited"}`."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from runner.config import load_pipeline
from runner.dev.localserver import Handler, LocalServer
from runner.engine import run
from runner.model import JsonlTargetConfig, Pipeline, StateConfig

ROOT = Path(__file__).resolve().parents[1]
TOKEN, CHANNEL = "xoxb-1111-2222-abcdefGHIJKL", "C0123456789"


class _Handler(Handler):
    do_GET = Handler.dispatch


class SlackApi(LocalServer):
    """conversations.history of one channel of 450 messages, newest first, `limit` (<= 999) a page;
    the first `rate_limited` requests are refused with a 429."""

    handler_class = _Handler
    thread_name = "slack"

    def __init__(self, *, rate_limited: int = 0) -> None:
        super().__init__()
        self.messages = [
            {"type": "message", "user": f"U{n % 7:03d}", "text": f"message {n}", "ts": f"{1712000000 + n}.{n:06d}"}
            for n in range(450, 0, -1)
        ]
        self.rate_limited = rate_limited
        self.requests: list[str] = []

    def handle(self, handler: Handler) -> None:
        self.requests.append(handler.path)
        parts = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if parts.path != "/api/conversations.history":
            self.reply(handler, {"ok": False, "error": "unknown_method"}, status=404)
        elif len(self.requests) <= self.rate_limited:
            self.reply(handler, {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "1"})
        elif handler.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.reply(handler, {"ok": False, "error": "invalid_auth"})  # Slack: 200, not 401
        elif query.get("channel") != CHANNEL:
            self.reply(handler, {"ok": False, "error": "channel_not_found"})
        else:
            self.reply(handler, self.page(query))

    def page(self, query: dict[str, str]) -> dict[str, Any]:
        limit = min(int(query.get("limit", "100")), 999)
        start = int(base64.b64decode(query["cursor"]).decode().split(":")[1]) if query.get("cursor") else 0
        chunk = self.messages[start : start + limit]
        more = start + limit < len(self.messages)
        cursor = base64.b64encode(f"next_ts:{start + limit}".encode()).decode() if more else ""
        return {"ok": True, "messages": chunk, "has_more": more, "pin_count": 0,
                "response_metadata": {"next_cursor": cursor}}

    @staticmethod
    def reply(
        handler: Handler, body: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        handler.send_reply(status, json.dumps(body).encode(), headers=(headers or {}).items())


def shipped(tmp_path: Path, server: SlackApi, *, drop: str = "") -> Path:
    """pipelines/slack.yaml as shipped, pointed at `server` (and without the line `drop`, if given)."""
    text = (ROOT / "pipelines" / "slack.yaml").read_text().replace("https://slack.com", server.base_url)
    if drop:
        text = "\n".join(line for line in text.splitlines() if drop not in line) + "\n"
    path = tmp_path / "slack.yaml"
    path.write_text(text)
    return path


def local(path: Path, tmp_path: Path, token: str = TOKEN) -> tuple[Pipeline, Path]:
    """The file loaded with `token`, writing JSON lines instead of SQLite."""
    pipeline = load_pipeline(path, env={"SLACK_BOT_TOKEN": token, "SLACK_CHANNEL": CHANNEL})
    out = tmp_path / "messages.jsonl"
    target = JsonlTargetConfig(str(out))
    return dataclasses.replace(pipeline, target=target, state=StateConfig(path=tmp_path / "state.db")), out


def no_wait(seconds: float) -> None:
    pass


def test_every_message_lands_once_through_next_cursor(tmp_path: Path) -> None:
    """450 messages in 200-message pages: 3 requests, the cursor of each page sent back, each ts once."""
    with SlackApi() as server:
        pipeline, out = local(shipped(tmp_path, server), tmp_path)
        result = run(pipeline, sleep=no_wait)
    assert (result.status, result.counts.created, result.requests) == ("success", 450, 3)
    landed = [json.loads(line)["record"]["ts"] for line in out.read_text().splitlines()]
    assert sorted(landed) == sorted(m["ts"] for m in server.messages) and len(set(landed)) == 450
    assert "cursor=" not in server.requests[0] and all("cursor=" in r for r in server.requests[1:])


def test_a_revoked_token_fails_the_run_with_exit_1_naming_invalid_auth(tmp_path: Path) -> None:
    """`etl run` with a token Slack no longer knows: exit 1 and `invalid_auth` in the message."""
    with SlackApi() as server:
        path = shipped(tmp_path, server)
        env = {k: v for k, v in os.environ.items() if k != "ETL_STATE_DSN"}
        env.update(SLACK_BOT_TOKEN="xoxb-revoked", SLACK_CHANNEL=CHANNEL)
        done = subprocess.run(
            [sys.executable, "-m", "runner", "run", str(path)], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 1, done.stderr
    assert "error_when '!ok && error' matched: \"invalid_auth\"" in done.stderr
    assert "xoxb-revoked" not in done.stderr + done.stdout
    assert len(server.requests) == 1


def test_without_error_when_a_revoked_token_looks_like_a_successful_empty_run(tmp_path: Path) -> None:
    """Why the file has `error_when`: without it the 200 `invalid_auth` is "success" with 0 records."""
    with SlackApi() as server:
        pipeline, _ = local(shipped(tmp_path, server, drop="error_when:"), tmp_path, token="xoxb-revoked")
        result = run(pipeline, sleep=no_wait)
    assert (result.status, result.counts.processed) == ("success", 0)


def test_a_rate_limited_answer_is_retried_after_its_retry_after(tmp_path: Path) -> None:
    """Slack's 429 `ratelimited` with Retry-After: 1 is waited out (on the sleep seam), then every message lands."""
    waits: list[float] = []
    with SlackApi(rate_limited=2) as server:
        pipeline, _ = local(shipped(tmp_path, server), tmp_path)
        result = run(pipeline, sleep=waits.append)
    assert (result.status, result.counts.created, result.retries) == ("success", 450, 2)
    assert waits.count(1.0) >= 2


def test_the_stand_in_answers_as_slack_does() -> None:
    """Errors come with status 200 and ok=false; the last page's next_cursor is an empty string."""
    with SlackApi() as server:
        url = f"{server.base_url}/api/conversations.history"
        bad = httpx.get(url, params={"channel": CHANNEL}, headers={"Authorization": "Bearer xoxb-revoked"})
        good = httpx.get(url, params={"channel": CHANNEL, "limit": 999}, headers={"Authorization": f"Bearer {TOKEN}"})
        missing = httpx.get(url, params={"channel": "C0"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (bad.status_code, bad.json()) == (200, {"ok": False, "error": "invalid_auth"})
    assert good.json()["response_metadata"]["next_cursor"] == "" and len(good.json()["messages"]) == 450
    assert missing.json()["error"] == "channel_not_found"


@pytest.fixture(autouse=True)
def _no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
