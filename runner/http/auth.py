"""Auth: turning an `Auth` config into request headers or query parameters.

It owns the auth styles (bearer, basic, api_key, and the OAuth2 grants:
client credentials, refresh token, JWT bearer), registering their secrets
with the log's redaction filter, and the OAuth2 token cache: one token shared
by all threads, fetched on demand through the client's send path, kept until
30 s before `expires_in`, and dropped on a 401 so that the next attempt
fetches a new one. A grant only says what to POST and what to keep from the
answer (`_Grant`); the cache is the same for all three.

A token endpoint that refuses the grant (4xx) fails the run with one line
carrying the answer's `error` and `error_description` (Zoom: `reason`),
never the request's form. A refresh token that the answer rotates replaces
the configured one for the rest of the run, in memory only, and is logged as
`auth.refresh_token_rotated` (the value never). The JWT assertion is signed
in `runner.http.jwtgrant`, which owns the optional PyJWT dependency.

A credential that cannot go in an HTTP header (a non-ASCII character, often
a pasted non-breaking space) is refused here with a one-line error that names
the character, never the value; httpx would raise a UnicodeEncodeError.

`HttpClient` builds one `Authenticator` per run with `make_auth` and calls
`apply` on every attempt to an origin that may have the credentials (see
`runner.http.origins`); `header_names` and `param_names` say what to strip
from a redirect. This module sends nothing itself.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from runner import log
from runner.errors import FetchError, ResponseError
from runner.http.errors import one_line
from runner.http.jwtgrant import JWT_BEARER_GRANT, ServiceAccount, service_account
from runner.model import (
    ApiKeyAuth, Auth, BasicAuth, BearerAuth, ClientAuth, OAuth2ClientCredentials, OAuth2JwtBearer,
    OAuth2RefreshToken, Secret,
)

__all__ = ["Authenticator", "TokenRequest", "make_auth"]

TOKEN_EARLY_EXPIRY = 30.0
REFUSAL_CHARS = 200  # of the token endpoint's error_description in the run's one-line error

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A token grant to POST; the client's send path sends it."""

    url: str
    form: Mapping[str, str]
    headers: Mapping[str, str]


TokenPost = Callable[[TokenRequest], httpx.Response]


class Authenticator(Protocol):
    header_names: frozenset[str]  # the headers `apply` sets
    param_names: frozenset[str]  # the query parameters `apply` sets

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None: ...

    def refresh(self, request: httpx.Request) -> bool:
        """Forget the credential `request` used; True when repeating the request may help."""
        ...


def make_auth(
    auth: Auth | None,
    *,
    post: TokenPost,
    clock: Callable[[], float],
) -> Authenticator | None:
    """Register the auth's secrets with the log and build what applies it."""
    if auth is None:
        return None
    if isinstance(auth, BearerAuth):
        log.add_secrets([auth.token.reveal()])
        token = _header_safe(auth.token.reveal(), "auth: the bearer token")
        return _StaticAuth(headers={"Authorization": f"Bearer {token}"})
    if isinstance(auth, BasicAuth):
        pair = f"{auth.username}:{auth.password.reveal()}".encode()
        blob = base64.b64encode(pair).decode("ascii")
        log.add_secrets([auth.password.reveal(), blob])
        return _StaticAuth(headers={"Authorization": f"Basic {blob}"})
    if isinstance(auth, ApiKeyAuth):
        return _api_key_auth(auth)
    return _OAuth2(_grant(auth), post=post, clock=clock)


def _grant(auth: OAuth2ClientCredentials | OAuth2RefreshToken | OAuth2JwtBearer) -> _Grant:
    if isinstance(auth, OAuth2JwtBearer):
        return _JwtBearer(auth, service_account(auth))  # a ConfigError naming the extra when PyJWT is missing
    if isinstance(auth, OAuth2RefreshToken):
        return _RefreshToken(auth)
    return _ClientCredentials(auth)


def _api_key_auth(auth: ApiKeyAuth) -> _StaticAuth:
    log.add_secrets([auth.value.reveal()])
    if auth.location == "query":
        log.add_secret_params([auth.name])
        return _StaticAuth(params={auth.name: auth.value.reveal()})
    log.add_secret_headers([auth.name])
    return _StaticAuth(headers={auth.name: _header_safe(auth.value.reveal(), "auth: the api_key value")})


def _header_safe(value: str, what: str, error: Callable[[str], FetchError] = FetchError) -> str:
    """`value` if it can be an HTTP header value, else an error naming the character, not the value."""
    if not value:
        raise error(f"{what} is empty")
    for index, char in enumerate(value, 1):
        if not " " <= char <= "~":  # printable ASCII: what h11 and httpx send as they are
            name = unicodedata.name(char, "a control character")
            raise error(
                f"{what} contains characters that cannot go in an HTTP header: U+{ord(char):04X}"
                f" ({name}) at character {index}; HTTP headers carry printable ASCII only"
            )
    if value.strip(" ") != value:
        raise error(f"{what} starts or ends with a space, which cannot go in an HTTP header")
    return value


class _StaticAuth:
    """bearer, basic and api_key: fixed headers or query parameters."""

    def __init__(
        self, *, headers: Mapping[str, str] | None = None, params: Mapping[str, str] | None = None
    ) -> None:
        self._headers = dict(headers or {})
        self._params = dict(params or {})
        self.header_names = frozenset(self._headers)
        self.param_names = frozenset(self._params)

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers.update(self._headers)
        params.update(self._params)

    def refresh(self, request: httpx.Request) -> bool:
        return False


class _Grant(Protocol):
    def request(self) -> TokenRequest:
        """The POST that asks for a new access token."""
        ...

    def answered(self, body: Mapping[str, Any]) -> None:
        """Keep what the token answer changes (a rotated refresh token)."""
        ...


class _OAuth2:
    """Any OAuth2 grant: one cached token for all threads, fetched on demand."""

    header_names = frozenset({"Authorization"})
    param_names: frozenset[str] = frozenset()

    def __init__(
        self,
        grant: _Grant,
        *,
        post: TokenPost,
        clock: Callable[[], float],
    ) -> None:
        self._grant = grant
        self._post = post
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def apply(self, headers: dict[str, str], params: dict[str, Any]) -> None:
        headers["Authorization"] = f"Bearer {self._current()}"

    def refresh(self, request: httpx.Request) -> bool:
        if "Authorization" not in request.headers:
            return False  # sent without the token (withheld from its origin): a new one changes nothing
        with self._lock:  # only the first of several threads that saw a 401 drops the token
            if request.headers.get("Authorization") == f"Bearer {self._token}":
                self._token = None
        return True

    def _current(self) -> str:
        with self._lock:  # held while fetching so that concurrent threads fetch once
            if self._token is None or self._clock() >= self._expires_at:
                self._token, self._expires_at = self._fetch()
            return self._token

    def _fetch(self) -> tuple[str, float]:
        try:
            response = self._post(self._grant.request())
        except FetchError as exc:
            if exc.status is None or not 400 <= exc.status < 500:
                raise
            raise _refused(exc) from None  # from None: the chain adds nothing the line does not say
        token, expires_in, body = _parse_token(response)  # which registers the token as a secret
        self._grant.answered(body)
        if expires_in is None:
            return token, float("inf")
        return token, self._clock() + max(expires_in - TOKEN_EARLY_EXPIRY, expires_in / 2)


# --- the grants -----------------------------------------------------------------------


class _ClientCredentials:
    """RFC 6749 section 4.4, with the grant type and extra fields that Zoom's apps need."""

    def __init__(self, config: OAuth2ClientCredentials) -> None:
        self._config = config
        self._client = _client_credentials(config.client_id, config.client_secret, config.client_auth)

    def request(self) -> TokenRequest:
        c = self._config
        return _token_request(c.token_url, {"grant_type": c.grant_type}, c.scopes, c.params, self._client)

    def answered(self, body: Mapping[str, Any]) -> None:
        pass


class _RefreshToken:
    """RFC 6749 section 6; a refresh token that the answer rotates is used from then on, in memory only."""

    def __init__(self, config: OAuth2RefreshToken) -> None:
        self._config = config
        self._client = _client_credentials(config.client_id, config.client_secret, config.client_auth)
        self._refresh_token = config.refresh_token.reveal()
        log.add_secrets([self._refresh_token])

    def request(self) -> TokenRequest:
        c = self._config
        grant = {"grant_type": "refresh_token", "refresh_token": self._refresh_token}
        return _token_request(c.token_url, grant, c.scopes, c.params, self._client)

    def answered(self, body: Mapping[str, Any]) -> None:
        new = body.get("refresh_token")
        if isinstance(new, str) and new and new != self._refresh_token:
            log.add_secrets([new])  # before anything could show it
            self._refresh_token = new  # `_OAuth2` holds its lock: no other thread reads it meanwhile
            log.event(
                logger, "auth.refresh_token_rotated", level=logging.WARNING,
                hint="the new refresh token is kept for this run only; the provider may have revoked the"
                " configured one, so update it before the next run",
            )


class _JwtBearer:
    """RFC 7523: a new signed assertion for every token request (no client secret is sent)."""

    def __init__(
        self, config: OAuth2JwtBearer, account: ServiceAccount, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self._config = config
        self._account = account
        self._wall_clock = wall_clock  # `iat` and `exp` are wall-clock times, unlike the cache's clock

    def request(self) -> TokenRequest:
        c = self._config
        signed = self._account.assertion(scopes=c.scopes, subject=c.subject, now=self._wall_clock())
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": signed}
        return TokenRequest(self._account.token_url, form, {"Accept": "application/json"})

    def answered(self, body: Mapping[str, Any]) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _ClientSecret:
    """How the client authenticates to the token endpoint: form fields or a Basic header."""

    form: Mapping[str, str]
    headers: Mapping[str, str]


def _client_credentials(client_id: str, secret: Secret, how: ClientAuth) -> _ClientSecret:
    log.add_secrets([secret.reveal()])
    if how == "body":
        return _ClientSecret({"client_id": client_id, "client_secret": secret.reveal()}, {})
    # as Zoom, Spotify and most providers document it: base64 of `id:secret`, not form-encoded first
    blob = base64.b64encode(f"{client_id}:{secret.reveal()}".encode()).decode("ascii")
    log.add_secrets([blob])
    _header_safe(secret.reveal(), "auth: the client_secret")
    return _ClientSecret({}, {"Authorization": f"Basic {blob}"})


def _token_request(
    url: str,
    grant: Mapping[str, str],
    scopes: tuple[str, ...],
    params: Mapping[str, str],
    client: _ClientSecret,
) -> TokenRequest:
    form = {**params, **grant, **client.form}  # the grant's own fields win over a stray `params` entry
    if scopes:
        form["scope"] = " ".join(scopes)
    return TokenRequest(url, form, {"Accept": "application/json", **client.headers})


# --- the token endpoint's answer -----------------------------------------------------------


def _refused(exc: FetchError) -> FetchError:
    """The token endpoint's 4xx as one line: its `error` and `error_description`, never our form."""
    error, description = _oauth_error(exc.detail)
    said = ": ".join(part for part in (error, description) if part) or "no OAuth2 error in the answer"
    message = f"the token endpoint refused the grant (HTTP {exc.status}): {said}; check the auth's credentials"
    return FetchError(log.redact(message), method=exc.method, path=exc.path, status=exc.status)


def _oauth_error(detail: str) -> tuple[str, str]:
    """`error` and `error_description` (or Zoom's `reason`) from an error body's excerpt."""
    try:
        body = json.loads(detail)
    except ValueError:
        body = None
    fields: dict[str, str] = {}
    for key in ("error", "error_description", "reason"):
        value = body.get(key) if isinstance(body, dict) else _string_field(detail, key)
        if isinstance(value, str) and value:
            fields[key] = one_line(value, REFUSAL_CHARS)
    return fields.get("error", ""), fields.get("error_description") or fields.get("reason", "")


def _string_field(text: str, key: str) -> str | None:
    """A JSON string field of an excerpt that was cut short (so is no JSON document)."""
    match = re.search(rf'"{key}"\s*:\s*"((?:[^"\\]|\\.)*)', text)
    return match.group(1) if match else None


def _parse_token(response: httpx.Response) -> tuple[str, float | None, Mapping[str, Any]]:
    path = log.redact_url(response.request.url)
    where: dict[str, Any] = {"method": "POST", "path": path, "status": response.status_code}
    try:
        body = response.json()
    except ValueError as exc:
        raise ResponseError("the token response is not JSON", **where) from exc
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise ResponseError("the token response has no access_token", **where)
    log.add_secrets([token])  # before the check below can fail: its message never shows the token
    _header_safe(token, "the token response's access_token", lambda m: ResponseError(m, **where))
    try:
        return token, float(body["expires_in"]), body
    except (KeyError, TypeError, ValueError):
        return token, None, body
