"""The OAuth2 grants SaaS APIs use, end to end against token servers on 127.0.0.1.

`TokenServer` answers as Zoom and Google document their token endpoints (Zoom:
Basic client auth only, `grant_type=account_credentials` with `account_id`;
Google: a JWT-bearer assertion whose RS256 signature, `iss`, `aud` and lifetime
it verifies), plus a refresh-token endpoint that rotates the refresh token; its
resource endpoint accepts only an access token it issued. Every run goes
through `runner.engine.run` into a jsonl target.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from runner import engine, log
from runner.cli import main
from runner.config import load_pipeline
from runner.dev.localserver import Handler, LocalServer
from runner.errors import ConfigError, FetchError
from runner.http import jwtgrant
from conftest import whole, write_pipeline_file

CLIENT_ID = "zoom-client-id-1"
CLIENT_SECRET = "zoom-client-secret-8c1f2e"
ACCOUNT_ID = "acct-42"
REFRESH_TOKEN = "refresh-first-5d0a9b"
SA_EMAIL = "etl@project.iam.gserviceaccount.com"
NO_WAIT: dict[str, Any] = {"sleep": lambda _: None}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """A throwaway RSA key: the service account's, made for this test module only."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


class _Handler(Handler):
    do_GET = do_POST = Handler.dispatch


class TokenServer(LocalServer):
    """Zoom's, Google's and a rotating refresh-token endpoint, and a resource only their tokens open."""

    handler_class = _Handler

    def __init__(self, public_key: Any) -> None:
        super().__init__()
        self.public_key = public_key
        self.lock = threading.Lock()
        self.issued: set[str] = set()
        self.refresh_token = REFRESH_TOKEN
        self.token_requests: list[dict[str, Any]] = []
        self.revoke_next = False  # the resource answers one 401, as after a revocation
        self.expires_in = 3600
        self.items_seen: list[str] = []

    def handle(self, handler: Handler) -> None:
        url = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        form = {k: v[-1] for k, v in parse_qs(handler.read_body().decode()).items()}
        routes: dict[str, Callable[[Handler, dict[str, str]], tuple[int, Any]]] = {
            "/zoom/oauth/token": self.zoom,
            "/google/token": self.google,
            "/refresh/token": self.refresh,
        }
        if url.path in routes:
            with self.lock:
                self.token_requests.append({"path": url.path, "form": form, "query": query,
                                            "authorization": handler.headers.get("Authorization")})
            status, body = routes[url.path](handler, {**query, **form})  # Zoom reads either
        elif url.path == "/api/items":
            status, body = self.items(handler)
        else:
            status, body = 404, {"error": "not_found"}
        handler.send_reply(status, json.dumps(body).encode())

    def issue(self, **extra: Any) -> tuple[int, Any]:
        token = "at-" + secrets.token_hex(12)
        with self.lock:
            self.issued.add(token)
        return 200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer", **extra}

    def zoom(self, handler: Handler, fields: dict[str, str]) -> tuple[int, Any]:
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if "client_secret" in fields or "client_id" in fields:
            return 400, {"reason": "Invalid client_id or client_secret", "error": "invalid_client"}
        if handler.headers.get("Authorization") != f"Basic {expected}":
            return 400, {"reason": "Invalid client_id or client_secret", "error": "invalid_client"}
        if fields.get("grant_type") != "account_credentials":
            return 400, {"reason": "Unsupported grant type", "error": "unsupported_grant_type"}
        if fields.get("account_id") != ACCOUNT_ID:
            return 400, {"reason": "Invalid account_id", "error": "invalid_request"}
        return self.issue(scope="user:read:admin")

    def google(self, handler: Handler, fields: dict[str, str]) -> tuple[int, Any]:
        if fields.get("grant_type") != jwtgrant.JWT_BEARER_GRANT:
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: "}
        try:
            claims = jwt.decode(
                fields.get("assertion", ""), self.public_key, algorithms=["RS256"],
                audience=f"{self.base_url}/google/token", options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.PyJWTError:
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        if claims["iss"] != SA_EMAIL or claims["exp"] - claims["iat"] > 3600:
            short = "Invalid JWT: Token must be a short-lived token"
            return 400, {"error": "invalid_grant", "error_description": short}
        if "scope" not in claims:
            return 400, {"error": "invalid_scope", "error_description": "Invalid OAuth scope or ID token audience"}
        return self.issue()

    def refresh(self, handler: Handler, fields: dict[str, str]) -> tuple[int, Any]:
        if (fields.get("client_id"), fields.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET):
            return 401, {"error": "invalid_client", "error_description": "The OAuth client was not found."}
        with self.lock:
            if fields.get("grant_type") != "refresh_token" or fields.get("refresh_token") != self.refresh_token:
                return 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
            self.refresh_token = "refresh-rotated-" + secrets.token_hex(8)
            rotated = self.refresh_token
        return self.issue(refresh_token=rotated)

    def items(self, handler: Handler) -> tuple[int, Any]:
        token = (handler.headers.get("Authorization") or "").removeprefix("Bearer ")
        with self.lock:
            if self.revoke_next:
                self.revoke_next = False
                self.issued.discard(token)
            if token not in self.issued:
                return 401, {"error": "invalid_token"}
            self.items_seen.append(token)
        return 200, {"data": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]}


@pytest.fixture
def server(rsa_key: rsa.RSAPrivateKey) -> Iterator[TokenServer]:
    with TokenServer(rsa_key.public_key()) as running:
        yield running


def write(tmp_path: Path, server: TokenServer, auth: dict[str, Any]) -> Path:
    """A pipeline reading /api/items with `auth` into `tmp_path/out.jsonl`."""
    return write_pipeline_file(
        tmp_path, server.base_url,
        source=whole({"url": "{base_url}/api/items", "records": "data", "auth": auth}),
        mapping=whole({"external_id": "to_string(id)", "fields": {"name": "name"}}),
        target=whole({"type": "jsonl", "path": "{tmp}/out.jsonl"}),
    )


def names(tmp_path: Path) -> list[str]:
    return [json.loads(line)["record"]["name"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]


ZOOM: dict[str, Any] = {
    "type": "oauth2_client_credentials", "token_url": "{base_url}/zoom/oauth/token",
    "client_id": CLIENT_ID, "client_secret": "${ZOOM_SECRET}", "client_auth": "basic",
    "grant_type": "account_credentials", "params": {"account_id": ACCOUNT_ID},
}
REFRESH: dict[str, Any] = {
    "type": "oauth2_refresh_token", "token_url": "{base_url}/refresh/token", "client_id": CLIENT_ID,
    "client_secret": "${APP_SECRET}", "refresh_token": "${APP_REFRESH_TOKEN}", "scopes": ["read"],
}
ENV = {"ZOOM_SECRET": CLIENT_SECRET, "APP_SECRET": CLIENT_SECRET, "APP_REFRESH_TOKEN": REFRESH_TOKEN}


def google(tmp_path: Path, key: rsa.RSAPrivateKey, **extra: Any) -> dict[str, Any]:
    """A oauth2_jwt_bearer auth block with a service-account key file written in `tmp_path`."""
    key_file = tmp_path / "service-account.json"
    key_file.write_text(json.dumps({
        "type": "service_account", "client_email": SA_EMAIL, "private_key": pem(key),
        "token_uri": "{base_url}/google/token",
    }))
    return {"type": "oauth2_jwt_bearer", "credentials_file": str(key_file),
            "scopes": ["https://www.googleapis.com/auth/drive.readonly"], **extra}


def fill_key_file(tmp_path: Path, server: TokenServer) -> None:
    key_file = tmp_path / "service-account.json"
    key_file.write_text(key_file.read_text().replace("{base_url}", server.base_url))


def assert_no_secret(text: str, *values: str) -> None:
    for value in values:
        assert value not in text


# --- the happy paths ---------------------------------------------------------------------


def test_zoom_account_credentials_with_basic_client_auth(tmp_path: Path, server: TokenServer) -> None:
    """Zoom's grant: Basic client auth, no credentials in the form, grant_type and account_id sent."""
    result = engine.run(write(tmp_path, server, ZOOM), env=ENV, **NO_WAIT)
    assert result.status == "success" and names(tmp_path) == ["one", "two"]
    (sent,) = server.token_requests
    assert sent["form"] == {"grant_type": "account_credentials", "account_id": ACCOUNT_ID}
    assert sent["authorization"].startswith("Basic ")


def test_body_client_auth_is_refused_by_zoom_in_one_line(tmp_path: Path, server: TokenServer) -> None:
    """Zoom's 400 for body credentials fails the run with its error and reason, and no secret."""
    path = write(tmp_path, server, {**ZOOM, "client_auth": "body"})
    with pytest.raises(FetchError) as caught:
        engine.run(path, env=ENV, **NO_WAIT)
    message = str(caught.value)
    assert message == (
        "POST /zoom/oauth/token: the token endpoint refused the grant (HTTP 400): invalid_client:"
        " Invalid client_id or client_secret; check the auth's credentials"
    )
    assert_no_secret(message, CLIENT_SECRET)


def test_google_service_account_key_file(tmp_path: Path, server: TokenServer, rsa_key: rsa.RSAPrivateKey) -> None:
    """A signed assertion from a key file gets a token the resource accepts; the claims are Google's."""
    path = write(tmp_path, server, google(tmp_path, rsa_key, subject="admin@example.com"))
    fill_key_file(tmp_path, server)
    assert engine.run(path, **NO_WAIT).status == "success"
    assert names(tmp_path) == ["one", "two"]
    (sent,) = server.token_requests
    assert set(sent["form"]) == {"grant_type", "assertion"}
    claims = jwt.decode(sent["form"]["assertion"], options={"verify_signature": False})
    assert claims["iss"] == SA_EMAIL and claims["aud"] == f"{server.base_url}/google/token"
    assert claims["scope"] == "https://www.googleapis.com/auth/drive.readonly"
    assert claims["sub"] == "admin@example.com" and claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - time.time()) < 60


def test_google_inline_key_from_the_environment(
    tmp_path: Path, server: TokenServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    """client_email + private_key (PEM, from ${VAR}) + token_url work as the key file does."""
    auth = {"type": "oauth2_jwt_bearer", "client_email": SA_EMAIL, "private_key": "${SA_KEY}",
            "token_url": "{base_url}/google/token", "scopes": ["a", "b"]}
    path = write(tmp_path, server, auth)
    pipeline = load_pipeline(path, env={"SA_KEY": pem(rsa_key)})
    assert repr(pipeline.source.auth).count("BEGIN") == 0  # the key's repr is '***'
    assert engine.run(pipeline, **NO_WAIT).status == "success"


def test_a_wrong_key_is_refused_by_google_in_one_line(tmp_path: Path, server: TokenServer) -> None:
    """An assertion signed with another key: Google's invalid_grant and its description, one line."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = write(tmp_path, server, google(tmp_path, other))
    fill_key_file(tmp_path, server)
    with pytest.raises(FetchError) as caught:
        engine.run(path, **NO_WAIT)
    message = str(caught.value)
    assert "\n" not in message and message.endswith(
        "(HTTP 400): invalid_grant: Invalid JWT Signature.; check the auth's credentials"
    )
    assert_no_secret(message, pem(other), *pem(other).splitlines()[1:-1])


def test_the_refresh_token_rotates_in_memory_only(
    tmp_path: Path, server: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotated refresh token is used for the next grant, logged as a warning without its value,
    and written nowhere (not in the target, the state or the pipeline file)."""
    server.revoke_next = True  # the first token is refused once: a second grant must use the new refresh token
    path = write(tmp_path, server, REFRESH)
    caplog.set_level(logging.DEBUG, logger="runner")
    assert engine.run(path, env=ENV, **NO_WAIT).status == "success"
    sent = [r["form"] for r in server.token_requests]
    assert len(sent) == 2 and sent[0]["refresh_token"] == REFRESH_TOKEN
    assert sent[1]["refresh_token"].startswith("refresh-rotated-")  # the first answer's new one
    assert sent[0]["scope"] == "read" and sent[0]["grant_type"] == "refresh_token"
    rotated = [r for r in caplog.records if getattr(r, "event", None) == "auth.refresh_token_rotated"]
    assert len(rotated) == 2 and all(r.levelno == logging.WARNING for r in rotated)
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for value in (server.refresh_token, sent[1]["refresh_token"]):
        assert value.encode() not in written
        assert value not in caplog.text and value not in _formatted(caplog)


# --- 401, expiry and errors -------------------------------------------------------------------


def test_a_401_fetches_one_new_token(tmp_path: Path, server: TokenServer) -> None:
    """The resource's 401 drops the token; one new grant, and the page is read with the new token."""
    server.revoke_next = True
    result = engine.run(write(tmp_path, server, ZOOM), env=ENV, **NO_WAIT)
    assert result.status == "success" and len(server.token_requests) == 2
    assert len(server.items_seen) == 1 and server.items_seen[0] in server.issued


def test_the_token_endpoint_4xx_names_error_and_description(
    tmp_path: Path, server: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused refresh token: one line with error and error_description; no secret in it or the logs."""
    caplog.set_level(logging.DEBUG, logger="runner")
    path = write(tmp_path, server, REFRESH)
    with pytest.raises(FetchError) as caught:
        engine.run(path, env={**ENV, "APP_REFRESH_TOKEN": "refresh-stale-77aa"}, **NO_WAIT)
    message = str(caught.value)
    assert message == (
        "POST /refresh/token: the token endpoint refused the grant (HTTP 400): invalid_grant:"
        " Token has been expired or revoked.; check the auth's credentials"
    )
    for text in (message, caplog.text, _formatted(caplog)):
        assert_no_secret(text, CLIENT_SECRET, "refresh-stale-77aa")


def test_a_401_from_the_token_endpoint_is_not_retried(tmp_path: Path, server: TokenServer) -> None:
    """invalid_client (401) is one token request and one line, not a refresh loop."""
    path = write(tmp_path, server, REFRESH)
    with pytest.raises(FetchError, match=r"\(HTTP 401\): invalid_client: The OAuth client was not found\."):
        engine.run(path, env={**ENV, "APP_SECRET": "wrong-secret-0000"}, **NO_WAIT)
    assert len(server.token_requests) == 1


def test_no_secret_reaches_a_log_line_at_debug(
    tmp_path: Path, server: TokenServer, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG (headers logged), no access token, client secret, Basic blob, key or assertion shows."""
    # on the `runner` logger itself: an earlier test's `etl` command (log.configure) may have set it to INFO
    caplog.set_level(logging.DEBUG, logger="runner")
    engine.run(write(tmp_path, server, ZOOM), env=ENV, **NO_WAIT)
    jwt_dir = tmp_path / "jwt"
    jwt_dir.mkdir()
    path = write(jwt_dir, server, google(jwt_dir, rsa_key))
    fill_key_file(jwt_dir, server)
    engine.run(path, **NO_WAIT)
    blob = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assertion = server.token_requests[-1]["form"]["assertion"]
    values = [CLIENT_SECRET, blob, assertion, *server.issued, *pem(rsa_key).splitlines()[1:-1]]
    assert any("http.request.headers" in r.getMessage() for r in caplog.records)
    for text in (caplog.text, _formatted(caplog)):
        assert_no_secret(text, *values)
    assert all(log.redact(v) == "***" for v in values)


def _formatted(caplog: pytest.LogCaptureFixture) -> str:
    """The records as `etl` prints them (key=value with their fields), not only their messages."""
    formatter = log.KeyValueFormatter()
    return "\n".join(formatter.format(r) + " " + repr(getattr(r, "fields", {})) for r in caplog.records)


# --- the optional extra ----------------------------------------------------------------------


def test_without_pyjwt_the_run_fails_with_one_line(
    tmp_path: Path, server: TokenServer, rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No PyJWT: a ConfigError (exit 2) naming the extra, before any token request."""
    monkeypatch.setattr(jwtgrant, "jwt_installed", lambda: False)
    path = write(tmp_path, server, google(tmp_path, rsa_key))
    with pytest.raises(ConfigError) as caught:
        engine.run(path, **NO_WAIT)
    assert str(caught.value) == (
        "the oauth2_jwt_bearer auth needs PyJWT with cryptography: pip install 'etl-runner[jwt]'"
    )
    assert caught.value.exit_code == 2 and server.token_requests == []
    ran = CliRunner().invoke(main, ["run", str(path)])
    assert ran.exit_code == 2 and "pip install 'etl-runner[jwt]'" in ran.output
    assert "Traceback" not in ran.output


def test_without_pyjwt_validate_warns(
    tmp_path: Path, server: TokenServer, rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`etl validate` passes the file with a warning at auth.type naming the extra."""
    monkeypatch.setattr(jwtgrant, "jwt_installed", lambda: False)
    path = write(tmp_path, server, google(tmp_path, rsa_key))
    ran = CliRunner().invoke(main, ["validate", str(path)])
    assert ran.exit_code == 0, ran.output
    assert "warning: source.auth.type: the oauth2_jwt_bearer auth needs PyJWT" in ran.output


# --- configuration -----------------------------------------------------------------------------


def test_the_defaults_of_client_credentials(tmp_path: Path) -> None:
    """client_auth body, grant_type client_credentials and no params unless the file says so."""
    auth = {"type": "oauth2_client_credentials", "token_url": "https://a.test/t", "client_id": "c",
            "client_secret": "s-123"}
    built = load_pipeline(write_pipeline_file(tmp_path, source={"auth": auth})).source.auth
    assert built is not None and built.type == "oauth2_client_credentials"
    assert (built.client_auth, built.grant_type, dict(built.params)) == ("body", "client_credentials", {})


@pytest.mark.parametrize(
    "auth,message",
    [
        ({"type": "oauth2_jwt_bearer", "client_email": SA_EMAIL},
         "missing required keys 'private_key' and 'token_url'"),
        ({"type": "oauth2_jwt_bearer", "credentials_file": "k.json", "client_email": SA_EMAIL},
         "use either 'credentials_file' or 'client_email' with 'private_key' and 'token_url', not both"),
        ({**ZOOM, "client_auth": "header"}, "expected one of: body, basic"),
        ({**REFRESH, "refresh_token": None}, "missing required key 'refresh_token'"),
    ],
)
def test_invalid_oauth2_blocks(tmp_path: Path, auth: dict[str, Any], message: str) -> None:
    """The schema words each mistake in a new auth block as one finding."""
    path = write_pipeline_file(tmp_path, source={"auth": whole({k: v for k, v in auth.items() if v is not None})})
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path, env=ENV)
    assert message in str(caught.value)


def test_a_bad_key_file_is_one_line_without_the_key(tmp_path: Path, server: TokenServer) -> None:
    """A key file without private_key, or with a broken one, is a ConfigError naming the file only."""
    key_file = tmp_path / "sa.json"
    broken = "-----BEGIN PRIVATE KEY-----\nnot-a-key-abcdef\n"
    key_file.write_text(json.dumps({"client_email": SA_EMAIL, "private_key": broken, "token_uri": "https://a.test/t"}))
    path = write(tmp_path, server, {"type": "oauth2_jwt_bearer", "credentials_file": str(key_file)})
    with pytest.raises(ConfigError) as caught:
        engine.run(path, **NO_WAIT)
    assert str(caught.value) == f"the private_key of {key_file} is not an unencrypted PEM private key"
    key_file.write_text(json.dumps({"client_email": SA_EMAIL}))
    with pytest.raises(ConfigError, match="missing or not text: private_key, token_uri"):
        engine.run(path, **NO_WAIT)


def test_documented_defaults_are_the_model_defaults() -> None:
    """Each new key's schema default is the dataclass default the run uses."""
    from runner import model
    from runner.config import load_schema

    defs = load_schema()["$defs"]
    cc = model.OAuth2ClientCredentials("https://a.test/t", "c", model.Secret("s"))
    rt = model.OAuth2RefreshToken("https://a.test/t", "c", model.Secret("s"), model.Secret("r"))
    jb = model.OAuth2JwtBearer()
    pairs = [
        (defs["auth_oauth2_client_credentials"], "client_auth", cc.client_auth),
        (defs["auth_oauth2_client_credentials"], "grant_type", cc.grant_type),
        (defs["auth_oauth2_client_credentials"], "params", dict(cc.params)),
        (defs["auth_oauth2_refresh_token"], "client_auth", rt.client_auth),
        (defs["auth_oauth2_refresh_token"], "params", dict(rt.params)),
        (defs["auth_oauth2_refresh_token"], "scopes", list(rt.scopes)),
        (defs["auth_oauth2_jwt_bearer"], "scopes", list(jb.scopes)),
    ]
    for node, key, actual in pairs:
        assert node["properties"][key]["default"] == actual, key
