"""Tests of the one send path: retries, Retry-After, rate limit, auth, caps, logs, leaks."""

from __future__ import annotations

import email.utils
import io
import itertools
import json
import logging
import random
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from runner import log
from runner.http.client import HttpClient
from runner.errors import FetchError, ResponseError
from runner.model import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    OAuth2ClientCredentials,
    RateLimit,
    Retry,
    Secret,
    Timeout,
)

from fakes import WALL, FakeTime, fake_client

BASE = "https://api.test"
URL = f"{BASE}/v1/items"
SEED = 1234


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def make_client(fake: FakeTime, **overrides: Any) -> HttpClient:
    return fake_client(fake, seed=SEED, **overrides)


def responses(*statuses: int) -> list[httpx.Response]:
    return [httpx.Response(status, json={"status": status}) for status in statuses]


# --- success ---------------------------------------------------------------------


def test_success_returns_a_read_response(api: respx.MockRouter, fake: FakeTime) -> None:
    """A 200 comes back with its body read, one request counted and no retry."""
    api.get("/v1/items").mock(return_value=httpx.Response(200, json=[{"id": 1}]))
    with make_client(fake) as client:
        response = client.send("GET", URL)
    assert response.json() == [{"id": 1}]
    assert (client.requests, client.retries, fake.sleeps) == (1, 0, [])


def test_timeouts_come_from_config_exactly(api: respx.MockRouter, fake: FakeTime) -> None:
    """Every timeout phase is the configured one, never an httpx default."""
    route = api.get("/v1/items").mock(return_value=httpx.Response(200))
    timeout = Timeout(connect=1.5, read=7.0, write=3.0, pool=2.0)
    with make_client(fake, timeout=timeout) as client:
        client.send("GET", URL)
    sent = route.calls.last.request.extensions["timeout"]
    assert sent == {"connect": 1.5, "read": 7.0, "write": 3.0, "pool": 2.0}


def test_params_json_and_headers_are_sent(api: respx.MockRouter, fake: FakeTime) -> None:
    """Query parameters, a JSON body and default plus per-request headers reach the server."""
    route = api.post("/v1/items").mock(return_value=httpx.Response(201))
    with make_client(fake, headers={"Accept": "application/json"}) as client:
        client.send("POST", URL, params={"a": 1}, json={"x": [1]}, headers={"X-Trace": "t"})
    request = route.calls.last.request
    assert request.url.params["a"] == "1" and json.loads(request.content) == {"x": [1]}
    assert request.headers["Accept"] == "application/json" and request.headers["X-Trace"] == "t"


# --- what is retried ---------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_retryable_statuses_are_retried(
    api: respx.MockRouter, fake: FakeTime, status: int
) -> None:
    """429 and 5xx are retried until a success, each retry after one sleep."""
    route = api.get("/v1/items").mock(side_effect=responses(status, status, 200))
    with make_client(fake) as client:
        assert client.send("GET", URL).status_code == 200
    assert route.call_count == 3 and client.retries == 2 and len(fake.sleeps) == 2


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.ReadError("connection reset by peer"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.PoolTimeout("pool exhausted"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_network_errors_are_retried(
    api: respx.MockRouter, fake: FakeTime, error: Exception
) -> None:
    """Connect errors, timeouts, resets and dropped connections are retried."""
    route = api.get("/v1/items").mock(side_effect=[error, httpx.Response(200)])
    with make_client(fake) as client:
        assert client.send("GET", URL).status_code == 200
    assert route.call_count == 2 and client.retries == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 408, 409])
def test_other_client_errors_fail_at_once(
    api: respx.MockRouter, fake: FakeTime, status: int
) -> None:
    """A 4xx other than 429 (and 408/409 unless opted in) fails on the first attempt."""
    route = api.get("/v1/items").mock(side_effect=responses(status, 200))
    with make_client(fake) as client, pytest.raises(FetchError) as caught:
        client.send("GET", URL)
    assert route.call_count == 1 and fake.sleeps == []
    assert caught.value.status == status and caught.value.path == "/v1/items"
    assert str(caught.value).startswith(f"GET /v1/items: HTTP {status} ")


def test_401_says_to_check_credentials(api: respx.MockRouter, fake: FakeTime) -> None:
    """A 401 message tells the user to check the credentials and keeps a body excerpt."""
    api.get("/v1/items").mock(return_value=httpx.Response(401, json={"error": "bad token"}))
    with make_client(fake) as client, pytest.raises(FetchError) as caught:
        client.send("GET", URL)
    assert str(caught.value) == (
        "GET /v1/items: HTTP 401 Unauthorized: check the credentials (auth) of this pipeline"
    )
    assert caught.value.detail == '{"error":"bad token"}'


@pytest.mark.parametrize("status", [408, 409])
def test_408_and_409_are_retried_when_opted_in(
    api: respx.MockRouter, fake: FakeTime, status: int
) -> None:
    """408 and 409 are retried only when listed in retry.also_on."""
    route = api.get("/v1/items").mock(side_effect=responses(status, 200))
    with make_client(fake, retry=Retry(also_on=frozenset({status}))) as client:
        assert client.send("GET", URL).status_code == 200
    assert route.call_count == 2


def test_non_retryable_transport_error_is_wrapped(api: respx.MockRouter, fake: FakeTime) -> None:
    """An httpx error no retry can fix becomes a FetchError raised from it, at once."""
    cause = httpx.UnsupportedProtocol("Request URL has an unsupported protocol")
    route = api.get("/v1/items").mock(side_effect=[cause, httpx.Response(200)])
    with make_client(fake) as client, pytest.raises(FetchError) as caught:
        client.send("GET", URL)
    assert route.call_count == 1 and caught.value.__cause__ is cause
    assert "UnsupportedProtocol" in str(caught.value)


def test_too_many_redirects_is_wrapped(api: respx.MockRouter, fake: FakeTime) -> None:
    """An httpx error outside the transport family is also a FetchError from it."""
    cause = httpx.TooManyRedirects("Exceeded maximum allowed redirects.")
    api.get("/v1/items").mock(side_effect=cause)
    with make_client(fake) as client, pytest.raises(FetchError) as caught:
        client.send("GET", URL)
    assert caught.value.__cause__ is cause and caught.value.path == "/v1/items"


# --- giving up -----------------------------------------------------------------------


def test_gives_up_after_max_attempts(api: respx.MockRouter, fake: FakeTime) -> None:
    """After max_attempts the error names the attempts, the last status and the path."""
    route = api.get("/v1/items").mock(return_value=httpx.Response(503, text="down for maintenance"))
    with make_client(fake, retry=Retry(max_attempts=5)) as client, pytest.raises(FetchError) as caught:
        client.send("GET", URL)
    assert str(caught.value) == "GET /v1/items: gave up after 5 attempts: last status 503"
    assert caught.value.status == 503 and caught.value.detail == "down for maintenance"
    assert route.call_count == 5 and len(fake.sleeps) == 4 and client.retries == 4


def test_give_up_after_network_errors_names_the_error(api: respx.MockRouter, fake: FakeTime) -> None:
    """A give-up after transport errors names the error class and is raised from it."""
    api.get("/v1/items").mock(side_effect=httpx.ReadTimeout("timed out"))
    with make_client(fake, retry=Retry(max_attempts=3)) as client, pytest.raises(FetchError) as caught:
        client.send("GET", URL)
    assert str(caught.value) == (
        "GET /v1/items: gave up after 3 attempts: last error ReadTimeout: timed out"
    )
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout) and caught.value.status is None


def test_query_secrets_are_masked_in_error_path(api: respx.MockRouter, fake: FakeTime) -> None:
    """The error's path keeps the query but masks secret parameters."""
    api.get("/v1/items").mock(return_value=httpx.Response(404))
    with make_client(fake) as client, pytest.raises(FetchError) as caught:
        client.send("GET", URL, params={"page": 2, "access_token": "tok-in-query"})
    assert caught.value.path == "/v1/items?page=2&access_token=***"
    assert "tok-in-query" not in str(caught.value)


# --- waits ----------------------------------------------------------------------------


def test_retry_after_seconds_is_honoured(api: respx.MockRouter, fake: FakeTime) -> None:
    """A Retry-After in seconds is the exact wait, with no jitter."""
    api.get("/v1/items").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(200)]
    )
    with make_client(fake) as client:
        client.send("GET", URL)
    assert fake.sleeps == [7.0]


def test_retry_after_date_is_honoured(api: respx.MockRouter, fake: FakeTime) -> None:
    """A Retry-After HTTP date is waited for relative to the wall clock."""
    when = email.utils.formatdate(WALL + 30, usegmt=True)
    api.get("/v1/items").mock(
        side_effect=[httpx.Response(503, headers={"Retry-After": when}), httpx.Response(200)]
    )
    with make_client(fake) as client:
        client.send("GET", URL)
    assert fake.sleeps == [30.0]


def test_retry_after_past_max_elapsed_gives_up_without_sleeping(
    api: respx.MockRouter, fake: FakeTime
) -> None:
    """A Retry-After longer than what is left of max_elapsed fails at once, unslept."""
    route = api.get("/v1/items").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "120"}), httpx.Response(200)]
    )
    with make_client(fake, retry=Retry(max_elapsed=60)) as client, pytest.raises(FetchError) as caught:
        client.send("GET", URL)
    assert fake.sleeps == [] and route.call_count == 1
    assert str(caught.value) == (
        "GET /v1/items: gave up after 1 attempt: last status 429; Retry-After asks to wait 120 s,"
        " more than the 60 s left of retry.max_elapsed=60 s"
    )


def test_max_elapsed_bounds_the_backoff(api: respx.MockRouter, fake: FakeTime) -> None:
    """With many attempts allowed, the time budget still ends the retries."""
    api.get("/v1/items").mock(return_value=httpx.Response(500))
    retry = Retry(max_attempts=1000, backoff_initial=4, backoff_max=4, max_elapsed=20)
    with make_client(fake, retry=retry) as client, pytest.raises(FetchError, match="max_elapsed"):
        client.send("GET", URL)
    assert sum(fake.sleeps) <= 20 and len(fake.sleeps) >= 4


def test_backoff_is_full_jitter_within_the_cap(api: respx.MockRouter, fake: FakeTime) -> None:
    """Each wait is uniform in [0, min(backoff_max, initial * 2**(n-1))], from the given rng."""
    api.get("/v1/items").mock(return_value=httpx.Response(500))
    retry = Retry(max_attempts=7, backoff_initial=0.5, backoff_max=4)
    with make_client(fake, retry=retry) as client, pytest.raises(FetchError):
        client.send("GET", URL)
    caps = [0.5, 1, 2, 4, 4, 4]
    assert all(0 <= wait <= cap for wait, cap in zip(fake.sleeps, caps, strict=True))
    expected = random.Random(SEED)
    assert fake.sleeps == [expected.uniform(0, cap) for cap in caps]


# --- idempotency -----------------------------------------------------------------------


def test_post_without_idempotency_key_is_not_retried_after_500(
    api: respx.MockRouter, fake: FakeTime
) -> None:
    """A plain POST may have been processed, so a 500 fails it at once and says why."""
    route = api.post("/v1/items").mock(side_effect=responses(500, 201))
    with make_client(fake) as client, pytest.raises(FetchError) as caught:
        client.send("POST", URL, json={"a": 1})
    assert route.call_count == 1 and "not retried" in str(caught.value)


def test_post_with_idempotency_key_is_retried(api: respx.MockRouter, fake: FakeTime) -> None:
    """A POST carrying an Idempotency-Key is retried like a GET."""
    route = api.post("/v1/items").mock(side_effect=responses(500, 201))
    with make_client(fake) as client:
        client.send("POST", URL, json={"a": 1}, headers={"Idempotency-Key": "k-1"})
    assert route.call_count == 2


@pytest.mark.parametrize(
    "first",
    [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.Response(429)],
    ids=["ConnectError", "ConnectTimeout", "429"],
)
def test_post_is_retried_when_it_surely_did_not_arrive(
    api: respx.MockRouter, fake: FakeTime, first: Any
) -> None:
    """Connect-phase failures and 429 are retried even for a plain POST."""
    route = api.post("/v1/items").mock(side_effect=[first, httpx.Response(201)])
    with make_client(fake) as client:
        client.send("POST", URL, json={})
    assert route.call_count == 2


@pytest.mark.parametrize(
    "first",
    [httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("dropped"), httpx.Response(503)],
    ids=["ReadTimeout", "RemoteProtocolError", "503"],
)
def test_post_is_not_retried_when_it_may_have_arrived(
    api: respx.MockRouter, fake: FakeTime, first: Any
) -> None:
    """A read timeout, a dropped connection or a 503 may follow processing: no retry."""
    route = api.post("/v1/items").mock(side_effect=[first, httpx.Response(201)])
    with make_client(fake) as client, pytest.raises(FetchError):
        client.send("POST", URL, json={})
    assert route.call_count == 1


def test_idempotent_flag_overrides_the_method(api: respx.MockRouter, fake: FakeTime) -> None:
    """idempotent=True makes a POST retryable; idempotent=False stops a GET retry after 500."""
    post = api.post("/v1/items").mock(side_effect=responses(500, 200))
    get = api.get("/v1/items").mock(side_effect=responses(500, 200))
    with make_client(fake) as client:
        client.send("POST", URL, idempotent=True)
        with pytest.raises(FetchError):
            client.send("GET", URL, idempotent=False)
    assert (post.call_count, get.call_count) == (2, 1)


# --- rate limit ----------------------------------------------------------------------------


def test_rate_limit_spaces_requests(api: respx.MockRouter, fake: FakeTime) -> None:
    """Ten requests at 5 per second span at least 1.8 s of fake time, 0.2 s apart."""
    arrivals: list[float] = []
    api.get("/v1/items").mock(side_effect=lambda request: arrivals.append(fake.now) or httpx.Response(200))
    with make_client(fake, rate_limit=RateLimit(requests_per_second=5)) as client:
        for _ in range(10):
            client.send("GET", URL)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert arrivals[-1] - arrivals[0] >= 1.8 - 1e-9
    assert min(gaps) >= 0.2 - 1e-9


def test_rate_limit_covers_retries(api: respx.MockRouter, fake: FakeTime) -> None:
    """A retry waits for its rate-limit slot even when its backoff is shorter."""
    arrivals: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        arrivals.append(fake.now)
        return httpx.Response(503 if len(arrivals) == 1 else 200)

    api.get("/v1/items").mock(side_effect=answer)
    retry = Retry(backoff_initial=0.01, backoff_max=0.01)
    with make_client(fake, retry=retry, rate_limit=RateLimit(requests_per_second=1)) as client:
        client.send("GET", URL)
    assert arrivals[1] - arrivals[0] >= 1.0 - 1e-9


def test_rate_limit_is_shared_by_threads(api: respx.MockRouter) -> None:
    """Requests from several threads get distinct slots of one limiter (fake time frozen)."""
    fake = FakeTime(frozen=True)  # each wait then equals the slot it booked
    api.get("/v1/items").mock(return_value=httpx.Response(200))
    with (
        make_client(fake, rate_limit=RateLimit(requests_per_second=5)) as client,
        ThreadPoolExecutor(max_workers=5) as pool,
    ):
        list(pool.map(lambda _: client.send("GET", URL), range(10)))
    assert sorted(fake.sleeps) == pytest.approx([0.2 * i for i in range(1, 10)])
    assert client.requests == 10


# --- auth -------------------------------------------------------------------------------------


def test_bearer_basic_and_api_key_auth_are_applied(api: respx.MockRouter, fake: FakeTime) -> None:
    """Each static auth puts its credential where the API expects it."""
    route = api.get("/v1/items").mock(return_value=httpx.Response(200))
    auths = [
        BearerAuth(Secret("tok-bearer-1")),
        BasicAuth("ann", Secret("pw-basic-1")),
        ApiKeyAuth("X-Api-Key", Secret("key-header-1")),
        ApiKeyAuth("apiKeyParam", Secret("key-query-1"), location="query"),
    ]
    for auth in auths:
        with make_client(fake, auth=auth) as client:
            client.send("GET", URL)
    first, second, third, fourth = (call.request for call in route.calls)
    assert first.headers["Authorization"] == "Bearer tok-bearer-1"
    assert second.headers["Authorization"] == "Basic YW5uOnB3LWJhc2ljLTE="
    assert third.headers["X-Api-Key"] == "key-header-1"
    assert fourth.url.params["apiKeyParam"] == "key-query-1"
    assert log.redact_url(fourth.url) == "/v1/items?apiKeyParam=***"
    assert log.redact("YW5uOnB3LWJhc2ljLTE=") == "***"


def oauth2(api: respx.MockRouter, *tokens: str, expires_in: int = 3600) -> respx.Route:
    bodies = [{"access_token": t, "expires_in": expires_in, "token_type": "Bearer"} for t in tokens]
    return api.post("/oauth/token").mock(side_effect=[httpx.Response(200, json=b) for b in bodies])


OAUTH = OAuth2ClientCredentials(
    token_url=f"{BASE}/oauth/token",
    client_id="cid",
    client_secret=Secret("client-secret-XYZ"),
    scopes=("read", "write"),
)


def test_oauth2_token_is_fetched_once_for_many_requests(api: respx.MockRouter, fake: FakeTime) -> None:
    """One client-credentials grant serves every request while the token is fresh."""
    token = oauth2(api, "at-one-111")
    route = api.get("/v1/items").mock(return_value=httpx.Response(200))
    with make_client(fake, auth=OAUTH) as client:
        for _ in range(5):
            client.send("GET", URL)
    assert token.call_count == 1 and route.call_count == 5
    assert all(c.request.headers["Authorization"] == "Bearer at-one-111" for c in route.calls)
    form = parse_qs(token.calls.last.request.content.decode())
    assert form == {
        "grant_type": ["client_credentials"], "client_id": ["cid"],
        "client_secret": ["client-secret-XYZ"], "scope": ["read write"],
    }


def test_oauth2_token_is_fetched_once_across_threads(api: respx.MockRouter, fake: FakeTime) -> None:
    """Concurrent first requests share a single token grant."""
    token = oauth2(api, "at-thread-1", "at-thread-2")
    api.get("/v1/items").mock(return_value=httpx.Response(200))
    with make_client(fake, auth=OAUTH) as client, ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda _: client.send("GET", URL), range(12)))
    assert token.call_count == 1


def test_oauth2_token_is_fetched_again_after_a_401(api: respx.MockRouter, fake: FakeTime) -> None:
    """A 401 drops the token, a new one is fetched once and the request repeated."""
    token = oauth2(api, "at-old-111", "at-new-222")
    route = api.get("/v1/items").mock(side_effect=responses(401, 200))
    with make_client(fake, auth=OAUTH, retry=Retry(max_attempts=1)) as client:
        assert client.send("GET", URL).status_code == 200
    assert token.call_count == 2
    assert [c.request.headers["Authorization"] for c in route.calls] == [
        "Bearer at-old-111", "Bearer at-new-222",
    ]
    assert fake.sleeps == []


def test_oauth2_second_401_fails(api: respx.MockRouter, fake: FakeTime) -> None:
    """A 401 right after a fresh token is final: the token is refreshed only once."""
    token = oauth2(api, "at-a-111", "at-b-222", "at-c-333")
    route = api.get("/v1/items").mock(return_value=httpx.Response(401))
    with make_client(fake, auth=OAUTH) as client, pytest.raises(FetchError, match="credentials"):
        client.send("GET", URL)
    assert (token.call_count, route.call_count) == (2, 2)


def test_oauth2_token_is_renewed_30_s_before_expiry(api: respx.MockRouter, fake: FakeTime) -> None:
    """A token with expires_in=100 is reused at 69 s and replaced at 71 s."""
    token = oauth2(api, "at-exp-111", "at-exp-222", expires_in=100)
    api.get("/v1/items").mock(return_value=httpx.Response(200))
    with make_client(fake, auth=OAUTH) as client:
        client.send("GET", URL)
        fake.now = 69
        client.send("GET", URL)
        assert token.call_count == 1
        fake.now = 71
        client.send("GET", URL)
    assert token.call_count == 2


def test_oauth2_token_response_without_token_is_an_error(
    api: respx.MockRouter, fake: FakeTime
) -> None:
    """A token endpoint answer without access_token is a ResponseError naming the path."""
    api.post("/oauth/token").mock(return_value=httpx.Response(200, json={"error": "nope"}))
    with make_client(fake, auth=OAUTH) as client, pytest.raises(ResponseError) as caught:
        client.send("GET", URL)
    assert str(caught.value) == "POST /oauth/token: the token response has no access_token"


# --- body cap and excerpts -----------------------------------------------------------------------


def test_body_over_the_cap_is_refused(api: respx.MockRouter, fake: FakeTime) -> None:
    """A body larger than max_response_bytes is a ResponseError, never retried."""
    route = api.get("/v1/items").mock(return_value=httpx.Response(200, content=b"x" * 1000))
    with make_client(fake, max_response_bytes=100) as client, pytest.raises(ResponseError) as caught:
        client.send("GET", URL)
    assert str(caught.value) == "GET /v1/items: response body over 100 bytes"
    assert route.call_count == 1


def test_body_cap_stops_reading_a_stream_early(api: respx.MockRouter, fake: FakeTime) -> None:
    """Reading stops at the cap: a huge streamed body is never pulled whole."""
    served: list[int] = []

    class Endless(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for index in range(10_000):
                served.append(index)
                yield b"y" * 1024

    api.get("/v1/items").mock(return_value=httpx.Response(200, stream=Endless()))
    with make_client(fake, max_response_bytes=10 * 1024) as client, pytest.raises(ResponseError):
        client.send("GET", URL)
    assert len(served) <= 11


def test_body_at_the_cap_is_accepted(api: respx.MockRouter, fake: FakeTime) -> None:
    """A body of exactly max_response_bytes is returned whole."""
    api.get("/v1/items").mock(return_value=httpx.Response(200, content=b"z" * 100))
    with make_client(fake, max_response_bytes=100) as client:
        assert client.send("GET", URL).content == b"z" * 100


def test_error_detail_is_a_short_excerpt(api: respx.MockRouter, fake: FakeTime) -> None:
    """The error keeps at most 200 characters of the body, on one line."""
    body = "error\n" + "e" * 10_000
    api.get("/v1/items").mock(return_value=httpx.Response(400, text=body))
    with make_client(fake) as client, pytest.raises(FetchError) as caught:
        client.send("GET", URL)
    assert len(caught.value.detail) == 200 and caught.value.detail.startswith("error eee")
    assert "eeee" not in str(caught.value)


# --- logs ---------------------------------------------------------------------------------------


@pytest.fixture
def logs() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Text and JSON output of the `runner` logger at DEBUG, as the CLI would configure it."""
    logger = logging.getLogger("runner")
    level, text, data = logger.level, io.StringIO(), io.StringIO()
    handlers = [log.configure(verbose=True, stream=text)]
    json_handler = logging.StreamHandler(data)
    json_handler.setFormatter(log.JsonFormatter())
    json_handler.addFilter(log.ContextFilter())
    logger.addHandler(json_handler)
    yield text, data
    for handler in [*handlers, json_handler]:
        logger.removeHandler(handler)
    logger.setLevel(level)


def test_one_log_line_per_attempt(
    api: respx.MockRouter, fake: FakeTime, logs: tuple[io.StringIO, io.StringIO]
) -> None:
    """Each attempt logs method, path, status or error, elapsed_ms, attempt and retry_in_ms."""
    api.get("/v1/items").mock(
        side_effect=[
            httpx.Response(503, headers={"Retry-After": "2"}),
            httpx.ReadTimeout("slow"),
            httpx.Response(200),
        ]
    )
    with make_client(fake) as client, log.run_context(run_id="r-1", pipeline="p"):
        client.send("GET", URL, params={"page": 2})
    text, data = logs
    events = [json.loads(line) for line in data.getvalue().splitlines()]
    attempts = [e for e in events if e["event"] == "http.request"]
    assert [(e.get("status"), e.get("error"), e["attempt"]) for e in attempts] == [
        (503, None, 1), (None, "ReadTimeout", 2), (200, None, 3),
    ]
    assert attempts[0]["retry_in_ms"] == 2000 and "retry_in_ms" not in attempts[2]
    assert {e["path"] for e in attempts} == {"/v1/items?page=2"}
    assert all(e["run_id"] == "r-1" and "elapsed_ms" in e for e in attempts)
    last = [line for line in text.getvalue().splitlines() if "event=http.request " in line][-1]
    assert last.endswith(
        'run_id=r-1 pipeline=p method=GET path="/v1/items?page=2" status=200 elapsed_ms=0 attempt=3'
    )


def test_oauth2_token_exchange_logs_only_its_path(
    api: respx.MockRouter, fake: FakeTime, logs: tuple[io.StringIO, io.StringIO]
) -> None:
    """The token grant is one logged request whose line shows the path and no credential."""
    oauth2(api, "at-logged-777")
    api.get("/v1/items").mock(return_value=httpx.Response(200))
    with make_client(fake, auth=OAUTH) as client:
        client.send("GET", URL)
    text, _ = logs
    output = text.getvalue()
    assert "method=POST path=/oauth/token status=200" in output
    assert "at-logged-777" not in output and "client-secret-XYZ" not in output


SECRET_TOKEN = "sk_live_TESTSECRET123"
QUERY_KEY = "qk_live_QUERYSECRET456"


def test_no_secret_leaks_anywhere(
    api: respx.MockRouter, fake: FakeTime, logs: tuple[io.StringIO, io.StringIO]
) -> None:
    """At DEBUG, through a 500, a 401 and a dropped connection, the secrets appear nowhere."""
    echo = f"invalid credentials {SECRET_TOKEN} for key {QUERY_KEY}"
    api.get("/v1/items").mock(
        side_effect=[
            httpx.Response(500, text=echo),
            httpx.Response(401, text=echo, headers={"Set-Cookie": f"s={SECRET_TOKEN}"}),
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            httpx.RemoteProtocolError(f"dropped {URL}?api_key={QUERY_KEY}"),
        ]
    )
    log.add_secrets([QUERY_KEY])  # what config does for every auth value; api_key is masked anyway
    errors: list[FetchError] = []
    with make_client(fake, auth=BearerAuth(Secret(SECRET_TOKEN)), retry=Retry(max_attempts=2)) as client:
        for _ in range(2):
            try:
                client.send("GET", URL, params={"api_key": QUERY_KEY})
            except FetchError as exc:
                errors.append(exc)
                logging.getLogger("runner.engine").exception("run failed")
    text, data = logs
    assert [e.status for e in errors] == [401, None]
    seen = [text.getvalue(), data.getvalue()]
    for error in errors:
        seen += [str(error), repr(error), error.detail, error.path, str(error.args)]
        exc_info = (type(error), error, error.__traceback__)
        for formatter in (log.KeyValueFormatter(), log.JsonFormatter()):
            seen.append(formatter.format(logging.makeLogRecord({"exc_info": exc_info})))
    for secret in (SECRET_TOKEN, QUERY_KEY):
        assert all(secret not in chunk for chunk in seen)
    assert QUERY_KEY in "".join(traceback.format_exception(errors[1]))  # the raw cause has it
    assert "authorization" in text.getvalue() and "***" in text.getvalue()
