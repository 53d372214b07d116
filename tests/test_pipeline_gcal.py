"""pipelines/google-calendar.yaml against a local server that behaves as Google documents
its token endpoint and Calendar's `events.list`:

- `POST /token` takes a JWT-bearer grant whose RS256 signature it verifies with the service
  account's public key, with `iss` the client email, `aud` the token URL, the Calendar scope
  and a lifetime of at most an hour; anything else is a 400 `invalid_grant` / `invalid_scope`.
- `events.list` needs an access token it issued; pages by `pageToken` / `nextPageToken`
  (`maxResults` a page); the last page carries `nextSyncToken`; a request with `syncToken`
  lists only what changed since (cancelled events too); an expired sync token is a 410
  `fullSyncRequired`; `syncToken` beside `timeMin`, `orderBy` and the other parameters Google
  forbids with it is a 400."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from runner.config import load_pipeline
from runner.dev.localserver import Handler, LocalServer
from runner.engine import run
from runner.errors import EtlError, FetchError
from runner.model import JsonlTargetConfig, Pipeline, StateConfig
from runner.state import open_store

ROOT = Path(__file__).resolve().parents[1]
SA_EMAIL = "etl-reader@acme-data.iam.gserviceaccount.com"
CALENDAR = "team@group.calendar.google.com"
EVENTS = f"/calendar/v3/calendars/{CALENDAR}/events"
SCOPE = "https://www.googleapis.com/auth/calendar.readonly"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# the parameters Google refuses beside a syncToken
NOT_WITH_SYNC = {"iCalUID", "orderBy", "privateExtendedProperty", "q", "sharedExtendedProperty",
                 "timeMin", "timeMax", "updatedMin"}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """The service account's key pair, made for this module only."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _google_error(status: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"errors": [{"domain": "global", "reason": reason, "message": message}],
                              "code": status, "message": message}}


class _Handler(Handler):
    do_GET = do_POST = Handler.dispatch


class GoogleCalendar(LocalServer):
    """260 events; every change bumps a version, and a sync token names the version it was issued at."""

    handler_class = _Handler
    thread_name = "gcal"

    def __init__(self, public_key: Any) -> None:
        super().__init__()
        self.public_key = public_key
        self.issued: set[str] = set()
        self.claims: list[dict[str, Any]] = []
        self.queries: list[dict[str, str]] = []
        self.expired: set[str] = set()
        self.version = 0
        self.events: dict[str, dict[str, Any]] = {}
        self.changed_at: dict[str, int] = {}
        for n in range(1, 261):
            self.change(f"ev{n:04d}", f"Event {n}")

    def change(self, event_id: str, summary: str, status: str = "confirmed") -> None:
        self.version += 1
        self.events[event_id] = {
            "kind": "calendar#event", "id": event_id, "status": status, "summary": summary,
            "htmlLink": f"https://www.google.com/calendar/event?eid={event_id}",
            "start": {"dateTime": "2024-06-03T09:00:00+02:00"}, "end": {"date": "2024-06-04"},
            "organizer": {"email": CALENDAR}, "updated": f"2024-06-01T00:00:{self.version % 60:02d}.000Z",
        }
        self.changed_at[event_id] = self.version

    def handle(self, handler: Handler) -> None:
        parts = urlsplit(handler.path)
        if handler.command == "POST" and parts.path == "/token":
            form = {k: v[-1] for k, v in parse_qs(handler.read_body().decode()).items()}
            status, body = self.token(form)
        elif handler.command == "GET" and unquote(parts.path) == EVENTS:
            status, body = self.list_events(handler, {k: v[-1] for k, v in parse_qs(parts.query).items()})
        else:
            status, body = _google_error(404, "notFound", "Not Found")
        handler.send_reply(status, json.dumps(body).encode())

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != JWT_GRANT:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: "}
        try:
            claims = jwt.decode(form.get("assertion", ""), self.public_key, algorithms=["RS256"],
                                audience=f"{self.base_url}/token", options={"require": ["iss", "aud", "iat", "exp"]})
        except jwt.PyJWTError:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        if claims["iss"] != SA_EMAIL or claims["exp"] - claims["iat"] > 3600:
            short = "Invalid JWT: Token must be a short-lived token"
            return 400, {"error": "invalid_grant", "error_description": short}
        if SCOPE not in str(claims.get("scope", "")).split():
            return 400, {"error": "invalid_scope", "error_description": "Invalid OAuth scope or ID token audience"}
        self.claims.append(claims)
        token = "ya29." + secrets.token_urlsafe(24)
        self.issued.add(token)
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def list_events(self, handler: Handler, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if (handler.headers.get("Authorization") or "").removeprefix("Bearer ") not in self.issued:
            return _google_error(401, "authError", "Invalid Credentials")
        self.queries.append(query)
        sync = query.get("syncToken")
        if sync is not None and NOT_WITH_SYNC & set(query):
            names = ", ".join(sorted(NOT_WITH_SYNC & set(query)))
            return _google_error(400, "invalid", f"The syncToken cannot be combined with: {names}")
        if sync is not None and (sync in self.expired or not sync.startswith("sync-")):
            return _google_error(410, "fullSyncRequired", "Sync token is no longer valid, a full sync is required.")
        since = int(sync.removeprefix("sync-")) if sync else 0
        ids = [i for i in self.events
               if self.changed_at[i] > since and (sync or self.events[i]["status"] != "cancelled")]
        start, size = int(query.get("pageToken", "0")), min(int(query.get("maxResults", "250")), 2500)
        body: dict[str, Any] = {"kind": "calendar#events", "summary": CALENDAR,
                                "items": [self.events[i] for i in ids[start : start + size]]}
        if start + size < len(ids):
            body["nextPageToken"] = str(start + size)
        else:
            body["nextSyncToken"] = f"sync-{self.version}"
        return 200, body


@pytest.fixture
def google(rsa_key: rsa.RSAPrivateKey) -> Any:
    with GoogleCalendar(rsa_key.public_key()) as server:
        yield server


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _shipped(tmp_path: Path, server: GoogleCalendar, key: rsa.RSAPrivateKey, edit: tuple[str, str] | None = None
             ) -> Pipeline:
    """The file as shipped (or with one text `edit`), with the server's URL, a service-account key
    file whose token_uri is the server's, JSON lines and state in tmp_path."""
    key_file = tmp_path / "service-account.json"
    key_file.write_text(json.dumps({"type": "service_account", "client_email": SA_EMAIL,
                                    "private_key": _pem(key), "token_uri": f"{server.base_url}/token"}))
    text = (ROOT / "pipelines" / "google-calendar.yaml").read_text()
    text = text.replace("base_url: https://www.googleapis.com", f"base_url: {server.base_url}")  # not the scope
    if edit is not None:
        assert edit[0] in text
        text = text.replace(*edit)
    path = tmp_path / "google-calendar.yaml"
    path.write_text(text)
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(key_file), "GOOGLE_CALENDAR_ID": CALENDAR}
    pipeline = load_pipeline(path, env=env)
    return dataclasses.replace(
        pipeline, target=JsonlTargetConfig(str(tmp_path / "events.jsonl")),
        state=StateConfig(path=tmp_path / "state.db"),
    )


def _saved(tmp_path: Path) -> Any:
    store = open_store(StateConfig(path=tmp_path / "state.db"), read_only=True)
    try:
        return store.watermark("google-calendar-events")
    finally:
        store.close()


def test_first_run_signs_in_as_the_service_account_and_saves_the_sync_token(
    tmp_path: Path, google: GoogleCalendar, rsa_key: rsa.RSAPrivateKey
) -> None:
    """One verified assertion (iss, aud, scope, at most an hour), three pages by pageToken with the
    file's params on each, every event once, and the last page's nextSyncToken saved."""
    result = run(_shipped(tmp_path, google, rsa_key))
    assert (result.status, result.counts.created, result.pages) == ("success", 260, 2)
    [claims] = google.claims
    assert (claims["iss"], claims["aud"], claims["scope"]) == (SA_EMAIL, f"{google.base_url}/token", SCOPE)
    assert claims["exp"] - claims["iat"] <= 3600 and "sub" not in claims
    assert [q.get("pageToken") for q in google.queries] == [None, "250"]
    assert all(q["maxResults"] == "250" and q["singleEvents"] == "true" for q in google.queries)
    assert _saved(tmp_path) == "sync-260"


def test_the_next_run_sends_the_sync_token_and_reads_only_changes(
    tmp_path: Path, google: GoogleCalendar, rsa_key: rsa.RSAPrivateKey
) -> None:
    """syncToken beside the params (none that Google forbids with it): a changed, a cancelled and a
    new event are read, and the newer token saved."""
    pipeline = _shipped(tmp_path, google, rsa_key)
    run(pipeline)
    google.queries.clear()
    google.change("ev0002", "Event 2, moved")
    google.change("ev0003", "Event 3", status="cancelled")
    google.change("ev0261", "Event 261")
    result = run(pipeline)
    assert google.queries == [{"maxResults": "250", "singleEvents": "true", "syncToken": "sync-260"}]
    assert (result.status, result.counts.processed, result.counts.created, result.counts.updated) == (
        "success", 3, 1, 2)
    last = {r["external_id"]: r["record"]["status"] for r in (
        json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()[-3:])}
    assert last == {"ev0002": "confirmed", "ev0003": "cancelled", "ev0261": "confirmed"}
    assert _saved(tmp_path) == "sync-263"


def test_an_expired_sync_token_reads_everything_again_in_the_same_run(
    tmp_path: Path, google: GoogleCalendar, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    """410 fullSyncRequired to the first request: incremental.token_reset, then a full read
    without the token (exit 0), and a new token saved."""
    pipeline = _shipped(tmp_path, google, rsa_key)
    run(pipeline)
    google.expired.add("sync-260")
    google.change("ev0001", "Event 1, renamed")
    google.queries.clear()
    with caplog.at_level(logging.WARNING, logger="runner"):
        result = run(pipeline)
    assert [r.getMessage() for r in caplog.records].count("incremental.token_reset") == 1
    assert (result.exit_code, result.counts.processed, result.counts.updated) == (0, 260, 1)
    assert google.queries[0]["syncToken"] == "sync-260" and "syncToken" not in google.queries[1]
    assert _saved(tmp_path) == "sync-261"


def test_a_forbidden_parameter_beside_the_sync_token_is_refused(
    tmp_path: Path, google: GoogleCalendar, rsa_key: rsa.RSAPrivateKey
) -> None:
    """The stand-in refuses what Google refuses: with `timeMin` in params, the first run works and
    the second (which adds syncToken beside it) fails with the 400, keeping the saved token."""
    pipeline = _shipped(tmp_path, google, rsa_key,
                        ("params: {maxResults: 250,", "params: {timeMin: '2024-01-01T00:00:00Z', maxResults: 250,"))
    assert run(pipeline).status == "success"
    with pytest.raises(FetchError) as caught:
        run(pipeline)
    assert caught.value.status == 400 and "cannot be combined with: timeMin" in caught.value.detail
    assert _saved(tmp_path) == "sync-260"


def test_a_key_google_does_not_know_fails_in_one_line(
    tmp_path: Path, google: GoogleCalendar, rsa_key: rsa.RSAPrivateKey
) -> None:
    """An assertion signed with another key: the token endpoint's 400 is one line with its
    error_description and no secret; no event is requested."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pipeline = _shipped(tmp_path, google, other)
    with pytest.raises(EtlError) as caught:
        run(pipeline)
    message = str(caught.value)
    assert "invalid_grant" in message and "Invalid JWT Signature." in message and "\n" not in message
    assert "BEGIN PRIVATE KEY" not in message and google.queries == []


def test_no_credential_reaches_a_log_line_the_state_or_the_target(
    tmp_path: Path, google: GoogleCalendar, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG, neither the private key, nor a signed assertion, nor an issued access token
    appears in the logs, the state file or the output."""
    with caplog.at_level(logging.DEBUG, logger="runner"):
        run(_shipped(tmp_path, google, rsa_key))
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "http.request.headers" in logged
    stored = (tmp_path / "state.db").read_bytes().decode("latin-1") + (tmp_path / "events.jsonl").read_text()
    key_lines = _pem(rsa_key).splitlines()[1:-1]
    for secret in [*google.issued, *key_lines]:
        assert secret not in logged and secret not in stored
    assert "eyJ" not in logged and "eyJ" not in stored  # no JWT (a signed assertion) anywhere


@pytest.fixture(autouse=True)
def _no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
