"""Credentials that cannot go in an HTTP header are refused in one line, never shown, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from runner.errors import EtlError, FetchError, ResponseError
from runner.http.client import HttpClient
from runner.model import ApiKeyAuth, BasicAuth, BearerAuth, OAuth2ClientCredentials, Retry, Secret, Timeout

BASE = "https://api.test"
URL = f"{BASE}/v1/items"


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def make_client(**options: Any) -> HttpClient:
    return HttpClient(timeout=Timeout(), retry=Retry(max_attempts=1), **options)


@pytest.mark.parametrize(
    ("auth", "secret", "what"),
    [
        (BearerAuth(Secret("café-token")), "café-token", "auth: the bearer token"),
        (BearerAuth(Secret("tok\u00a0123456")), "tok\u00a0123456", "auth: the bearer token"),
        (ApiKeyAuth("X-Api-Key", Secret("kéy-123456")), "kéy-123456", "auth: the api_key value"),
        (BearerAuth(Secret("tok-12345\n")), "tok-12345", "auth: the bearer token"),
    ],
    ids=["accent", "nbsp", "api-key-header", "newline"],
)
def test_a_credential_httpx_cannot_encode_is_one_line_without_it(auth: Any, secret: str, what: str) -> None:
    """The error names the credential, the character and its position, and not the value."""
    with pytest.raises(FetchError) as caught:
        make_client(auth=auth)
    message = str(caught.value)
    assert message.startswith(f"{what} contains characters that cannot go in an HTTP header: U+")
    assert "\n" not in message and secret not in message and secret[:4] not in message
    assert not isinstance(caught.value.__cause__, UnicodeError)


def test_the_nbsp_message_says_what_the_character_is() -> None:
    """A pasted non-breaking space is named so that the user knows what to look for."""
    with pytest.raises(FetchError) as caught:
        make_client(auth=BearerAuth(Secret("tok\u00a0123456")))
    assert str(caught.value) == (
        "auth: the bearer token contains characters that cannot go in an HTTP header: U+00A0"
        " (NO-BREAK SPACE) at character 4; HTTP headers carry printable ASCII only"
    )


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "auth: the bearer token is empty"),
        ("tok-123456 ", "auth: the bearer token starts or ends with a space, which cannot go in an HTTP header"),
    ],
)
def test_empty_or_padded_tokens_are_refused(token: str, message: str) -> None:
    """h11 would refuse these with the header value in its message; here it is one clear line."""
    with pytest.raises(FetchError) as caught:
        make_client(auth=BearerAuth(Secret(token)))
    assert str(caught.value) == message


def test_credentials_outside_headers_may_be_any_text(api: respx.MockRouter) -> None:
    """Basic auth (UTF-8, base64) and a query key (percent-encoded) carry non-ASCII fine."""
    route = api.get("/v1/items").mock(return_value=httpx.Response(200))
    with make_client(auth=BasicAuth("zoë", Secret("pässwörd"))) as client:
        client.send("GET", URL)
    with make_client(auth=ApiKeyAuth("key", Secret("kéy"), location="query")) as client:
        client.send("GET", URL)
    basic, query = (call.request for call in route.calls)
    assert basic.headers["Authorization"].startswith("Basic ")
    assert query.url.params["key"] == "kéy"


def test_a_non_ascii_access_token_is_a_response_error(api: respx.MockRouter) -> None:
    """A token endpoint that answers a token httpx cannot send fails with its path, not the token."""
    api.post("/oauth/token").mock(return_value=httpx.Response(200, json={"access_token": "at-ünïcode-1"}))
    auth = OAuth2ClientCredentials(f"{BASE}/oauth/token", "cid", Secret("cs-123456"))
    with make_client(auth=auth) as client, pytest.raises(ResponseError) as caught:
        client.send("GET", URL)
    assert str(caught.value).startswith(
        "POST /oauth/token: the token response's access_token contains characters that cannot go"
    )
    assert "ünïcode" not in str(caught.value)


def test_a_non_ascii_configured_header_is_named_not_shown(api: respx.MockRouter) -> None:
    """A `headers:` value with non-ASCII text fails with the header's name only."""
    with pytest.raises(FetchError) as caught:
        make_client(headers={"X-Team": "équipe-secrète"})
    assert str(caught.value) == (
        "the header 'X-Team' contains characters that cannot go in an HTTP header (HTTP headers carry ASCII only)"
    )
    api.get("/v1/items").mock(return_value=httpx.Response(200))
    with make_client() as client, pytest.raises(FetchError) as caught:
        client.send("GET", URL, headers={"X-Trace": "tracé"})
    assert str(caught.value) == (
        "GET /v1/items: the header 'X-Trace' contains characters that cannot go in an HTTP header"
        " (HTTP headers carry ASCII only)"
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_these_errors_are_etl_errors() -> None:
    """The CLI turns an EtlError into one line and an exit code; a UnicodeEncodeError would be a traceback."""
    with pytest.raises(EtlError):
        make_client(auth=BearerAuth(Secret("café-token")))
