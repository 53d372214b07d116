"""pipelines/zoom.yaml against a local server that behaves as Zoom documents its
Server-to-Server OAuth and "List meetings":

- `POST /oauth/token` takes `grant_type=account_credentials` and `account_id` (in the query
  or the form) with the client id and secret in a Basic header only: sent in the body they
  are refused (400 `invalid_client`), as are a wrong account id or grant type. A token is
  valid for an hour; there is no refresh token.
- `GET /v2/users/me/meetings` needs an issued token (401, code 124, without one); it lists
  `page_size` meetings a page (at most 300), with a `next_page_token` that is empty on the
  last page and that must come back with the same query parameters (else a 400)."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import secrets
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from runner.config import load_pipeline
from runner.dev.localserver import Handler, LocalServer
from runner.engine import run
from runner.errors import EtlError
from runner.model import JsonlTargetConfig, Pipeline, StateConfig

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT_ID, CLIENT_ID, CLIENT_SECRET = "Zq3vA1bC2dE4fG5h", "zoomClientId9x", "zoom-client-secret-71b2c9e0"
BASIC = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
MEETINGS = "/v2/users/me/meetings"


class _Handler(Handler):
    do_GET = do_POST = Handler.dispatch


class Zoom(LocalServer):
    """Zoom's token endpoint and 650 scheduled meetings of the app's owner."""

    handler_class = _Handler
    thread_name = "zoom"

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.issued: set[str] = set()
        self.every_token: list[str] = []  # revoked ones too
        self.token_requests: list[dict[str, Any]] = []
        self.queries: list[dict[str, str]] = []
        self.pages: dict[str, tuple[tuple[tuple[str, str], ...], int]] = {}  # token -> (query, start)
        self.revoke_at_page: int | None = None  # that page's request finds its token revoked
        self.meetings = [
            {"uuid": base64.b64encode(n.to_bytes(16, "big")).decode(), "id": 81000000000 + n,
             "host_id": "KDcuGImsQZ4", "topic": f"Stand-up {n}", "type": 2,
             "start_time": f"2024-07-{1 + n % 28:02d}T09:00:00Z", "duration": 15, "timezone": "Europe/Berlin",
             "created_at": "2024-06-01T08:00:00Z", "join_url": f"https://us02web.zoom.us/j/{81000000000 + n}"}
            for n in range(1, 651)
        ]

    def handle(self, handler: Handler) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        if handler.command == "POST" and parts.path == "/oauth/token":
            form = {k: v[-1] for k, v in parse_qs(handler.read_body().decode()).items()}
            status, body = self.token(handler, query, form)
        elif handler.command == "GET" and parts.path == MEETINGS:
            status, body = self.list_meetings(handler, query)
        else:
            status, body = 404, {"code": 404, "message": "Not Found"}
        handler.send_reply(status, json.dumps(body).encode())

    def token(self, handler: Handler, query: dict[str, str], form: dict[str, str]) -> tuple[int, Any]:
        fields = {**query, **form}
        with self.lock:
            self.token_requests.append({"fields": fields, "authorization": handler.headers.get("Authorization")})
        invalid_client = {"reason": "Invalid client_id or client_secret", "error": "invalid_client"}
        if "client_id" in fields or "client_secret" in fields or handler.headers.get("Authorization") != BASIC:
            return 400, invalid_client
        if fields.get("grant_type") != "account_credentials":
            return 400, {"reason": "unsupported grant type", "error": "unsupported_grant_type"}
        if fields.get("account_id") != ACCOUNT_ID:
            return 400, {"reason": "Invalid account_id", "error": "invalid_request"}
        token = "eyJzdjoiMDAwMDAxIn0." + secrets.token_urlsafe(18)
        with self.lock:
            self.issued.add(token)
            self.every_token.append(token)
        return 200, {"access_token": token, "token_type": "bearer", "expires_in": 3599,
                     "scope": "meeting:read:list_meetings", "api_url": self.base_url}

    def list_meetings(self, handler: Handler, query: dict[str, str]) -> tuple[int, Any]:
        token = (handler.headers.get("Authorization") or "").removeprefix("Bearer ")
        with self.lock:
            self.queries.append(query)
            if self.revoke_at_page == len(self.queries):
                self.issued.discard(token)
            if token not in self.issued:
                return 401, {"code": 124, "message": "Invalid access token."}
        rest = tuple(sorted((k, v) for k, v in query.items() if k != "next_page_token"))
        start = 0
        if query.get("next_page_token"):
            issued_for = self.pages.get(query["next_page_token"])
            if issued_for is None or issued_for[0] != rest:
                return 400, {"code": 300, "message": "The next page token is invalid or expired."}
            start = issued_for[1]
        size = min(int(query.get("page_size", "30")), 300)
        chunk = self.meetings[start : start + size]
        next_token = ""
        if start + size < len(self.meetings):
            next_token = secrets.token_urlsafe(24)
            self.pages[next_token] = (rest, start + size)
        return 200, {"page_size": size, "total_records": len(self.meetings), "next_page_token": next_token,
                     "meetings": chunk}


@pytest.fixture
def zoom() -> Any:
    with Zoom() as server:
        yield server


def _shipped(tmp_path: Path, server: Zoom, edit: tuple[str, str] | None = None) -> Pipeline:
    """The file as shipped (or with one text `edit`): both Zoom hosts are the stand-in."""
    text = (ROOT / "pipelines" / "zoom.yaml").read_text()
    text = text.replace("https://api.zoom.us", server.base_url).replace("https://zoom.us", server.base_url)
    if edit is not None:
        assert edit[0] in text
        text = text.replace(*edit)
    path = tmp_path / "zoom.yaml"
    path.write_text(text)
    env = {"ZOOM_ACCOUNT_ID": ACCOUNT_ID, "ZOOM_CLIENT_ID": CLIENT_ID, "ZOOM_CLIENT_SECRET": CLIENT_SECRET}
    pipeline = load_pipeline(path, env=env)
    return dataclasses.replace(
        pipeline, target=JsonlTargetConfig(str(tmp_path / "meetings.jsonl")),
        state=StateConfig(path=tmp_path / "state.db"),
    )


def test_account_credentials_then_every_meeting_by_next_page_token(tmp_path: Path, zoom: Zoom) -> None:
    """One token request (Basic header; grant type and account id as fields, no secret in them),
    then three pages of at most 300 with the same params on each; every meeting once."""
    result = run(_shipped(tmp_path, zoom))
    assert (result.status, result.counts.created, result.pages) == ("success", 650, 3)
    [token_request] = zoom.token_requests
    assert token_request["authorization"] == BASIC
    assert token_request["fields"] == {"grant_type": "account_credentials", "account_id": ACCOUNT_ID}
    assert [(q["type"], q["page_size"]) for q in zoom.queries] == [("scheduled", "300")] * 3
    assert "next_page_token" not in zoom.queries[0] and all(q["next_page_token"] for q in zoom.queries[1:])
    lines = [json.loads(line) for line in (tmp_path / "meetings.jsonl").read_text().splitlines()]
    assert lines[0]["external_id"] == "81000000001" and lines[0]["record"]["duration_minutes"] == 15


def test_the_secret_in_the_body_is_refused_as_zoom_refuses_it(tmp_path: Path, zoom: Zoom) -> None:
    """With `client_auth: body` Zoom answers 400 invalid_client: one line with its reason, no
    secret, no meeting requested."""
    pipeline = _shipped(tmp_path, zoom, ("client_auth: basic", "client_auth: body"))
    with pytest.raises(EtlError) as caught:
        run(pipeline)
    message = str(caught.value)
    assert "invalid_client" in message and "Invalid client_id or client_secret" in message
    assert CLIENT_SECRET not in message and "\n" not in message and zoom.queries == []


def test_a_token_revoked_mid_run_is_fetched_again_once(tmp_path: Path, zoom: Zoom) -> None:
    """A 401 on page 2 (the token revoked): one new token, the page again, and the run ends well."""
    zoom.revoke_at_page = 2
    result = run(_shipped(tmp_path, zoom))
    assert (result.status, result.counts.created) == ("success", 650)
    assert len(zoom.token_requests) == 2 and len(zoom.queries) == 4


def test_the_stand_in_refuses_what_zoom_refuses(zoom: Zoom) -> None:
    """A next_page_token with other query parameters, a token request without the Basic header,
    and a request without a token."""
    with httpx.Client(base_url=zoom.base_url) as http:
        token = http.post("/oauth/token", params={"grant_type": "account_credentials", "account_id": ACCOUNT_ID},
                          headers={"Authorization": BASIC}).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        first = http.get(MEETINGS, params={"type": "scheduled", "page_size": 500}, headers=auth).json()
        assert first["page_size"] == 300 and len(first["meetings"]) == 300
        other = {"type": "upcoming", "page_size": 500, "next_page_token": first["next_page_token"]}
        assert http.get(MEETINGS, params=other, headers=auth).status_code == 400
        form = {"grant_type": "account_credentials", "account_id": ACCOUNT_ID,
                "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        assert http.post("/oauth/token", data=form).json()["error"] == "invalid_client"
        assert http.get(MEETINGS).json()["code"] == 124


def test_no_credential_reaches_a_log_line_the_state_or_the_target(
    tmp_path: Path, zoom: Zoom, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG: neither the client secret, nor the Basic header's value, nor an access token."""
    zoom.revoke_at_page = 2  # two tokens issued, both must stay out
    with caplog.at_level(logging.DEBUG, logger="runner"):
        run(_shipped(tmp_path, zoom))
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    stored = (tmp_path / "state.db").read_bytes().decode("latin-1") + (tmp_path / "meetings.jsonl").read_text()
    assert "http.request.headers" in logged and len(zoom.every_token) == 2
    for secret in [CLIENT_SECRET, BASIC.removeprefix("Basic "), *zoom.every_token]:
        assert secret not in logged and secret not in stored


@pytest.fixture(autouse=True)
def _no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
