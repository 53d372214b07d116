"""Auth: turning an `Auth` config into request headers or query parameters.

It owns the four auth styles (bearer, basic, api_key, OAuth2 client
credentials), registering their secrets with the log's redaction filter, and
the OAuth2 token cache: one token shared by all threads, fetched on demand
through the client's send path, kept until 30 s before `expires_in`, and
dropped on a 401 so that the next attempt fetches a new one.

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
import threading
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from runner import log
from runner.errors import FetchError, ResponseError
from runner.model import ApiKeyAuth, Auth, BasicAuth, BearerAuth, OAuth2ClientCredentials

__all__ = ["Authenticator", "TokenRequest", "make_auth"]

TOKEN_EARLY_EXPIRY = 30.0


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A client-credentials grant to POST; the client's send path sends it."""

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
    log.add_secrets([auth.client_secret.reveal()])
    return _OAuth2(auth, post=post, clock=clock)


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


class _OAuth2:
    """Client credentials: one cached token for all threads, fetched on demand."""

    header_names = frozenset({"Authorization"})
    param_names: frozenset[str] = frozenset()

    def __init__(
        self,
        config: OAuth2ClientCredentials,
        *,
        post: TokenPost,
        clock: Callable[[], float],
    ) -> None:
        self._config = config
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
        response = self._post(_token_request(self._config))
        token, expires_in = _parse_token(response)  # which registers the token as a secret
        if expires_in is None:
            return token, float("inf")
        return token, self._clock() + max(expires_in - TOKEN_EARLY_EXPIRY, expires_in / 2)


def _token_request(config: OAuth2ClientCredentials) -> TokenRequest:
    form = {
        "grant_type": "client_credentials",
        "client_id": config.client_id,
        "client_secret": config.client_secret.reveal(),
    }
    if config.scopes:
        form["scope"] = " ".join(config.scopes)
    return TokenRequest(config.token_url, form, {"Accept": "application/json"})


def _parse_token(response: httpx.Response) -> tuple[str, float | None]:
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
        return token, float(body["expires_in"])
    except (KeyError, TypeError, ValueError):
        return token, None
