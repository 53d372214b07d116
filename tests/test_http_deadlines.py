"""Time bounds of the send path: `timeout.read` covers the whole body; the run's deadline every wait."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from fakes import FakeTime, fake_client

from runner.dev.localserver import Handler, LocalServer
from runner.errors import FetchError
from runner.http.client import HttpClient
from runner.http.errors import DeadlineReached
from runner.model import RateLimit, Retry, Timeout

BASE = "https://api.test"
URL = f"{BASE}/v1/items"


class _Handler(Handler):
    do_GET = Handler.dispatch


class Drip(LocalServer):
    """A 200 whose chunked body trickles one byte every `every` seconds, for at most `total`."""

    handler_class = _Handler
    thread_name = "drip"

    def __init__(self, every: float = 0.3, total: float = 15.0) -> None:
        super().__init__()
        self.every, self.total = every, total
        self.requests = 0

    def handle(self, handler: Handler) -> None:
        self.requests += 1
        handler.close_connection = True
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        end = time.monotonic() + self.total
        try:
            handler.wfile.write(head.encode() + b"1\r\n[\r\n")
            while time.monotonic() < end:
                time.sleep(self.every)
                handler.wfile.write(b"1\r\n \r\n")
                handler.wfile.flush()
            handler.wfile.write(b"1\r\n]\r\n0\r\n\r\n")
        except OSError:
            pass  # the client gave up and closed: what the test wants


@pytest.fixture
def drip() -> Iterator[Drip]:
    with Drip() as server:
        yield server


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


def make_client(fake: FakeTime, **overrides: Any) -> HttpClient:
    return fake_client(fake, seed=7, **overrides)


class Trickle(httpx.SyncByteStream):
    """A body whose every chunk costs `step` seconds of fake time."""

    def __init__(self, fake: FakeTime, step: float, chunks: int = 100) -> None:
        self.fake, self.step, self.chunks = fake, step, chunks

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.chunks):
            self.fake.now += self.step
            yield b" "


# --- timeout.read bounds the whole body ----------------------------------------------


def test_a_trickling_body_ends_at_the_read_timeout(drip: Drip) -> None:
    """A byte every 0.3 s with timeout.read=1 ends in a FetchError after about 1 s, not at the end."""
    client = HttpClient(timeout=Timeout(connect=2, read=1), retry=Retry(max_attempts=1))
    started = time.monotonic()
    with client, pytest.raises(FetchError) as caught:
        client.send("GET", f"{drip.base_url}/drip")
    took = time.monotonic() - started
    assert 0.9 < took < 2.5
    assert str(caught.value) == (
        "GET /drip: gave up after 1 attempt: last error ReadTimeout:"
        " the response body took longer than timeout.read=1 s in all"
    )
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


def test_a_trickling_body_is_retried_like_a_read_timeout(api: respx.MockRouter, fake: FakeTime) -> None:
    """The body deadline is a ReadTimeout: a GET is tried again, up to max_attempts."""
    route = api.get("/v1/items").mock(
        side_effect=lambda request: httpx.Response(200, stream=Trickle(fake, 0.3))
    )
    retry = Retry(max_attempts=3, backoff_initial=0.1, backoff_max=0.1)
    with make_client(fake, timeout=Timeout(read=1), retry=retry) as client, pytest.raises(FetchError) as caught:
        client.send("GET", URL)
    assert route.call_count == 3 and client.retries == 2
    assert "last error ReadTimeout: the response body took longer than timeout.read=1 s" in str(caught.value)


def test_a_body_within_the_read_timeout_is_read_whole(api: respx.MockRouter, fake: FakeTime) -> None:
    """Chunks that arrive within timeout.read in all give the body, however many there are."""
    api.get("/v1/items").mock(return_value=httpx.Response(200, stream=Trickle(fake, 0.01, chunks=50)))
    with make_client(fake, timeout=Timeout(read=1)) as client:
        assert client.send("GET", URL).content == b" " * 50


def test_a_trickling_error_body_does_not_hold_the_request(api: respx.MockRouter, fake: FakeTime) -> None:
    """The excerpt of an error body stops reading at the read deadline too."""
    api.get("/v1/items").mock(return_value=httpx.Response(404, stream=Trickle(fake, 0.3, chunks=10_000)))
    with make_client(fake, timeout=Timeout(read=1)) as client, pytest.raises(FetchError) as caught:
        client.send("GET", URL)
    assert caught.value.status == 404 and fake.now < 2


# --- the run's deadline ---------------------------------------------------------------


def test_a_tiny_rate_limit_fails_at_the_deadline_instead_of_sleeping(api: respx.MockRouter, fake: FakeTime) -> None:
    """requests_per_second=1e-9 fails the second request at once, naming max_seconds."""
    route = api.get("/v1/items").mock(return_value=httpx.Response(200))
    client = make_client(fake, rate_limit=RateLimit(1e-9), deadline=fake.now + 30)
    with client, pytest.raises(DeadlineReached) as caught:
        client.send("GET", URL)
        client.send("GET", URL)
    assert fake.sleeps == [] and route.call_count == 1
    assert str(caught.value) == (
        "GET /v1/items: rate_limit allows one request every 1e+09 s and the next slot lies past"
        " the end of the run's limits.max_seconds (30 s left); not waiting for it"
    )


def test_rate_limit_waits_that_fit_the_deadline_are_slept(api: respx.MockRouter, fake: FakeTime) -> None:
    """A deadline changes nothing for slots before it."""
    api.get("/v1/items").mock(return_value=httpx.Response(200))
    with make_client(fake, rate_limit=RateLimit(2), deadline=fake.now + 30) as client:
        for _ in range(3):
            client.send("GET", URL)
    assert fake.sleeps == [pytest.approx(0.5), pytest.approx(0.5)]


def test_a_retry_after_past_the_deadline_is_not_slept(api: respx.MockRouter, fake: FakeTime) -> None:
    """A Retry-After longer than the run has left gives up at once, naming max_seconds."""
    route = api.get("/v1/items").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "120"}), httpx.Response(200)]
    )
    with make_client(fake, deadline=fake.now + 30) as client, pytest.raises(DeadlineReached) as caught:
        client.send("GET", URL)
    assert fake.sleeps == [] and route.call_count == 1
    assert str(caught.value) == (
        "GET /v1/items: gave up after 1 attempt: last status 429; Retry-After asks to wait 120 s,"
        " more than the 30 s left of the run's limits.max_seconds"
    )


def test_backoff_never_sleeps_past_the_deadline(api: respx.MockRouter, fake: FakeTime) -> None:
    """With attempts and max_elapsed to spare, the deadline still ends the retries before it."""
    api.get("/v1/items").mock(return_value=httpx.Response(503))
    retry = Retry(max_attempts=1000, backoff_initial=4, backoff_max=4, max_elapsed=10_000)
    with make_client(fake, retry=retry, deadline=20.0) as client, pytest.raises(DeadlineReached, match="max_seconds"):
        client.send("GET", URL)
    assert fake.now < 20 and len(fake.sleeps) >= 3


def test_no_request_starts_after_the_deadline(api: respx.MockRouter, fake: FakeTime) -> None:
    """Once the deadline has passed, send fails without a request."""
    route = api.get("/v1/items").mock(return_value=httpx.Response(200))
    with make_client(fake, deadline=-1.0) as client, pytest.raises(DeadlineReached) as caught:
        client.send("GET", URL)
    assert route.call_count == 0
    assert str(caught.value) == "GET /v1/items: the run's limits.max_seconds ran out before this request was sent"


def test_timeouts_are_cut_to_what_is_left_of_the_run(api: respx.MockRouter, fake: FakeTime) -> None:
    """With 2 s left, no phase of the request may wait longer than 2 s."""
    route = api.get("/v1/items").mock(return_value=httpx.Response(200))
    with make_client(fake, timeout=Timeout(connect=5, read=30, write=1, pool=10), deadline=2.0) as client:
        client.send("GET", URL)
    assert route.calls.last.request.extensions["timeout"] == {"connect": 2, "read": 2, "write": 1, "pool": 2}


def test_a_body_still_arriving_at_the_deadline_ends_the_request(api: respx.MockRouter, fake: FakeTime) -> None:
    """The run's deadline cuts a body short even within timeout.read, and is not retried."""
    route = api.get("/v1/items").mock(
        side_effect=lambda request: httpx.Response(200, stream=Trickle(fake, 0.1))
    )
    with make_client(fake, timeout=Timeout(read=30), deadline=2.0) as client, pytest.raises(DeadlineReached) as caught:
        client.send("GET", URL)
    assert route.call_count == 1 and fake.sleeps == []
    assert "limits.max_seconds ran out while the response body was read" in str(caught.value)


def test_the_deadline_can_be_set_after_construction(api: respx.MockRouter, fake: FakeTime) -> None:
    """The engine may create the client first and set `deadline` when paging starts."""
    api.get("/v1/items").mock(return_value=httpx.Response(200))
    with make_client(fake) as client:
        client.send("GET", URL)
        client.deadline = fake.now - 1
        with pytest.raises(DeadlineReached):
            client.send("GET", URL)


def test_a_hung_server_is_cut_at_the_deadline_on_real_time() -> None:
    """A server that accepts and never answers ends at the run's deadline, not at timeout.read."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        held: list[socket.socket] = []
        accept = threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True)
        accept.start()
        client = HttpClient(timeout=Timeout(read=30), retry=Retry(), deadline=time.monotonic() + 1)
        started = time.monotonic()
        with client, pytest.raises(DeadlineReached):
            client.send("GET", f"http://127.0.0.1:{port}/hang")
        assert time.monotonic() - started < 3
        for conn in held:
            conn.close()
